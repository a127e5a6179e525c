package controller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Several controllers on one NATS cluster share one audit trail, and some work on it must be done once, not once
// per controller: deriving the envelope.accepted records from the envelope stream (recorder.go) and raising
// anomaly alerts (alerts.go). The controller that holds a lease in the umbra_recorder bucket does that work; the
// others follow the trail and take over when the lease is not renewed.
//
// The lease is one key, whose revision the holder renews (a compare-and-set on the revision it last wrote) every
// third of its term. A contender reads the key as often and takes the lease, by a compare-and-set on the revision
// it read, once that revision has not moved for a whole term by its own clock; no clocks are compared across
// machines. A holder that cannot renew steps down a term after it last started a renewal that succeeded, before
// any contender can have taken over, and a holder that finds its key taken steps down at once. A controller that
// stops releases the lease (deletes the key at the revision it wrote), so that another takes over at its next
// read instead of after a term.
//
// The lease makes a second writer rare, not impossible (a holder paused longer than its term): what must never
// happen twice is made impossible by the trail itself (recorder.go, audit.Log.AppendAfter).

const (
	// leaderKey is the lease's key in the umbra_recorder bucket.
	leaderKey = "leader"
	// defaultLeaseTerm is how long a lease lives unrenewed: a controller that dies is replaced within about
	// 1 1/3 terms.
	defaultLeaseTerm = 3 * time.Second
)

// leaseRecord is the lease's value.
type leaseRecord struct {
	Holder string    `json:"holder"` // the controller's SPIFFE ID and a nonce of its process
	Since  time.Time `json:"since"`  // when the holder took it, for operators; never compared
}

// leadership campaigns for and holds the lease. A nil *leadership always leads: a lone controller.
type leadership struct {
	kv   jetstream.KeyValue
	self string
	term time.Duration
	log  *slog.Logger

	// abandon (tests only) makes run end without releasing the lease, as a crash would.
	abandon bool

	mu      sync.Mutex
	since   time.Time // when this controller took the lease
	leading bool
	changed chan struct{} // closed when leading changes
}

func newLeadership(kv jetstream.KeyValue, controllerID string, term time.Duration, log *slog.Logger) *leadership {
	nonce := make([]byte, 6)
	_, _ = rand.Read(nonce)
	if term <= 0 {
		term = defaultLeaseTerm
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &leadership{kv: kv, self: controllerID + "#" + hex.EncodeToString(nonce), term: term, log: log,
		changed: make(chan struct{})}
}

// state says whether this controller leads, and gives a channel closed when that changes.
func (l *leadership) state() (bool, <-chan struct{}) {
	if l == nil {
		return true, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leading, l.changed
}

// leads says whether this controller leads now.
func (l *leadership) leads() bool {
	leading, _ := l.state()
	return leading
}

func (l *leadership) set(leading bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.leading == leading {
		return
	}
	l.leading = leading
	close(l.changed)
	l.changed = make(chan struct{})
	if leading {
		l.log.Info("this controller now records envelopes and raises alerts for the cluster", "holder", l.self)
	} else {
		l.log.Info("this controller no longer records envelopes or raises alerts; following another", "holder", l.self)
	}
}

// whileLeading waits until this controller leads, then returns a context that ends when it stops leading (or
// ctx ends); the caller must call cancel.
func (l *leadership) whileLeading(ctx context.Context) (context.Context, context.CancelFunc, error) {
	for {
		leading, changed := l.state()
		if leading {
			lctx, cancel := context.WithCancel(ctx)
			if changed != nil {
				go func() {
					select {
					case <-changed:
						cancel()
					case <-lctx.Done():
					}
				}()
			}
			return lctx, cancel, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// run campaigns for the lease and renews it while held, until ctx ends; then it releases it.
func (l *leadership) run(ctx context.Context) {
	var (
		rev       uint64    // the revision last read or written
		movedAt   time.Time // when rev was first seen (a contender's clock)
		renewedAt time.Time // when the last successful renewal was started (the holder's clock)
	)
	tick := time.NewTicker(l.term / 3)
	defer tick.Stop()
	defer func() {
		if !l.leads() {
			return
		}
		l.set(false)
		if l.abandon {
			return
		}
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := l.kv.Delete(rctx, leaderKey, jetstream.LastRevision(rev)); err != nil {
			l.log.Warn("releasing the recorder lease failed; another controller takes over when it expires", "err", err)
		}
	}()
	for {
		if l.leads() {
			// A contender takes over no sooner than a term after the last renewal was written, which is after
			// it was started: step down before then, a tick early, since the next try would come too late.
			started, deadline := time.Now(), renewedAt.Add(l.term)
			r, err := l.put(ctx, rev, deadline)
			switch {
			case err == nil:
				rev, renewedAt = r, started
			case errors.Is(err, errConflict):
				l.set(false)
				rev = 0
			case time.Until(deadline) <= l.term/3:
				l.log.Warn("the recorder lease could not be renewed in time; stepping down", "err", err)
				l.set(false)
				rev = 0
			}
		} else {
			e, err := l.kv.Get(ctx, leaderKey)
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
				// No holder (never one, or released): take it, unless another contender is quicker.
				started := time.Now()
				if r, err := l.put(ctx, 0, started.Add(l.term/3)); err == nil {
					rev, renewedAt = r, started
					l.set(true)
				}
			case err != nil:
				if ctx.Err() == nil {
					l.log.Warn("reading the recorder lease failed", "err", err)
				}
			case e.Revision() != rev:
				rev, movedAt = e.Revision(), time.Now()
			case time.Since(movedAt) >= l.term:
				started := time.Now()
				if r, err := l.put(ctx, rev, started.Add(l.term/3)); err == nil {
					rev, renewedAt = r, started
					l.set(true)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// put writes the lease as this controller's on condition that the key is at revision rev (0: absent or deleted),
// before deadline, and returns the new revision; errConflict if another got there first.
func (l *leadership) put(ctx context.Context, rev uint64, deadline time.Time) (uint64, error) {
	l.mu.Lock()
	if rev == 0 || !l.leading {
		l.since = time.Now().UTC()
	}
	since := l.since
	l.mu.Unlock()
	b, err := json.Marshal(leaseRecord{Holder: l.self, Since: since})
	if err != nil {
		return 0, err
	}
	pctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var r uint64
	if rev == 0 {
		r, err = l.kv.Create(pctx, leaderKey, b)
	} else {
		r, err = l.kv.Update(pctx, leaderKey, b, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || isWrongSequence(err) {
		return 0, errConflict
	}
	if err != nil {
		return 0, fmt.Errorf("recorder lease: %w", err)
	}
	return r, nil
}
