package mcpgw

import (
	"sync"
	"time"
)

// limiter holds each caller's allowance: a token bucket for the rate and a count of calls in flight.
type limiter struct {
	perSecond  float64 // 0: no rate limit
	burst      float64
	concurrent int // 0: no limit

	mu sync.Mutex
	m  map[string]*allowance
}

type allowance struct {
	tokens   float64
	last     time.Time
	inflight int
}

func newLimiter(l Limits) *limiter {
	lim := &limiter{m: make(map[string]*allowance)}
	if l.CallsPerMinute > 0 {
		lim.perSecond = float64(l.CallsPerMinute) / 60
		lim.burst = float64(max(l.Burst, 1))
	}
	if l.Concurrent > 0 {
		lim.concurrent = l.Concurrent
	}
	return lim
}

// acquire takes one call from caller's allowance. It returns a release function, or the error code
// (CodeRateLimited or CodeTooBusy) that refuses the call.
func (l *limiter) acquire(caller string) (release func(), code int64) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.m[caller]
	if a == nil {
		a = &allowance{tokens: l.burst, last: now}
		l.m[caller] = a
	}
	if l.perSecond > 0 {
		a.tokens = min(l.burst, a.tokens+now.Sub(a.last).Seconds()*l.perSecond)
		a.last = now
		if a.tokens < 1 {
			return nil, CodeRateLimited
		}
	}
	if l.concurrent > 0 && a.inflight >= l.concurrent {
		return nil, CodeTooBusy
	}
	a.tokens--
	a.inflight++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			a.inflight--
			l.mu.Unlock()
		})
	}, 0
}

// prune forgets callers with a full bucket and nothing in flight.
func (l *limiter) prune() {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, a := range l.m {
		full := l.perSecond == 0 || a.tokens+now.Sub(a.last).Seconds()*l.perSecond >= l.burst
		if a.inflight == 0 && full {
			delete(l.m, k)
		}
	}
}
