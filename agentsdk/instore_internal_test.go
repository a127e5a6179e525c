package agentsdk

import (
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

// storeAnswers is an overlay store as a listener's questions see it: how many terminators it holds, or an error.
type storeAnswers struct {
	count atomic.Int32
	fail  atomic.Bool
	asked atomic.Int32
}

func (s *storeAnswers) agent() *Agent {
	a := &Agent{opts: options{log: slog.New(slog.DiscardHandler)}, listeners: map[*listener]struct{}{}}
	a.storeCount = func(string) (int, error) {
		s.asked.Add(1)
		if s.fail.Load() {
			return 0, errors.New("the controller is away")
		}
		return int(s.count.Load()), nil
	}
	return a
}

// answered calls inStore at now until a question it started has been answered, and returns its last result.
func answered(t *testing.T, l *listener, zl *countingListener, now time.Time) (found, stuck bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		found, stuck = l.inStore(zl, now)
		l.mu.Lock()
		done := !l.store.asking && !l.store.asked.IsZero()
		l.mu.Unlock()
		if done {
			return l.inStore(zl, now)
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("the store's answer was not recorded within 5s")
	return false, false
}

// TestInStoreStuckOnlyOnAnsweredNone: a bind its router counts established is stuck only once the overlay's
// store has answered that it holds no terminator of the service and storeWait has passed since the bind was
// first seen; a store that cannot be asked never makes it stuck, a terminator found ends the questions, and a
// new bind is asked about afresh.
func TestInStoreStuckOnlyOnAnsweredNone(t *testing.T) {
	var store storeAnswers
	a := store.agent()
	l := &listener{agent: a, service: "svc"}
	zl := &countingListener{}
	t0 := time.Now()

	if found, stuck := answered(t, l, zl, t0); found || stuck {
		t.Fatalf("at once, none in the store: found=%v stuck=%v, want neither", found, stuck)
	}
	if _, stuck := answered(t, l, zl, t0.Add(storeWait-time.Second)); stuck {
		t.Fatal("stuck before storeWait passed")
	}
	if _, stuck := answered(t, l, zl, t0.Add(storeWait)); !stuck {
		t.Fatal("not stuck after the store held none for storeWait")
	}

	// A new bind (a reconnect moved the listener) is judged from when it was first seen.
	zl2 := &countingListener{}
	t1 := t0.Add(time.Minute)
	if _, stuck := answered(t, l, zl2, t1); stuck {
		t.Fatal("a new bind inherited the old one's wait")
	}
	store.fail.Store(true)
	l.forgetStore()
	answered(t, l, zl2, t1)
	if _, stuck := answered(t, l, zl2, t1.Add(time.Hour)); stuck {
		t.Fatal("stuck on a store that could not be asked")
	}

	store.fail.Store(false)
	store.count.Store(2)
	if found, stuck := answered(t, l, zl2, t1.Add(time.Hour+time.Second)); !found || stuck {
		t.Fatalf("two terminators in the store: found=%v stuck=%v, want found", found, stuck)
	}
	asked := store.asked.Load()
	for i := range 10 {
		l.inStore(zl2, t1.Add(time.Hour+time.Duration(i)*time.Second))
	}
	time.Sleep(10 * time.Millisecond)
	if n := store.asked.Load(); n != asked {
		t.Fatalf("asked the store %d more times after it held the terminator", n-asked)
	}
}

// TestListenersDownOnAStuckBind: the watchdog counts a listener down whose router counts its bind established
// while the overlay's store has held no terminator of it for storeWait, and not before.
func TestListenersDownOnAStuckBind(t *testing.T) {
	var store storeAnswers
	a := store.agent()
	zl := &countingListener{}
	zl.established.Store(1)
	l := &listener{agent: a, service: "svc", zl: zl}
	a.listeners[l] = struct{}{}
	if down := a.listenersDown(); down {
		t.Fatal("a bind just established counts as down")
	}
	answered(t, l, zl, time.Now())
	if down := a.listenersDown(); down {
		t.Fatal("a bind established a moment ago, none in the store yet, counts as down")
	}
	l.mu.Lock()
	l.store.since = time.Now().Add(-storeWait)
	l.mu.Unlock()
	if down := a.listenersDown(); !down {
		t.Fatal("a bind whose terminator the store has not held for storeWait does not count as down")
	}

	// The terminator lost with its router: down, and once established again the store is asked afresh.
	zl.established.Store(0)
	if down := a.listenersDown(); !down {
		t.Fatal("a bind with no terminator established does not count as down")
	}
	zl.established.Store(1)
	store.count.Store(1)
	if down := a.listenersDown(); down {
		t.Fatal("a bind established again counts as down before the store was asked about it")
	}
	if found, _ := answered(t, l, zl, time.Now()); !found {
		t.Fatal("the store's terminator was not found")
	}
	if down := a.listenersDown(); down {
		t.Fatal("a bind whose terminator the store holds counts as down")
	}
}
