package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// copyCatchUp bounds how long tableCopy.current waits for its watch to deliver what the bucket held when it was
// called, before it reads the bucket instead.
const copyCatchUp = 2 * time.Second

// tableCopy is a table's records in memory, kept current by a watch on its bucket, for reads that would
// otherwise list the whole bucket on every request: discovery reads every advertisement, the relay and the
// governance API every workgroup. A revision of the bucket is the sequence of its stream, so the copy knows how
// far it has got: current answers only once the copy holds every write the bucket had stored when current was
// called, which makes it as fresh as a read of the bucket itself (a write acknowledged before the call is always
// seen), at the cost of one stream-info request instead of a pass over every record. cached answers at once from
// whatever the copy holds, which may lag the bucket by the time a watch update takes to arrive. While the watch is
// down, both read the bucket.
//
// With several controllers sharing the bucket, each keeps its own copy from the same stream, so a write through
// one controller is seen by current on every other. A watch stuck behind the bucket (its consumer's server died)
// is given up and watched anew (watchGuard), within seconds rather than the client's 10-20 s.
type tableCopy[T any] struct {
	t    table[T]
	what string // for log lines: "workgroups", "advertisements"
	log  *slog.Logger

	mu      sync.Mutex
	live    bool          // the watch has delivered the bucket's contents and is running
	byKey   map[string]T  // the records, while live
	applied uint64        // the highest revision applied, while live
	list    []T           // byKey's values, built on demand; nil after a change
	moved   chan struct{} // closed and replaced whenever applied moves or live changes
	// changed, when set, is called with the records each time the live copy changes, under the copy's lock and
	// before current answers with the change: it must not keep the map, and must return at once.
	changed func(map[string]T)
	// index, when set before run, files each record under names of its own (an advertisement under its
	// workgroups) for currentIn, which then reads only the records filed under the names it is given.
	index   func(T) []string
	byIndex map[string]map[string]struct{} // a name → the keys of the records filed under it, while live
}

func newTableCopy[T any](t table[T], what string, log *slog.Logger) *tableCopy[T] {
	return &tableCopy[T]{t: t, what: what, log: log, moved: make(chan struct{})}
}

// cached is every record in the copy, or in the bucket while the copy is not live.
func (c *tableCopy[T]) cached(ctx context.Context) ([]T, error) {
	if list, ok := c.snapshot(0, nil); ok {
		return list, nil
	}
	return c.t.all(ctx)
}

// cachedIn is cached, of the records index files under one of names (as currentIn).
func (c *tableCopy[T]) cachedIn(ctx context.Context, names []string) ([]T, error) {
	names, err := c.indexNames(names)
	if err != nil {
		return nil, err
	}
	if list, ok := c.snapshot(0, names); ok {
		return list, nil
	}
	return c.readBucket(ctx, names)
}

// current is every record the bucket holds, as of this call or later.
func (c *tableCopy[T]) current(ctx context.Context) ([]T, error) {
	return c.read(ctx, nil)
}

// currentIn is every record the bucket holds, as of this call or later, that index files under one of names (in
// no particular order, each once). Its cost grows with the records it returns, not with the bucket. The copy must
// have an index.
func (c *tableCopy[T]) currentIn(ctx context.Context, names []string) ([]T, error) {
	names, err := c.indexNames(names)
	if err != nil {
		return nil, err
	}
	return c.read(ctx, names)
}

// indexNames checks that the copy has an index to read by and returns names, never nil: the readers below take
// nil to mean every record, and no names means none.
func (c *tableCopy[T]) indexNames(names []string) ([]string, error) {
	if c.index == nil {
		return nil, fmt.Errorf("%s: no index to read by", c.what)
	}
	if names == nil {
		names = []string{}
	}
	return names, nil
}

// read is current (names nil) or currentIn.
func (c *tableCopy[T]) read(ctx context.Context, names []string) ([]T, error) {
	c.mu.Lock()
	live := c.live
	c.mu.Unlock()
	if !live {
		return c.readBucket(ctx, names)
	}
	want, err := lastRevision(ctx, c.t.kv)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.what, err)
	}
	wait := time.NewTimer(copyCatchUp)
	defer wait.Stop()
	for {
		c.mu.Lock()
		moved := c.moved
		c.mu.Unlock()
		if list, ok := c.snapshot(want, names); ok {
			return list, nil
		}
		if !c.isLive() {
			return c.readBucket(ctx, names)
		}
		select {
		case <-moved:
		case <-wait.C:
			// The last message of the stream may be one the watch never delivers (a purged delete marker):
			// the bucket answers for certain.
			return c.readBucket(ctx, names)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// readBucket is every record of the bucket (names nil) or those index files under one of names.
func (c *tableCopy[T]) readBucket(ctx context.Context, names []string) ([]T, error) {
	all, err := c.t.all(ctx)
	if err != nil || names == nil {
		return all, err
	}
	return slices.DeleteFunc(all, func(v T) bool {
		return !slices.ContainsFunc(c.index(v), func(n string) bool { return slices.Contains(names, n) })
	}), nil
}

func (c *tableCopy[T]) isLive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live
}

// snapshot is the copy's records (names nil) or those filed under one of names, if it is live and has applied
// revision want, in a slice of the caller's own (the records' own slices are shared with the copy: not to be
// changed in place).
func (c *tableCopy[T]) snapshot(want uint64, names []string) ([]T, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.live || c.applied < want {
		return nil, false
	}
	if names != nil {
		var out []T
		seen := map[string]bool{}
		for _, n := range names {
			for key := range c.byIndex[n] {
				if !seen[key] {
					seen[key] = true
					out = append(out, c.byKey[key])
				}
			}
		}
		return out, true
	}
	if c.list == nil {
		c.list = make([]T, 0, len(c.byKey))
		for _, v := range c.byKey {
			c.list = append(c.list, v)
		}
	}
	return slices.Clone(c.list), true
}

// run keeps the copy current until ctx ends, watching again after a failure.
func (c *tableCopy[T]) run(ctx context.Context) {
	watchAgain(ctx, c.log.With("bucket", c.what), "watching a bucket failed; reading it directly meanwhile", c.watch,
		func() { c.set(func() { c.live, c.byKey, c.byIndex, c.list = false, nil, nil, nil }) })
}

// set changes the copy under its lock and wakes whoever waits for it to move.
func (c *tableCopy[T]) set(change func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	change()
	close(c.moved)
	c.moved = make(chan struct{})
}

func (c *tableCopy[T]) watch(ctx context.Context) error {
	guard := newWatchGuard(ctx, c.t.kv, c.what)
	w, err := c.t.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch %s: %w", c.what, err)
	}
	defer w.Stop()
	byKey := map[string]T{}
	byIndex := map[string]map[string]struct{}{}
	file := func(key string, v T, in bool) {
		if c.index == nil {
			return
		}
		for _, n := range c.index(v) {
			if in {
				if byIndex[n] == nil {
					byIndex[n] = map[string]struct{}{}
				}
				byIndex[n][key] = struct{}{}
			} else {
				delete(byIndex[n], key)
				if len(byIndex[n]) == 0 {
					delete(byIndex, n)
				}
			}
		}
	}
	var applied uint64
	live := false
	check := time.NewTicker(watchCheck)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-check.C:
			if !live {
				continue
			}
			if err := guard.check(ctx); err != nil {
				return err
			}
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch " + c.what + ": updates ended")
			}
			if e == nil { // the end of the bucket's contents
				guard.loaded()
				live, applied = true, max(applied, guard.seen)
				c.set(func() {
					c.live, c.byKey, c.byIndex, c.applied, c.list = true, byKey, byIndex, applied, nil
					c.notify()
				})
				continue
			}
			var v T
			put := e.Operation() == jetstream.KeyValuePut
			if put {
				if err := json.Unmarshal(e.Value(), &v); err != nil {
					return fmt.Errorf("%s %s: %w", c.what, e.Key(), err)
				}
			}
			apply := func() {
				if old, ok := byKey[e.Key()]; ok {
					file(e.Key(), old, false)
				}
				if put {
					byKey[e.Key()] = v
					file(e.Key(), v, true)
				} else {
					delete(byKey, e.Key())
				}
				applied = max(applied, e.Revision())
				guard.saw(e.Revision())
			}
			if !live {
				apply()
				continue
			}
			c.set(func() {
				apply()
				c.applied, c.list = applied, nil
				c.notify()
			})
		}
	}
}

// notify tells changed about the copy's records; the caller holds the lock.
func (c *tableCopy[T]) notify() {
	if c.changed != nil {
		c.changed(c.byKey)
	}
}
