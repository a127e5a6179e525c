package controller

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A bucket's watch is an ordered consumer on one server of the bucket's stream. When that server dies, the client
// notices only after two missed idle heartbeats (5 s apart, not configurable for a watch) and then re-creates the
// consumer at most every 10 s: a watch stood still for 10-20 s while the bucket moved on, and whatever followed
// it (the copies decisions are made from, the revocation list hosts are given, the session event feed) was stale
// as long. So a watch that has delivered the bucket's contents checks every watchCheck that the bucket has not
// moved past it, and one that has delivered nothing for watchStale while the bucket held more is given up, for
// its owner to watch anew. A watch that delivers, however far behind, is never given up.
const (
	watchCheck = time.Second
	watchStale = 2 * time.Second
)

// watchGuard notices a stuck watch of one bucket.
type watchGuard struct {
	kv   jetstream.KeyValue
	what string // for errors: "workgroups", "identities"

	base        uint64    // the bucket's last revision before the watch began
	seen        uint64    // the highest revision the watch stands for
	behindSince time.Time // when the bucket was first seen past seen, which has not moved since
	behindAt    uint64    // seen then
}

// newWatchGuard is a guard for a watch of kv about to begin. Every revision up to the bucket's last one now is
// reflected in the contents the watch will first deliver, even one it never delivers (a delete marker since
// purged).
func newWatchGuard(ctx context.Context, kv jetstream.KeyValue, what string) *watchGuard {
	g := &watchGuard{kv: kv, what: what}
	g.base, _ = g.last(ctx)
	return g
}

// saw records a revision the watch delivered.
func (g *watchGuard) saw(rev uint64) { g.seen = max(g.seen, rev) }

// loaded records that the watch delivered the bucket's contents.
func (g *watchGuard) loaded() { g.seen = max(g.seen, g.base) }

// check asks the bucket's last revision and returns an error if the watch is stuck behind it. Call it every
// watchCheck once the contents are loaded; a failed question is not held against the watch.
func (g *watchGuard) check(ctx context.Context) error {
	last, err := g.last(ctx)
	switch {
	case err != nil || last <= g.seen:
		g.behindSince = time.Time{}
	case g.behindSince.IsZero() || g.seen != g.behindAt:
		g.behindSince, g.behindAt = time.Now(), g.seen
	case time.Since(g.behindSince) >= watchStale:
		return fmt.Errorf("watch %s: no update for %s while the bucket is at revision %d and the watch at %d",
			g.what, time.Since(g.behindSince).Round(time.Millisecond), last, g.seen)
	}
	return nil
}

// last asks the bucket's last revision, within watchCheck.
func (g *watchGuard) last(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, watchCheck)
	defer cancel()
	return lastRevision(ctx, g.kv)
}

// lastRevision is the revision of a bucket's last write: its stream's last sequence.
func lastRevision(ctx context.Context, kv jetstream.KeyValue) (uint64, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("bucket status: %w", err)
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, fmt.Errorf("bucket status of type %T", st)
	}
	return bs.StreamInfo().State.LastSeq, nil
}

// watchAgain runs watch until ctx ends, starting it again after each failure: at once after a watch that ran a
// while (a stuck one, say), a second later after one that failed at once (no leader yet). ended, if set, runs
// after each watch, before the failure is logged.
func watchAgain(ctx context.Context, log *slog.Logger, failed string, watch func(context.Context) error, ended func()) {
	for ctx.Err() == nil {
		began := time.Now()
		err := watch(ctx)
		if ended != nil {
			ended()
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn(failed, "err", err)
		pause := time.Duration(0)
		if time.Since(began) <= time.Second {
			pause = time.Second
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
	}
}
