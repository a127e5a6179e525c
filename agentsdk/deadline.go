package agentsdk

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The overlay SDK's calls take no context, and some of them retry on their own for minutes while the controller
// is unreachable or unhappy (a dial creating its service session, an authentication refreshing its API
// session). Every such call in this package goes through await, so the agent's own calls return by their
// caller's deadline whatever the overlay SDK does.

// firstDialAttempt is the deadline of an overlay dial's first attempt; each later attempt has twice the one
// before, up to 16 times this, all within the caller's deadline.
const firstDialAttempt = time.Second

// await runs call in a goroutine of its own and returns its result, or ctx's error as soon as ctx ends. A
// result that arrives after the caller has gone is handed to discard (which closes it), so nothing leaks; the
// goroutine itself ends when call returns.
func await[T any](ctx context.Context, call func() (T, error), discard func(T)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	type result struct {
		v   T
		err error
	}
	// Unbuffered: a send succeeds only if the caller takes the result, so exactly one side owns it.
	ch := make(chan result)
	go func() {
		v, err := recovered(call)
		select {
		case ch <- result{v, err}:
		case <-ctx.Done():
			if err == nil && discard != nil {
				discard(v)
			}
		}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// errOverlayFault reports that the overlay SDK panicked inside a call. Some of its calls dereference state that
// another of its goroutines may clear meanwhile (a dial reads the current API session, which a failed refresh
// sets to nil after the dial checked it); such a fault is the overlay context's, not the process's.
var errOverlayFault = errors.New("the overlay SDK failed inside a call")

// recovered runs call and turns a panic in it into an error wrapping errOverlayFault.
func recovered[T any](call func() (T, error)) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			var zero T
			v, err = zero, fmt.Errorf("%w: %v", errOverlayFault, r)
		}
	}()
	return call()
}

// sleep waits for d or until ctx ends, and reports whether the whole d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// backoff is a capped exponential delay: zero until the first failure, then first, doubling up to limit.
type backoff struct {
	first, limit, next time.Duration
}

// fail returns how long to wait after one more failure.
func (b *backoff) fail() time.Duration {
	d := max(b.next, b.first)
	b.next = min(d*2, b.limit)
	return d
}

// reset starts over after a success.
func (b *backoff) reset() { b.next = 0 }

// isSessionLost tells whether an overlay error means that the controller no longer knows this agent's API
// session or a service session it holds: after a controller restart, a revocation, or an expired session. A new
// overlay context authenticates afresh and so either repairs it or shows that the identity itself is refused.
func isSessionLost(err error) bool {
	s := strings.ToLower(err.Error())
	for _, m := range []string{"invalid session", "invalid api session", "apisession", "api session",
		"service session token", "unauthorized", "invalid_auth", "401",
		// OpenZiti's refusal of a token issued before a revocation of the identity's tokens (a suspension in a
		// cluster): a new session authenticates again, and is refused if the identity is still cut off.
		"token has been revoked"} {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

// isControllerGone tells whether an overlay error means that the controller's edge API did not answer at the
// network level (a cluster member died, say). A new overlay context authenticates through another controller.
func isControllerGone(err error) bool {
	s := strings.ToLower(err.Error())
	if !strings.Contains(s, "/edge/client/v1") && !strings.Contains(s, "/oidc") {
		return false
	}
	for _, m := range []string{"connection refused", "connection reset", "no route to host", "i/o timeout", "eof"} {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}
