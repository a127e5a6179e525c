package controller

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/umbra-mesh/umbra/internal/audit"
)

// A member that keeps sending refused frames must not be able to fill the disk with fsynced audit records, one
// per bad frame. The relay records the first refusalsPerWindow refusals of each identity in each window one by
// one; the rest are counted and recorded as one summary when the window ends (or at the identity's next refusal
// after it). Acceptances are never summarised: every accepted envelope has its own record.

const (
	refusalWindow     = time.Minute
	refusalsPerWindow = 30
	// kindRefusalSummary is the audit kind of a window's refusals that were counted, not recorded one by one.
	kindRefusalSummary = "envelope.rejected.summary"
)

// refusalLimiter decides which refusals get a record of their own.
type refusalLimiter struct {
	window time.Duration
	per    int

	mu      sync.Mutex
	windows map[string]*refusalWindowCount // by actor
}

// refusalWindowCount is one identity's refusals in the current window.
type refusalWindowCount struct {
	start      time.Time
	recorded   int
	suppressed map[string]int // by refusal code
}

func newRefusalLimiter(window time.Duration, per int) *refusalLimiter {
	return &refusalLimiter{window: window, per: per, windows: map[string]*refusalWindowCount{}}
}

// admit reports whether the refusal of actor with code gets its own record. It also returns the summary of the
// actor's previous window, if that window ended with refusals left unrecorded.
func (l *refusalLimiter) admit(actor, code string, now time.Time) (bool, *audit.Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var summary *audit.Record
	w := l.windows[actor]
	if w != nil && now.Sub(w.start) >= l.window {
		summary = l.summaryLocked(actor, w, now)
		w = nil
	}
	if w == nil {
		w = &refusalWindowCount{start: now}
		l.windows[actor] = w
	}
	if w.recorded < l.per {
		w.recorded++
		return true, summary
	}
	if w.suppressed == nil {
		w.suppressed = map[string]int{}
	}
	w.suppressed[code]++
	return false, summary
}

// flush returns the summaries of every window that has ended, and forgets those windows.
func (l *refusalLimiter) flush(now time.Time) []audit.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []audit.Record
	for actor, w := range l.windows {
		if now.Sub(w.start) < l.window {
			continue
		}
		if r := l.summaryLocked(actor, w, now); r != nil {
			out = append(out, *r)
		}
		delete(l.windows, actor)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Actor < out[j].Actor })
	return out
}

func (l *refusalLimiter) summaryLocked(actor string, w *refusalWindowCount, now time.Time) *audit.Record {
	total := 0
	codes := make([]string, 0, len(w.suppressed))
	for code, n := range w.suppressed {
		total += n
		codes = append(codes, fmt.Sprintf("%s×%d", code, n))
	}
	if total == 0 {
		return nil
	}
	sort.Strings(codes)
	end := w.start.Add(l.window)
	return &audit.Record{Kind: kindRefusalSummary, Actor: actor, Decision: audit.DecisionDeny, Time: now,
		Reason: fmt.Sprintf("%d more refusals from %s to %s not recorded one by one: %s", total,
			w.start.UTC().Format(time.RFC3339), end.UTC().Format(time.RFC3339), strings.Join(codes, ", ")),
		Data: jsonRaw(map[string]any{"from": w.start.UTC(), "to": end.UTC(), "count": total, "by_code": w.suppressed, "recorded": w.recorded})}
}

// recordRefusal writes r, a refusal by r.Actor with code, unless the actor has had its share of refusal records
// in this window; then it is counted for the window's summary.
func (s *Server) recordRefusal(ctx context.Context, code string, r audit.Record) {
	ok, summary := s.gov.refusals.admit(r.Actor, code, time.Now())
	if summary != nil {
		s.record(ctx, *summary)
	}
	if ok {
		s.record(ctx, r)
	} else {
		s.metrics.suppressedRefusal(code)
	}
}

// summariseRefusals records the summaries of ended windows until ctx ends, and then those of every window.
func (g *governance) summariseRefusals(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(g.refusals.window / 4)
	defer t.Stop()
	write := func(ctx context.Context, now time.Time) {
		for _, r := range g.refusals.flush(now) {
			if _, err := g.audit.Append(ctx, r); err != nil {
				log.Error("audit append failed", "kind", r.Kind, "actor", r.Actor, "err", err)
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			write(sctx, time.Now().Add(g.refusals.window))
			cancel()
			return
		case <-t.C:
			write(ctx, time.Now())
		}
	}
}
