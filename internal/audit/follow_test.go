package audit

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestFollow follows the trail from a sequence and from a time, and sees records appended after it started.
func TestFollow(t *testing.T) {
	ctx := testCtx(t)
	l, _ := newLog(t, Options{})
	stored := appendN(t, ctx, l, 5)
	mid := time.Now()
	time.Sleep(20 * time.Millisecond)
	later := appendN(t, ctx, l, 2)

	follow := func(after uint64, since time.Time, want int) []Record {
		t.Helper()
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var got []Record
		stop := errors.New("enough")
		err := l.Follow(fctx, after, since, func(r Record) error {
			got = append(got, r)
			if len(got) == want {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) {
			t.Fatalf("follow after %d since %v: %v, after %d records", after, since, err, len(got))
		}
		return got
	}
	if got := follow(0, time.Time{}, 7); got[0].Seq != 1 || got[6].Hash != later[1].Hash {
		t.Fatalf("from the beginning: %d..%d", got[0].Seq, got[6].Seq)
	}
	if got := follow(stored[2].Seq, time.Time{}, 1); got[0].Seq != stored[3].Seq {
		t.Fatalf("after %d: got %d", stored[2].Seq, got[0].Seq)
	}
	if got := follow(0, mid, 1); got[0].Seq != later[0].Seq {
		t.Fatalf("since the middle: got %d, want %d", got[0].Seq, later[0].Seq)
	}
	// A follower waits for records appended after it caught up.
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	seen := make(chan Record, 1)
	go func() {
		_ = l.Follow(fctx, later[1].Seq, time.Time{}, func(r Record) error {
			seen <- r
			return errors.New("enough")
		})
	}()
	time.Sleep(100 * time.Millisecond)
	next := appendN(t, ctx, l, 1)
	select {
	case got := <-seen:
		if got.Hash != next[0].Hash {
			t.Fatalf("followed %d, want the record appended after the follower started (%d)", got.Seq, next[0].Seq)
		}
	case <-fctx.Done():
		t.Fatal("the follower did not see a record appended after it caught up, within 10s")
	}
	// It ends with its context.
	cctx, cancelled := context.WithCancel(ctx)
	cancelled()
	if err := l.Follow(cctx, 0, time.Time{}, func(Record) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("follow with a cancelled context: %v", err)
	}
}
