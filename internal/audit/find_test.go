package audit

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// FindOnce finds a record appended under an ID in the span it was stored in, long after the stream forgot the
// ID, and nothing outside that span or under another ID; a span whose records were removed is ErrForgotten.
func TestFindOnce(t *testing.T) {
	ctx := testCtx(t)
	l, js := newLog(t, Options{Stream: "FIND", dedupWindow: time.Second})
	before := time.Now()
	if _, err := l.Append(ctx, record(0, "")); err != nil {
		t.Fatal(err)
	}
	stored, _, err := l.AppendOnce(ctx, record(1, ""), "gw-a")
	if err != nil {
		t.Fatal(err)
	}
	for i := 2; i < 40; i++ {
		if _, _, err := l.AppendOnce(ctx, record(i, ""), "gw-other"+string(rune('a'+i))); err != nil {
			t.Fatal(err)
		}
	}
	after := time.Now()
	time.Sleep(1100 * time.Millisecond) // past the stream's de-duplication window
	got, found, err := l.FindOnce(ctx, "gw-a", before.Add(-time.Second), after.Add(time.Second))
	if err != nil || !found || got.Seq != stored.Seq || got.Hash != stored.Hash {
		t.Fatalf("find gw-a: %+v found %v, %v; want record %d", got, found, err, stored.Seq)
	}
	if _, found, err := l.FindOnce(ctx, "gw-none", before.Add(-time.Second), after.Add(time.Second)); found || err != nil {
		t.Fatalf("find an ID never stored: found %v, %v", found, err)
	}
	if _, found, err := l.FindOnce(ctx, "gw-a", after.Add(500*time.Millisecond), time.Now()); found || err != nil {
		t.Fatalf("find in a span after it was stored: found %v, %v", found, err)
	}
	if _, found, err := l.FindOnce(ctx, "gw-a", before.Add(-time.Hour), before.Add(-time.Minute)); found || err != nil {
		t.Fatalf("find in a span before it was stored: found %v, %v", found, err)
	}
	s, err := js.Stream(ctx, "FIND")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSequence(stored.Seq+1)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.FindOnce(ctx, "gw-a", before.Add(-time.Second), after.Add(time.Second)); !errors.Is(err, ErrForgotten) {
		t.Fatalf("find in a span whose records were removed: %v, want ErrForgotten", err)
	}
}
