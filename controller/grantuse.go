package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/controller/posture"
	"github.com/umbra-mesh/umbra/internal/zitictrl"
)

// Grant use is the posture's evidence that an identity used a service grant: the overlay shows each circuit an
// identity dials or hosts and each terminator it creates (zitictrl.Uses), and what is in use now
// (zitictrl.CurrentUses); the controller keeps, per identity, service and dial or bind, the time of the newest
// use in the umbra_grant_use bucket. Writes are coarse: at most one per key in each granularity slot (the
// time truncated to GrantUseGranularity), so a busy agent costs one write an hour, not one per dial. Uses
// seen are held in memory and written every flush interval (at most the granularity), so a crash loses at most
// that much evidence. The bucket also keeps when recording began: the posture judges only what it covers.

const (
	grantUseBucket   = "umbra_grant_use"
	grantUseSinceKey = "tracking_since"
)

// grantUseRecord is one key of the bucket: when identity last dialed or bound service.
type grantUseRecord struct {
	Identity string    `json:"identity"`
	Service  string    `json:"service"`
	Kind     string    `json:"kind"` // "dial" or "bind"
	LastUsed time.Time `json:"last_used"`
}

// grantUseSince is the bucket's tracking_since record.
type grantUseSince struct {
	Since time.Time `json:"since"`
}

// useSource is what the recorder needs of the overlay (*zitictrl.Controller).
type useSource interface {
	Uses(fn func(zitictrl.Use)) (stop func())
	CurrentUses(now time.Time) ([]zitictrl.Use, error)
	Names(identityID, serviceID string) (externalID, service string, ok bool)
}

var _ useSource = (*zitictrl.Controller)(nil)

// grantUses records grant use; run is the caller's to run.
type grantUses struct {
	t     table[grantUseRecord]
	since time.Time
	every time.Duration // the granularity
	src   useSource
	log   *slog.Logger

	mu      sync.Mutex
	pending map[overlayUse]time.Time // uses seen and not yet written: the newest time of each
	written map[overlayUse]time.Time // the slot last written (or found written) per use
}

// overlayUse is a use by overlay ids, before its names are resolved.
type overlayUse struct {
	identity, service string
	bind              bool
}

func openGrantUses(ctx context.Context, js jetstream.JetStream, src useSource, every time.Duration, log *slog.Logger) (*grantUses, error) {
	t, err := openTable[grantUseRecord](ctx, js, grantUseBucket)
	if err != nil {
		return nil, err
	}
	since := table[grantUseSince]{kv: t.kv}
	// The first controller to start records when recording began; the others, and later starts, read it.
	if err := since.create(ctx, grantUseSinceKey, grantUseSince{Since: time.Now().UTC()}); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, fmt.Errorf("bucket %s: %w", grantUseBucket, err)
	}
	s, _, err := since.get(ctx, grantUseSinceKey)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", grantUseBucket, err)
	}
	return &grantUses{t: t, since: s.Since, every: every, src: src, log: log,
		pending: map[overlayUse]time.Time{}, written: map[overlayUse]time.Time{}}, nil
}

// note holds a use to be written; it runs on OpenZiti's event goroutines and only takes a lock.
func (g *grantUses) note(u zitictrl.Use) {
	if u.At.IsZero() {
		u.At = time.Now()
	}
	k := overlayUse{u.IdentityID, u.ServiceID, u.Bind}
	g.mu.Lock()
	defer g.mu.Unlock()
	if u.At.Truncate(g.every).Equal(g.written[k]) {
		return // this slot is written already
	}
	if u.At.After(g.pending[k]) {
		g.pending[k] = u.At
	}
}

// flushEvery is how often the uses seen are written: every minute, or every granularity if that is shorter.
func (g *grantUses) flushEvery() time.Duration { return min(g.every, time.Minute) }

// run follows the overlay's uses until ctx ends, writing them every flushEvery and noting what is in use now
// every granularity; a last flush follows the end of ctx.
func (g *grantUses) run(ctx context.Context) {
	stop := g.src.Uses(g.note)
	defer stop()
	g.sweep()
	flush, sweep := time.NewTicker(g.flushEvery()), time.NewTicker(g.every)
	defer flush.Stop()
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			g.flush(fctx)
			cancel()
			return
		case <-sweep.C:
			g.sweep()
		case <-flush.C:
			g.flush(ctx)
		}
	}
}

// sweep notes the uses in progress: a circuit or binding that lasts longer than a granularity.
func (g *grantUses) sweep() {
	uses, err := g.src.CurrentUses(time.Now())
	if err != nil {
		g.log.Warn("grant use: listing the overlay's circuits and terminators failed", "err", err)
	}
	for _, u := range uses {
		g.note(u)
	}
}

// flush writes the pending uses: one write per use whose slot is not written yet.
func (g *grantUses) flush(ctx context.Context) {
	g.mu.Lock()
	pending := g.pending
	g.pending = map[overlayUse]time.Time{}
	g.mu.Unlock()
	failed := 0
	var firstErr error
	for k, at := range pending {
		if err := g.write(ctx, k, at); err != nil {
			if failed++; firstErr == nil {
				firstErr = err
			}
			g.mu.Lock() // keep it for the next flush, unless a newer use came meanwhile
			if at.After(g.pending[k]) {
				g.pending[k] = at
			}
			g.mu.Unlock()
			continue
		}
		g.mu.Lock()
		g.written[k] = at.Truncate(g.every)
		g.mu.Unlock()
	}
	if failed > 0 {
		g.log.Warn("grant use: writing uses failed; kept for the next try", "uses", failed, "err", firstErr)
	}
}

// write records the use k at at, unless the bucket holds a use of the same slot or a later one already. Uses of
// identities without a SPIFFE ID (routers, the overlay's administrator) are dropped.
func (g *grantUses) write(ctx context.Context, k overlayUse, at time.Time) error {
	ext, svc, ok := g.src.Names(k.identity, k.service)
	if !ok {
		return nil // deleted meanwhile
	}
	id, err := spiffeid.FromString(ext)
	if err != nil {
		return nil
	}
	r := grantUseRecord{Identity: id.String(), Service: svc, Kind: "dial", LastUsed: at.UTC()}
	if k.bind {
		r.Kind = "bind"
	}
	key := r.Kind + "." + idKey(id) + "." + svc
	for range 5 {
		cur, rev, err := g.t.get(ctx, key)
		switch {
		case errors.Is(err, errNotFound):
		case err != nil:
			return err
		case !cur.LastUsed.Truncate(g.every).Before(at.Truncate(g.every)):
			return nil // another controller, or this one before a restart, wrote this slot
		}
		if err := g.t.put(ctx, key, r, rev); !errors.Is(err, errConflict) {
			return err
		}
	}
	return fmt.Errorf("grant use %s: too many concurrent writes", key)
}

// snapshot reads the bucket for package posture.
func (g *grantUses) snapshot(ctx context.Context) (posture.GrantUse, error) {
	out := posture.GrantUse{Since: g.since, Granularity: g.every,
		Dial: map[string]map[string]time.Time{}, Bind: map[string]map[string]time.Time{}}
	rs, err := g.t.all(ctx)
	if err != nil {
		return out, err
	}
	for _, r := range rs {
		m := out.Dial
		switch r.Kind {
		case "dial":
		case "bind":
			m = out.Bind
		default:
			continue // the tracking_since record
		}
		if m[r.Identity] == nil {
			m[r.Identity] = map[string]time.Time{}
		}
		m[r.Identity][r.Service] = r.LastUsed
	}
	return out, nil
}
