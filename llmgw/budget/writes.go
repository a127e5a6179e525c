package budget

import (
	"context"
	"sync"
	"time"
)

// Settles of concurrent requests by one subject all add to the same two stored records (the day's and the
// month's). Written one by one, each is a read and a compare-and-set on the store, and under load most of them
// lose the race to another and retry. Instead, additions to one record are merged: while a write of a record
// is under way, the additions that arrive queue, and the next write adds them all at once. Each settle still
// returns only once its own addition is stored (or failed), so what Settle reports is unchanged; only the
// number of store writes falls, from one per request to about one per store round trip.

// usageWriteTimeout bounds one write of merged additions: it serves several requests, so no single request's
// context may cut it short.
const usageWriteTimeout = 30 * time.Second

type usageWrites struct {
	mu      sync.Mutex
	pending map[string]*usageWrite // by store key: additions waiting for the next write
	writing map[string]bool        // by store key: a writer is running
}

// usageWrite is additions to one stored record, merged, and the settles waiting for them to be written.
type usageWrite struct {
	counts  Counts
	models  map[string]Counts
	waiters []chan usageResult
}

type usageResult struct {
	rec Record
	err error
}

// addShared adds used (for model, if named) to the stored record and returns it as written, merging the
// addition with others to the same record that arrive while one is being written.
func (l *Limiter) addShared(ctx context.Context, kind, period, subject, model string, used Counts) (Record, error) {
	k := key(kind, period, subject)
	done := make(chan usageResult, 1)
	w := &l.writes
	w.mu.Lock()
	p := w.pending[k]
	if p == nil {
		p = &usageWrite{}
		w.pending[k] = p
	}
	p.counts.add(used)
	if model != "" {
		if p.models == nil {
			p.models = map[string]Counts{}
		}
		m := p.models[model]
		m.add(used)
		p.models[model] = m
	}
	p.waiters = append(p.waiters, done)
	if w.writing == nil {
		w.writing = map[string]bool{}
	}
	start := !w.writing[k]
	w.writing[k] = true
	w.mu.Unlock()
	if start {
		go l.writeUsage(kind, period, subject, k)
	}
	select {
	case r := <-done:
		return r.rec, r.err
	case <-ctx.Done():
		return Record{}, ctx.Err() // the addition is still written
	}
}

// writeUsage writes the additions pending for key k until none are left.
func (l *Limiter) writeUsage(kind, period, subject, k string) {
	w := &l.writes
	for {
		w.mu.Lock()
		p := w.pending[k]
		if p == nil {
			delete(w.writing, k)
			w.mu.Unlock()
			return
		}
		delete(w.pending, k)
		w.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), usageWriteTimeout)
		rec, err := l.add(ctx, kind, period, subject, p.counts, p.models)
		cancel()
		for _, done := range p.waiters {
			done <- usageResult{rec: rec, err: err}
		}
	}
}
