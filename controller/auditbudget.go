package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
)

// The proposal rate bounds how fast a member churns, not what it leaves behind: every admitted action writes
// audit records, which are never dropped, and a trail that is full refuses every action of every identity. So
// each identity may cause Config.AuditBytesPerIdentityDay bytes of audit records in a UTC day. The bytes are
// counted as the records are stored (audit.Options.Stored, audit.StoredSize), charged to the record's actor, or,
// for a record the controller writes as actor on a caller's behalf (a proposal the contract accepts), to that
// caller. Once an identity has spent its budget, its proposals (propose) and envelopes (the relay) are refused
// with HTTP 429 / code audit_budget_exhausted until the day ends; other identities carry on. Refusals still go
// through the refusal limiter.
//
// The count is kept in JetStream (umbra_audit_budgets, one record per identity and day, written by
// compare-and-set), so that several controllers sharing the store add up one identity's bytes. Each controller
// adds what it stored to the table every budgetFlush (or sooner, past budgetFlushBytes), and admits against the
// table plus what it has not added yet; an identity acting through several controllers at once can overrun its
// budget by what the others stored within one flush.

const (
	// defaultAuditBytesPerIdentityDay: 8 MiB. The default trail (audit.DefaultMaxBytes, 2 GiB) holds 256
	// identity-days at the full budget: 8 members spending all of theirs every day fill it in 32 days, one in
	// 256. A propose and close costs about 6 KB and an envelope's record about 1 KB, so the budget is about
	// 1,400 sessions or 8,000 envelopes a day.
	defaultAuditBytesPerIdentityDay = 8 << 20
	auditBudgetBucket               = "umbra_audit_budgets"
	budgetWindow                    = 24 * time.Hour
	budgetFlush                     = time.Second
	budgetFlushBytes                = 64 << 10
	// budgetCacheFor is how long the relay admits envelopes against a copy of the table's count (plus this
	// controller's own bytes since), so that an envelope costs no read.
	budgetCacheFor = time.Second
)

// auditSpend is one identity's audit bytes in one UTC day.
type auditSpend struct {
	Day   time.Time `json:"day"` // UTC midnight that began the day
	Bytes int64     `json:"bytes"`
}

// dayOf is the UTC midnight that begins t's day.
func dayOf(t time.Time) time.Time { return t.UTC().Truncate(budgetWindow) }

// payerKey carries, in a context, the identity a controller-authored record is charged to.
type payerKey struct{}

// withPayer charges the records the controller writes as actor under ctx to id.
func withPayer(ctx context.Context, id spiffeid.ID) context.Context {
	return context.WithValue(ctx, payerKey{}, id.String())
}

// auditBudget counts each identity's audit bytes and admits or refuses its actions.
type auditBudget struct {
	table table[auditSpend]
	limit int64  // bytes per identity and day; negative: no limit
	self  string // the controller's own SPIFFE ID: its records are charged to their payer, if any
	log   *slog.Logger

	mu      sync.Mutex
	pending map[string]int64 // bytes stored but not yet added to the table, by actor
	cached  map[string]cachedSpend
	kick    chan struct{}
}

type cachedSpend struct {
	spend auditSpend
	at    time.Time
}

func openAuditBudgets(ctx context.Context, js jetstream.JetStream, limit int64, self string, log *slog.Logger) (*auditBudget, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: auditBudgetBucket, History: 1,
		TTL: 2 * budgetWindow, Storage: jetstream.FileStorage, MaxBytes: tableMaxBytes, MaxValueSize: 4 << 10})
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", auditBudgetBucket, noRoom(err, tableMaxBytes))
	}
	if limit == 0 {
		limit = defaultAuditBytesPerIdentityDay // Config's zero value, when it was not through withDefaults
	}
	return &auditBudget{table: table[auditSpend]{kv: kv}, limit: limit, self: self, log: log,
		pending: map[string]int64{}, cached: map[string]cachedSpend{}, kick: make(chan struct{}, 1)}, nil
}

// stored is the audit log's Stored hook: it charges the record's bytes to who caused it.
func (b *auditBudget) stored(ctx context.Context, r audit.Record, size int) {
	payer := r.Actor
	if payer == b.self {
		p, _ := ctx.Value(payerKey{}).(string)
		if p == "" {
			return
		}
		payer = p
	}
	b.mu.Lock()
	b.pending[payer] += int64(size)
	over := b.pending[payer] >= budgetFlushBytes
	b.mu.Unlock()
	if over {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
}

// spent is what id has spent today: the table's count (read now, or a copy at most budgetCacheFor old when
// cached) plus what this controller stored and has not added yet.
func (b *auditBudget) spent(ctx context.Context, ident spiffeid.ID, cached bool, now time.Time) (auditSpend, error) {
	day, id := dayOf(now), ident.String()
	b.mu.Lock()
	c, ok := b.cached[id]
	b.mu.Unlock()
	if !cached || !ok || now.Sub(c.at) >= budgetCacheFor || !c.spend.Day.Equal(day) {
		v, _, err := b.table.get(ctx, idKey(ident))
		if err != nil && !errors.Is(err, errNotFound) {
			return auditSpend{}, err
		}
		c = cachedSpend{spend: v, at: now}
		b.mu.Lock()
		b.cached[id] = c
		b.mu.Unlock()
	}
	s := c.spend
	if !s.Day.Equal(day) {
		s = auditSpend{Day: day}
	}
	b.mu.Lock()
	s.Bytes += b.pending[id]
	b.mu.Unlock()
	return s, nil
}

// refusal is nil when id may still cause audit records today, else the 429 fault that says so.
func (b *auditBudget) refusal(ctx context.Context, id spiffeid.ID, cached bool) (*fault, error) {
	if b.limit < 0 {
		return nil, nil
	}
	now := time.Now().UTC()
	s, err := b.spent(ctx, id, cached, now)
	if err != nil {
		return nil, fmt.Errorf("audit budget of %s: %w", id, err)
	}
	if s.Bytes < b.limit {
		return nil, nil
	}
	reset := dayOf(now).Add(budgetWindow)
	retry := reset.Sub(now)
	f := failf(http.StatusTooManyRequests, api.CodeAuditBudgetExhausted,
		"your actions wrote %d bytes of audit records today, over the budget of %d bytes per identity and day: it resets at %s (in %dm), or ask the operator to raise the limit (umbra controller --audit-bytes-per-identity-day)",
		s.Bytes, b.limit, reset.Format(time.RFC3339), int(math.Ceil(retry.Minutes())))
	f.retryAfter = retry
	return f, nil
}

// flush adds every pending count to the table.
func (b *auditBudget) flush(ctx context.Context) error {
	b.mu.Lock()
	todo := b.pending
	b.pending = map[string]int64{}
	b.mu.Unlock()
	var errs []error
	for actor, n := range todo {
		if err := b.add(ctx, actor, n); err != nil {
			errs = append(errs, err)
			b.mu.Lock()
			b.pending[actor] += n // counted next time
			b.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}

// add adds n bytes to actor's count of today, by compare-and-set.
func (b *auditBudget) add(ctx context.Context, actor string, n int64) error {
	id, err := spiffeid.FromString(actor)
	if err != nil {
		return nil // not an identity: nobody to charge
	}
	key := idKey(id)
	for range 20 {
		v, rev, err := b.table.get(ctx, key)
		if err != nil && !errors.Is(err, errNotFound) {
			return fmt.Errorf("audit budget of %s: %w", actor, err)
		}
		now := time.Now().UTC()
		if day := dayOf(now); !v.Day.Equal(day) {
			v = auditSpend{Day: day}
		}
		v.Bytes += n
		if err := b.table.put(ctx, key, v, rev); errors.Is(err, errConflict) {
			continue
		} else if err != nil {
			return fmt.Errorf("audit budget of %s: %w", actor, err)
		}
		b.mu.Lock()
		b.cached[actor] = cachedSpend{spend: v, at: now}
		b.mu.Unlock()
		return nil
	}
	return fmt.Errorf("audit budget of %s: too many concurrent updates", actor)
}

// run adds the pending counts to the table every budgetFlush, or sooner when one grows large, until ctx ends,
// and once more then.
func (b *auditBudget) run(ctx context.Context) {
	t := time.NewTicker(budgetFlush)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if err := b.flush(fctx); err != nil {
				b.log.Warn("audit budgets: the last counts were not stored", "err", err)
			}
			cancel()
			return
		case <-t.C:
		case <-b.kick:
		}
		err := b.flush(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			b.log.Warn("audit budgets: storing counts failed; retrying", "err", err)
			failing = true
		case err == nil && failing:
			b.log.Info("audit budgets: counts stored again")
			failing = false
		}
	}
}

// admitAuditBytes refuses an action of id once it has spent its audit budget, recording the refusal (kind, the
// session if any, what the record says of the action) through the refusal limiter. cached admits against a copy of the count at most
// budgetCacheFor old (the relay, per envelope).
func (s *Server) admitAuditBytes(ctx context.Context, id spiffeid.ID, kind, session string, data map[string]any, cached bool) error {
	f, err := s.gov.budget.refusal(ctx, id, cached)
	if err != nil {
		return internal(err)
	}
	if f == nil {
		return nil
	}
	if data == nil {
		data = map[string]any{}
	}
	data["audit_bytes_per_identity_day"] = s.gov.budget.limit
	s.recordRefusal(ctx, f.code, audit.Record{Kind: kind, Actor: id.String(), Session: session, Decision: audit.DecisionDeny,
		Reason: f.code + ": " + f.message, Data: jsonRaw(data)})
	return f
}
