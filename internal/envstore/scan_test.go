package envstore

import (
	"errors"
	"fmt"
	"testing"
)

// TestScanAndPurgeSession scans the stream in order up to a sequence, then purges one session: only its envelopes
// leave, the others are untouched, and the store goes on appending to them.
func TestScanAndPurgeSession(t *testing.T) {
	ctx := testContext(t)
	s := newStore(t, Options{})
	var seqs []uint64
	for i := range 9 {
		session := fmt.Sprintf("s%d", i%3)
		app, err := s.Append(ctx, Envelope{ID: fmt.Sprint("e", i), Session: session, To: recipientA, Data: []byte("x")}, 0)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, app.StreamSeq)
	}
	var got []Msg
	if err := s.Scan(ctx, seqs[5], func(m Msg) error { got = append(got, m); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 6 {
		t.Fatalf("scan through %d: %d envelopes, want 6", seqs[5], len(got))
	}
	for i, m := range got {
		if m.StreamSeq != seqs[i] || m.Session != fmt.Sprintf("s%d", i%3) || m.ID != fmt.Sprint("e", i) {
			t.Fatalf("scan envelope %d: %d %s %s", i, m.StreamSeq, m.Session, m.ID)
		}
	}
	stop := errors.New("stop")
	if err := s.Scan(ctx, seqs[8], func(Msg) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("scan whose callback fails: %v", err)
	}

	if err := s.PurgeSession(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t, s); n != 6 {
		t.Fatalf("after purging s1 the stream holds %d messages, want 6", n)
	}
	for session, want := range map[string]int{"s0": 3, "s1": 0, "s2": 3} {
		msgs, err := s.All(ctx, session)
		if err != nil || len(msgs) != want {
			t.Fatalf("session %s after the purge: %d envelopes (err %v), want %d", session, len(msgs), err, want)
		}
	}
	if err := s.PurgeSession(ctx, "s1"); err != nil {
		t.Fatalf("purging a session again: %v", err)
	}
	if err := s.PurgeSession(ctx, "bad.session"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("purging a bad session id: %v", err)
	}
	app, err := s.Append(ctx, Envelope{ID: "e9", Session: "s0", To: recipientA, Data: []byte("x")}, 0)
	if err != nil || app.Count != 4 {
		t.Fatalf("append after the purge: %+v, %v; want the 4th of s0", app, err)
	}
}
