// Package budget enforces rate limits and spending budgets per subject (an identity or an organisation) and
// keeps usage counters per day and month that survive a restart.
//
// A request reserves an estimate of its tokens and cost before it goes upstream and settles the actual usage
// when it is done. A request is admitted while the settled usage plus outstanding reservations is below every
// limit, so callers racing for the last of a budget overrun it by at most one request, provided a request's
// actual usage does not exceed its reservation.
package budget

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
)

// Limits for one subject. Zero means no limit.
type Limits struct {
	RequestsPerMinute int64
	TokensPerMinute   int64
	TokensPerDay      int64
	TokensPerMonth    int64
	CostPerDay        float64 // USD
	CostPerMonth      float64 // USD
	MaxConcurrent     int64
}

// Tighter returns the stricter of l and o, limit by limit.
func (l Limits) Tighter(o Limits) Limits {
	mi := func(a, b int64) int64 {
		if a == 0 || (b != 0 && b < a) {
			return b
		}
		return a
	}
	mf := func(a, b float64) float64 {
		if a == 0 || (b != 0 && b < a) {
			return b
		}
		return a
	}
	return Limits{
		RequestsPerMinute: mi(l.RequestsPerMinute, o.RequestsPerMinute),
		TokensPerMinute:   mi(l.TokensPerMinute, o.TokensPerMinute),
		TokensPerDay:      mi(l.TokensPerDay, o.TokensPerDay),
		TokensPerMonth:    mi(l.TokensPerMonth, o.TokensPerMonth),
		CostPerDay:        mf(l.CostPerDay, o.CostPerDay),
		CostPerMonth:      mf(l.CostPerMonth, o.CostPerMonth),
		MaxConcurrent:     mi(l.MaxConcurrent, o.MaxConcurrent),
	}
}

// Nanos converts US dollars to nano-dollars, the unit costs are counted in.
func Nanos(usd float64) int64 { return int64(math.Round(usd * 1e9)) }

// Claim asks for a request to be counted against a subject and its limits.
type Claim struct {
	Subject string // e.g. "id:spiffe://acme.example/acme/agent/a" or "org:acme"
	Limits  Limits
}

// Estimate is what a request is expected to use at most.
type Estimate struct {
	Tokens    int64 // the prompt, and any output already bounded by the request
	CostNanos int64
	// Output asks for up to this many output tokens on top, at OutputNanos each: Reserve grants as many as
	// every claim's token and cost budgets have room for (Reservation.Output), and refuses the request when
	// that is fewer than MinOutput. The caller caps the request upstream at what was granted, so that a
	// request cannot use more than its reservation.
	Output      int64
	OutputNanos float64
	MinOutput   int64
}

// Counts are usage counters.
type Counts struct {
	Requests     int64 `json:"requests"`
	InputTokens  int64 `json:"input_tokens"`
	OutputTokens int64 `json:"output_tokens"`
	CostNanos    int64 `json:"cost_nanos"`
}

// Tokens returns input plus output tokens.
func (c Counts) Tokens() int64 { return c.InputTokens + c.OutputTokens }

func (c *Counts) add(o Counts) {
	c.Requests += o.Requests
	c.InputTokens += o.InputTokens
	c.OutputTokens += o.OutputTokens
	c.CostNanos += o.CostNanos
}

// Record is a subject's usage in one period (a UTC day "2006-01-02" or month "2006-01").
type Record struct {
	Subject string            `json:"subject"`
	Period  string            `json:"period"`
	Counts                    // totals
	Models  map[string]Counts `json:"models,omitempty"`
}

// Exceeded reports which limit refused a request.
type Exceeded struct {
	Subject    string
	Limit      string // requests_per_minute, tokens_per_minute, max_concurrent, tokens_per_day, ...
	Rate       bool   // a rate or concurrency limit (retry soon) rather than a budget for the day or month
	RetryAfter time.Duration
}

func (e *Exceeded) Error() string {
	return fmt.Sprintf("budget: %s exceeded for %s", strings.ReplaceAll(e.Limit, "_", " "), e.Subject)
}

// Limiter admits requests and keeps usage. It is safe for concurrent use.
type Limiter struct {
	store Store
	now   func() time.Time

	mu       sync.Mutex
	subjects map[string]*state

	writes usageWrites // settles' additions to stored records, merged per record (writes.go)
}

// state is one subject's counters in memory. Minute windows live only here; day and month totals are loaded
// from the store on first use in each period and kept up to date with what settles write.
type state struct {
	minute             int64 // Unix minute of the window
	minRequests        int64
	minTokens          int64
	day, month         string
	dayUsed, monthUsed Counts
	reservedTokens     int64
	reservedCost       int64
	inflight           int64
}

// NewLimiter returns a limiter keeping counters in store. Minutes, days and months are UTC.
func NewLimiter(store Store) *Limiter {
	return &Limiter{store: store, now: time.Now, subjects: map[string]*state{},
		writes: usageWrites{pending: map[string]*usageWrite{}}}
}

func periods(t time.Time) (day, month string) {
	t = t.UTC()
	return t.Format("2006-01-02"), t.Format("2006-01")
}

// key names a record in the store: usage.d.<day>.<subject> or usage.m.<month>.<subject>, the subject in
// unpadded base64url because SPIFFE IDs hold characters keys may not.
func key(kind, period, subject string) string {
	return "usage." + kind + "." + strings.ReplaceAll(period, "-", "") + "." +
		base64.RawURLEncoding.EncodeToString([]byte(subject))
}

func (l *Limiter) load(ctx context.Context, kind, period, subject string) (Record, uint64, error) {
	b, rev, err := l.store.Get(ctx, key(kind, period, subject))
	if err != nil {
		return Record{}, 0, err
	}
	r := Record{Subject: subject, Period: period}
	if b != nil {
		if err := json.Unmarshal(b, &r); err != nil {
			return Record{}, 0, fmt.Errorf("budget: record %s: %w", key(kind, period, subject), err)
		}
	}
	return r, rev, nil
}

// stateFor returns the subject's state for the current periods, loading totals from the store when a period
// begins. Called with l.mu held: a store read happens once per subject and period, and holding the lock
// keeps admission decisions exact.
func (l *Limiter) stateFor(ctx context.Context, subject string, now time.Time) (*state, error) {
	s := l.subjects[subject]
	if s == nil {
		s = &state{}
		l.subjects[subject] = s
	}
	day, month := periods(now)
	if m := now.Unix() / 60; m != s.minute {
		s.minute, s.minRequests, s.minTokens = m, 0, 0
	}
	if s.day != day {
		r, _, err := l.load(ctx, "d", day, subject)
		if err != nil {
			return nil, err
		}
		s.day, s.dayUsed = day, r.Counts
	}
	if s.month != month {
		r, _, err := l.load(ctx, "m", month, subject)
		if err != nil {
			return nil, err
		}
		s.month, s.monthUsed = month, r.Counts
	}
	return s, nil
}

// Reservation is an admitted request's hold on its claims, released by Settle.
type Reservation struct {
	l       *Limiter
	claims  []Claim
	est     Estimate // as reserved: Tokens and CostNanos include the granted output
	output  int64
	bounded bool
	once    sync.Once
}

// Output returns the output tokens granted, and whether a budget bounded them (false: Estimate.Output was
// granted because no token or cost budget applies).
func (r *Reservation) Output() (int64, bool) { return r.output, r.bounded }

// Check reports, without reserving anything, whether a request would be refused now: it returns the
// *Exceeded of the first limit that refuses it, or nil.
func (l *Limiter) Check(ctx context.Context, claims []Claim) error {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range claims {
		s, err := l.stateFor(ctx, c.Subject, now)
		if err != nil {
			return err
		}
		if err := check(c, s, now); err != nil {
			return err
		}
	}
	return nil
}

// room returns how many output tokens the claim's token and cost budgets leave after est's fixed part, the
// limit that binds, and whether any does.
func room(c Claim, s *state, est Estimate, now time.Time) (int64, *Exceeded, bool) {
	lim := c.Limits
	best, bounded := int64(math.MaxInt64), false
	var by *Exceeded
	t := now.UTC()
	nextDay := time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, time.UTC).Sub(t)
	nextMonth := time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC).Sub(t)
	nextMinute := time.Unix((s.minute+1)*60, 0).Sub(now)
	take := func(left int64, name string, rate bool, after time.Duration) {
		if left < best {
			best, bounded = left, true
			by = &Exceeded{Subject: c.Subject, Limit: name, Rate: rate, RetryAfter: max(after, time.Second)}
		}
	}
	for _, b := range []struct {
		name  string
		limit int64
		used  int64
		rate  bool
		after time.Duration
	}{
		{"tokens_per_minute", lim.TokensPerMinute, s.minTokens + s.reservedTokens, true, nextMinute},
		{"tokens_per_day", lim.TokensPerDay, s.dayUsed.Tokens() + s.reservedTokens, false, nextDay},
		{"tokens_per_month", lim.TokensPerMonth, s.monthUsed.Tokens() + s.reservedTokens, false, nextMonth},
	} {
		if b.limit > 0 {
			take(b.limit-b.used-est.Tokens, b.name, b.rate, b.after)
		}
	}
	if est.OutputNanos > 0 {
		for _, b := range []struct {
			name  string
			limit int64
			used  int64
			after time.Duration
		}{
			{"cost_per_day", Nanos(lim.CostPerDay), s.dayUsed.CostNanos + s.reservedCost, nextDay},
			{"cost_per_month", Nanos(lim.CostPerMonth), s.monthUsed.CostNanos + s.reservedCost, nextMonth},
		} {
			if b.limit > 0 {
				take(int64(math.Floor(float64(b.limit-b.used-est.CostNanos)/est.OutputNanos)), b.name, false, b.after)
			}
		}
	}
	return best, by, bounded
}

// Reserve admits a request against every claim, or returns an *Exceeded naming the first limit that refuses
// it. Other errors come from the store.
func (l *Limiter) Reserve(ctx context.Context, claims []Claim, est Estimate) (*Reservation, error) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	states := make([]*state, len(claims))
	for i, c := range claims {
		s, err := l.stateFor(ctx, c.Subject, now)
		if err != nil {
			return nil, err
		}
		states[i] = s
		if err := check(c, s, now); err != nil {
			return nil, err
		}
	}
	r := &Reservation{l: l, claims: claims, output: est.Output}
	if est.Output > 0 {
		for i, c := range claims {
			left, by, bounded := room(c, states[i], est, now)
			if !bounded {
				continue
			}
			if left < est.MinOutput {
				return nil, by
			}
			r.output, r.bounded = min(r.output, left), true
		}
		est.Tokens += r.output
		est.CostNanos += int64(math.Ceil(float64(r.output) * est.OutputNanos))
	}
	est.Output = 0
	r.est = est
	for _, s := range states {
		s.inflight++
		s.minRequests++
		s.reservedTokens += est.Tokens
		s.reservedCost += est.CostNanos
	}
	return r, nil
}

func check(c Claim, s *state, now time.Time) error {
	lim := c.Limits
	nextMinute := time.Unix((s.minute+1)*60, 0).Sub(now)
	rate := func(name string, after time.Duration) error {
		return &Exceeded{Subject: c.Subject, Limit: name, Rate: true, RetryAfter: max(after, time.Second)}
	}
	switch {
	case lim.MaxConcurrent > 0 && s.inflight >= lim.MaxConcurrent:
		return rate("max_concurrent", time.Second)
	case lim.RequestsPerMinute > 0 && s.minRequests >= lim.RequestsPerMinute:
		return rate("requests_per_minute", nextMinute)
	case lim.TokensPerMinute > 0 && s.minTokens+s.reservedTokens >= lim.TokensPerMinute:
		return rate("tokens_per_minute", nextMinute)
	}
	t := now.UTC()
	nextDay := time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, time.UTC).Sub(t)
	nextMonth := time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC).Sub(t)
	for _, b := range []struct {
		name  string
		limit int64
		used  int64
		after time.Duration
	}{
		{"tokens_per_day", lim.TokensPerDay, s.dayUsed.Tokens() + s.reservedTokens, nextDay},
		{"tokens_per_month", lim.TokensPerMonth, s.monthUsed.Tokens() + s.reservedTokens, nextMonth},
		{"cost_per_day", Nanos(lim.CostPerDay), s.dayUsed.CostNanos + s.reservedCost, nextDay},
		{"cost_per_month", Nanos(lim.CostPerMonth), s.monthUsed.CostNanos + s.reservedCost, nextMonth},
	} {
		if b.limit > 0 && b.used >= b.limit {
			return &Exceeded{Subject: c.Subject, Limit: b.name, RetryAfter: b.after}
		}
	}
	return nil
}

// Settle releases the reservation and records what the request used (zero counts for a request that failed
// before any tokens). model names the model in the per-model breakdown. Calling Settle again does nothing.
func (r *Reservation) Settle(ctx context.Context, model string, used Counts) error {
	var err error
	r.once.Do(func() { err = r.l.settle(ctx, r, model, used) })
	return err
}

func (l *Limiter) settle(ctx context.Context, r *Reservation, model string, used Counts) error {
	used.Requests = 1
	now := l.now()
	day, month := periods(now)
	l.mu.Lock()
	for _, c := range r.claims {
		s := l.subjects[c.Subject]
		s.inflight--
		s.reservedTokens -= r.est.Tokens
		s.reservedCost -= r.est.CostNanos
		if s.minute == now.Unix()/60 {
			s.minTokens += used.Tokens()
		}
		if s.day == day {
			s.dayUsed.add(used)
		}
		if s.month == month {
			s.monthUsed.add(used)
		}
	}
	l.mu.Unlock()

	var errs []error
	for _, c := range r.claims {
		for _, p := range []struct{ kind, period string }{{"d", day}, {"m", month}} {
			rec, err := l.addShared(ctx, p.kind, p.period, c.Subject, model, used)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			l.mu.Lock()
			if s := l.subjects[c.Subject]; s != nil {
				// Another gateway sharing the store may have added usage too; totals only grow in a period.
				if p.kind == "d" && s.day == p.period {
					s.dayUsed = maxCounts(s.dayUsed, rec.Counts)
				}
				if p.kind == "m" && s.month == p.period {
					s.monthUsed = maxCounts(s.monthUsed, rec.Counts)
				}
			}
			l.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}

func maxCounts(a, b Counts) Counts {
	return Counts{Requests: max(a.Requests, b.Requests), InputTokens: max(a.InputTokens, b.InputTokens),
		OutputTokens: max(a.OutputTokens, b.OutputTokens), CostNanos: max(a.CostNanos, b.CostNanos)}
}

// add adds used, and per model the counts in models, to a stored record, retrying on conflicting writes.
func (l *Limiter) add(ctx context.Context, kind, period, subject string, used Counts, models map[string]Counts) (Record, error) {
	for attempt := 0; ; attempt++ {
		rec, rev, err := l.load(ctx, kind, period, subject)
		if err != nil {
			return Record{}, err
		}
		rec.Counts.add(used)
		for model, n := range models {
			if rec.Models == nil {
				rec.Models = map[string]Counts{}
			}
			m := rec.Models[model]
			m.add(n)
			rec.Models[model] = m
		}
		b, err := json.Marshal(rec)
		if err != nil {
			return Record{}, err
		}
		_, err = l.store.Put(ctx, key(kind, period, subject), b, rev)
		if err == nil {
			return rec, nil
		}
		if !errors.Is(err, ErrConflict) || attempt >= 50 {
			return Record{}, err
		}
	}
}

// Usage returns the daily records since the day of since (inclusive), of every subject for which match
// returns true, oldest first.
func (l *Limiter) Usage(ctx context.Context, since time.Time, match func(subject string) bool) ([]Record, error) {
	keys, err := l.store.Keys(ctx, "usage.d.")
	if err != nil {
		return nil, err
	}
	first := strings.ReplaceAll(since.UTC().Format("2006-01-02"), "-", "")
	var out []Record
	for _, k := range keys {
		parts := strings.SplitN(k, ".", 4)
		if len(parts) != 4 || parts[2] < first {
			continue
		}
		subj, err := base64.RawURLEncoding.DecodeString(parts[3])
		if err != nil || !match(string(subj)) {
			continue
		}
		b, _, err := l.store.Get(ctx, k)
		if err != nil {
			return nil, err
		}
		var r Record
		if b == nil || json.Unmarshal(b, &r) != nil {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}
