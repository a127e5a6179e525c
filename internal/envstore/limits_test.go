package envstore

import (
	"errors"
	"fmt"
	"testing"
)

// TestFullStoreRefusesNewEnvelopesAndKeepsOld fills a small stream: the envelope that does not fit is refused
// with ErrFull, every stored one is still there and still a duplicate when sent again, and after the limit is
// raised the session goes on.
func TestFullStoreRefusesNewEnvelopesAndKeepsOld(t *testing.T) {
	ctx := testContext(t)
	js := connect(t, testServer(t))
	s := open(t, js, Options{MaxBytes: 16 << 10})
	data := make([]byte, 512)
	stored := 0
	for i := range 10_000 {
		_, err := s.Append(ctx, Envelope{ID: fmt.Sprintf("e%d", i), Session: "ses_full", To: "bob", Data: data}, 0)
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		stored++
	}
	if stored == 0 || stored == 10_000 {
		t.Fatalf("%d envelopes stored in a 16 KiB stream", stored)
	}
	if got := streamMsgs(t, s); got != uint64(stored) {
		t.Fatalf("stream holds %d envelopes, want %d", got, stored)
	}
	a, err := s.Append(ctx, Envelope{ID: "e0", Session: "ses_full", To: "bob", Data: data}, 0)
	if err != nil || !a.Duplicate || a.StreamSeq != 1 {
		t.Fatalf("the first envelope again: %+v, %v; want a duplicate of stream sequence 1", a, err)
	}

	s = open(t, js, Options{MaxBytes: 1 << 20})
	a, err = s.Append(ctx, Envelope{ID: fmt.Sprintf("e%d", stored), Session: "ses_full", To: "bob", Data: data}, 0)
	if err != nil || a.Count != uint64(stored+1) {
		t.Fatalf("append after raising the limit: %+v, %v; want count %d", a, err, stored+1)
	}
	if _, err := Open(ctx, js, Options{MaxBytes: -1}); err == nil {
		t.Fatal("negative MaxBytes accepted")
	}
}
