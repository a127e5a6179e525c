package llmgw

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umbra-mesh/umbra/llmgw/provider"
)

// model is a configured model with its live endpoints.
type model struct {
	Model
	endpoints []*endpoint
	maxIn     float64 // highest input price among endpoints, for cost estimates
	maxOut    float64
}

// endpoint is an upstream with its health. It takes first attempts while it is healthy (its last probe
// passed) and not cooling down (no recent failed attempt).
type endpoint struct {
	cfg       Endpoint
	p         *provider.Endpoint
	label     string // for metrics and audit: host and upstream model, never the key
	healthy   atomic.Bool
	downUntil atomic.Int64 // Unix nanoseconds
}

func (e *endpoint) up(now time.Time) bool {
	return e.healthy.Load() && now.UnixNano() >= e.downUntil.Load()
}

func endpointLabel(e Endpoint) string {
	host := e.BaseURL
	if u, err := url.Parse(e.BaseURL); err == nil {
		host = u.Host
	}
	return host + "/" + e.Model
}

// cooldown is how long an endpoint that failed an attempt is tried last.
func (m *model) cooldown() time.Duration {
	if m.HealthInterval > 0 {
		return m.HealthInterval
	}
	return 30 * time.Second
}

// order returns the endpoints in the order to try them: those up first, each group drawn at random in
// proportion to the weights.
func (m *model) order(now time.Time) []*endpoint {
	var up, down []*endpoint
	for _, e := range m.endpoints {
		if e.up(now) {
			up = append(up, e)
		} else {
			down = append(down, e)
		}
	}
	return append(weightedShuffle(up), weightedShuffle(down)...)
}

// weightedShuffle draws endpoints without replacement, each draw in proportion to weight.
func weightedShuffle(es []*endpoint) []*endpoint {
	rest := append([]*endpoint(nil), es...)
	out := make([]*endpoint, 0, len(es))
	for len(rest) > 0 {
		total := 0
		for _, e := range rest {
			total += e.cfg.Weight
		}
		n := rand.IntN(total)
		i := 0
		for ; i < len(rest)-1; i++ {
			n -= rest[i].cfg.Weight
			if n < 0 {
				break
			}
		}
		out = append(out, rest[i])
		rest = append(rest[:i], rest[i+1:]...)
	}
	return out
}

// attempt runs fn on the model's endpoints until one succeeds, an error is not worth retrying, or the
// attempts run out; it returns the endpoint that succeeded or was tried last. Moving to an endpoint not yet tried is immediate; trying one again waits Backoff,
// doubled each round, with jitter, or the upstream's Retry-After if that is longer.
func attempt[T any](ctx context.Context, g *Gateway, c *call, m *model, fn func(context.Context, *endpoint) (T, error)) (T, *endpoint, error) {
	var zero T
	order := m.order(time.Now())
	var last error
	var ep *endpoint
	for i := 0; i <= m.Retries; i++ {
		ep = order[i%len(order)]
		if round := i / len(order); round > 0 {
			wait := m.Backoff << (round - 1)
			wait = wait/2 + rand.N(wait/2+1)
			var pe *provider.Error
			if errors.As(last, &pe) && pe.RetryAfter > wait {
				wait = min(pe.RetryAfter, 30*time.Second)
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return zero, nil, ctx.Err()
			case <-t.C:
			}
		}
		c.attempts++
		actx, span := g.startUpstream(ctx, m, ep, c.attempts)
		res, err := fn(actx, ep)
		if err == nil && c.stream && g.trace.on {
			c.upstreamSpan = span // ends with the stream, in finish
		} else {
			g.endUpstream(span, err)
		}
		if err == nil {
			g.metrics.attempts.WithLabelValues(m.Name, ep.cfg.Provider, ep.label, "ok").Inc()
			return res, ep, nil
		}
		last = err
		if ctx.Err() != nil {
			return zero, nil, ctx.Err()
		}
		outcome := "error"
		if provider.Retryable(err) {
			outcome = "retryable_error"
		}
		g.metrics.attempts.WithLabelValues(m.Name, ep.cfg.Provider, ep.label, outcome).Inc()
		if !provider.Retryable(err) {
			return zero, ep, err
		}
		g.markDown(m, ep, err)
	}
	return zero, ep, last // the endpoint tried last, for the record
}

// markDown makes an endpoint that failed an attempt go last for a while.
func (g *Gateway) markDown(m *model, ep *endpoint, cause error) {
	now := time.Now()
	wasUp := ep.up(now)
	ep.downUntil.Store(now.Add(m.cooldown()).UnixNano())
	if wasUp {
		g.log.Warn("llmgw: endpoint failing, trying it last", "model", m.Name, "endpoint", ep.label,
			"for", m.cooldown(), "err", cause)
		g.metrics.endpointUp.WithLabelValues(m.Name, ep.label).Set(0)
	}
}

// Run probes every endpoint at its model's HealthInterval until ctx is cancelled. An endpoint that fails a
// probe is tried last until a probe passes; a probe that passes also ends a cooldown after failed requests.
// Run returns nil when ctx is cancelled, once the records queued by then are written. It first reports the
// gateway's models, budgets and guardrails to the audit trail (api.KindGatewayReportLLM), for the controller's
// posture. While Run runs, the records of how calls ended are written by a worker of its own instead of by the
// handlers (auditq.go).
func (g *Gateway) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { g.report(ctx) })
	if g.cfg.Auditor != nil {
		wg.Go(func() { g.auditWorker(ctx) })
	}
	for _, m := range g.models {
		if m.HealthInterval <= 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(m.HealthInterval)
			defer t.Stop()
			for {
				g.probe(ctx, m)
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	wg.Wait()
	return nil
}

func (g *Gateway) probe(ctx context.Context, m *model) {
	var wg sync.WaitGroup
	for _, ep := range m.endpoints {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, min(m.HealthInterval, 10*time.Second))
			err := ep.p.Check(pctx)
			cancel()
			if ctx.Err() != nil {
				return
			}
			now := time.Now()
			wasUp := ep.up(now)
			if err == nil {
				ep.healthy.Store(true)
				ep.downUntil.Store(0)
			} else {
				ep.healthy.Store(false)
			}
			switch isUp := ep.up(now); {
			case isUp && !wasUp:
				g.log.Info("llmgw: endpoint healthy again", "model", m.Name, "endpoint", ep.label)
				g.metrics.endpointUp.WithLabelValues(m.Name, ep.label).Set(1)
			case !isUp && wasUp:
				g.log.Warn("llmgw: endpoint failed its health check", "model", m.Name, "endpoint", ep.label,
					slog.Any("err", err))
				g.metrics.endpointUp.WithLabelValues(m.Name, ep.label).Set(0)
			}
		}()
	}
	wg.Wait()
}
