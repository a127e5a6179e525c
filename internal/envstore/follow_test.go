package envstore

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func fmtIDs(ids []string) string { return strings.Join(ids, " ") }

// follower runs Follow in the background and collects what it hands over.
type follower struct {
	cancel context.CancelFunc
	done   chan error
	mu     sync.Mutex
	got    []Msg
	more   chan struct{} // signalled after each envelope
}

func follow(t *testing.T, s *Store, after uint64) *follower {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	f := &follower{cancel: cancel, done: make(chan error, 1), more: make(chan struct{}, 1)}
	go func() {
		f.done <- s.Follow(ctx, after, func(m Msg) error {
			f.mu.Lock()
			f.got = append(f.got, m)
			f.mu.Unlock()
			select {
			case f.more <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-f.done
	})
	return f
}

// wait returns the first n envelopes followed, failing the test if they do not come within 30 s.
func (f *follower) wait(t *testing.T, n int) []Msg {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		f.mu.Lock()
		got := f.got
		f.mu.Unlock()
		if len(got) >= n {
			return got[:n]
		}
		select {
		case <-f.more:
		case err := <-f.done:
			t.Fatalf("Follow returned after %d of %d envelopes: %v", len(got), n, err)
		case <-deadline:
			t.Fatalf("Follow handed over %d of %d envelopes", len(got), n)
		}
	}
}

// TestFollowBurst appends a burst to several sessions from several goroutines while a follower runs: it sees
// every envelope once, in stream order, with what was appended.
func TestFollowBurst(t *testing.T) {
	const goroutines, each = 8, 150
	srv := startServerSync(t, t.TempDir(), false)
	t.Cleanup(srv.Shutdown)
	s := open(t, connect(t, srv), Options{})
	ctx := testContext(t)
	f := follow(t, s, 0)

	var (
		mu       sync.Mutex
		appended = make(map[uint64]Envelope)
		wg       sync.WaitGroup
	)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				e := Envelope{ID: fmt.Sprintf("g%d-%03d", g, i), Session: fmt.Sprintf("burst-%d", g%3), To: alternate(i),
					Data: []byte(fmt.Sprintf("payload %d/%d", g, i)), Meta: map[string]string{"Goroutine": fmt.Sprint(g)}}
				a, err := s.Append(ctx, e, 0)
				if err != nil {
					t.Errorf("Append %s: %v", e.ID, err)
					return
				}
				mu.Lock()
				appended[a.StreamSeq] = e
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	got := f.wait(t, goroutines*each)
	var prev uint64
	for i, m := range got {
		if m.StreamSeq <= prev {
			t.Fatalf("envelope %d followed at sequence %d after %d", i, m.StreamSeq, prev)
		}
		prev = m.StreamSeq
		e, ok := appended[m.StreamSeq]
		if !ok {
			t.Fatalf("followed sequence %d, which no Append reported", m.StreamSeq)
		}
		if m.ID != e.ID || m.Session != e.Session || m.To != e.To || string(m.Data) != string(e.Data) ||
			m.Meta["Goroutine"] != e.Meta["Goroutine"] || m.Delivered != 1 {
			t.Fatalf("sequence %d followed as %+v, appended as %+v", m.StreamSeq, m, e)
		}
		delete(appended, m.StreamSeq)
	}
	if len(appended) != 0 {
		t.Fatalf("%d appended envelopes never followed", len(appended))
	}
}

// TestFollowFrom starts a follower after a middle sequence and after the last one: each starts right after it,
// and goes on with what is appended later.
func TestFollowFrom(t *testing.T) {
	s := newStore(t, Options{})
	ctx := testContext(t)
	appendN(t, s, "one", 0, 6, alternate, 0)
	appendN(t, s, "two", 0, 4, alternate, 0)
	all, err := s.All(ctx, "one")
	if err != nil {
		t.Fatal(err)
	}
	mid := all[2].StreamSeq // m02 of "one"
	end := uint64(10)

	fromMid := follow(t, s, mid)
	fromEnd := follow(t, s, end)
	got := fromMid.wait(t, 7)
	if got[0].StreamSeq != mid+1 || got[0].Session != "one" || got[0].ID != "m03" {
		t.Fatalf("Follow after %d began with %s/%s at %d, want one/m03 at %d", mid, got[0].Session, got[0].ID, got[0].StreamSeq, mid+1)
	}
	appendN(t, s, "two", 4, 5, alternate, 0)
	got = fromMid.wait(t, 8)
	if m := got[7]; m.Session != "two" || m.ID != "m04" || m.StreamSeq != end+1 {
		t.Fatalf("Follow after %d: last %s/%s at %d, want two/m04 at %d", mid, m.Session, m.ID, m.StreamSeq, end+1)
	}
	if m := fromEnd.wait(t, 1)[0]; m.Session != "two" || m.ID != "m04" {
		t.Fatalf("Follow after the last sequence began with %s/%s, want two/m04", m.Session, m.ID)
	}
}

// TestFollowEnds checks the two ways Follow ends: its context, promptly and without leaving goroutines, and
// an error from fn, which it returns.
func TestFollowEnds(t *testing.T) {
	s := newStore(t, Options{})
	ctx := testContext(t)
	appendN(t, s, "ends", 0, 3, alternate, 0)

	stop := errors.New("enough")
	var seen []string
	err := s.Follow(ctx, 0, func(m Msg) error {
		seen = append(seen, m.ID)
		if len(seen) == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || fmtIDs(seen) != "m00 m01" {
		t.Fatalf("Follow with fn failing on the second envelope: %v after %v", err, seen)
	}

	before := runtime.NumGoroutine()
	fctx, cancel := context.WithCancel(ctx)
	f := make(chan error, 1)
	var n int
	go func() { f <- s.Follow(fctx, 0, func(Msg) error { n++; return nil }) }()
	time.Sleep(200 * time.Millisecond) // the three envelopes, then waiting at the tail
	cancel()
	select {
	case err := <-f:
		if !errors.Is(err, context.Canceled) || n != 3 {
			t.Fatalf("cancelled Follow: %v after %d envelopes, want context.Canceled after 3", err, n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Follow did not return after its context was cancelled")
	}
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Follow returned, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
