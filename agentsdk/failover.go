package agentsdk

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/openziti/sdk-golang/ziti"
)

// Hosting through every router.
//
// The overlay SDK reads which edge routers a hosted service may use when the service is first hosted. It reads
// that list again only 15 s to 5 min later, and never twice within 30 s (listenerManager in sdk-golang v1.2.10;
// no option shortens it). A service hosted before a second router came online is therefore hosted through the
// first router alone. When that router dies, the service has no terminator until the SDK looks again: the
// controller's relay and API were unreachable for 41–49 s after losing the first of two routers.
//
// Hosting the service again in the same overlay context does not help. For a second hosting session of the
// same service and API session, OpenZiti v1.7.2 returns a token for a session it never stored:
// SessionManager.Create reuses the cached session, but CreateJwt has already signed a new ID. Every terminator
// is then refused as "invalid session", and the SDK retries that in a tight loop. A new overlay context has a
// new API session, so it hosts every service afresh through every router it may use. The old context keeps the
// connections it carries. Moving to a new context is the reconnection (reconnectFrom), so keepHosting only
// decides when to do it.

const (
	// hostingCheck is how often the agent looks for a hosted service that has just lost its last router.
	hostingCheck = 250 * time.Millisecond
	// hostingSettle is how long a service that looks hosted through too few routers gets to finish hosting
	// before the agent reconnects. A listen returns once the first router hosts the service.
	hostingSettle = time.Second
	// hostingTerminators is the most terminators a listener establishes (ListenOptions.MaxTerminators in
	// listener.bind).
	hostingTerminators = 3
)

// startKeepHosting runs keepHosting as one of the agent's background loops until ctx ends; Close waits for it.
func (a *Agent) startKeepHosting(ctx context.Context) {
	a.loops.Add(1)
	go func() {
		defer a.loops.Done()
		a.keepHosting(ctx)
	}()
}

// keepHosting keeps the agent's hosted services hosted through the edge routers it may use, until ctx ends:
//   - When a hosted service loses its last router (the router died), it asks the watchdog to reconnect at once,
//     without waiting for the watchdog's own debounce.
//   - Every service-refresh interval, it checks which routers are online. If that set has changed and a
//     service is hosted through fewer of them than it could be, it reconnects, which hosts every service again
//     through all of them. A router that is online but unreachable from here causes one reconnect per change of
//     the set, not one per interval.
func (a *Agent) keepHosting(ctx context.Context) {
	tick := time.NewTicker(hostingCheck)
	defer tick.Stop()
	var (
		prev   map[*listener]uint
		seen   string
		armed  = true
		listed time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		hosted := a.hosting()
		for l, n := range hosted {
			if n == 0 && prev[l] > 0 {
				a.opts.log.Info("a hosted service lost its last router, reconnecting", "service", l.service)
				select {
				case a.kick <- struct{}{}:
				default:
				}
				break
			}
		}
		prev = hosted
		if len(hosted) == 0 || time.Since(listed) < a.opts.refresh {
			continue
		}
		listed = time.Now()
		_, gen, err := a.currentGen()
		if err != nil {
			return
		}
		if !a.routersChanged(ctx, &seen, &armed) {
			continue
		}
		a.opts.log.Info("hosting services again through the routers online", "routers", seen)
		if err := a.reconnectFrom(ctx, gen); err != nil && ctx.Err() == nil {
			a.opts.log.Warn("hosting services again failed", "routers", seen, "err", err)
			continue
		}
		armed = false
	}
}

// routersChanged lists the routers online and tells whether the services should be hosted again because of
// them. That is the case when the set differs from the one seen last (or the reconnect it asked for failed)
// and some service is hosted through fewer of them than it could be, still after hostingSettle.
func (a *Agent) routersChanged(ctx context.Context, seen *string, armed *bool) bool {
	_, zctx, err := a.current()
	if err != nil {
		return false
	}
	online, err := onlineRouters(zctx)
	if err != nil {
		a.opts.log.Debug("listing edge routers failed", "err", err)
		return false
	}
	if key := strings.Join(online, ","); key != *seen {
		*seen, *armed = key, true
	}
	if !*armed || !a.underHosted(len(online)) {
		return false
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(hostingSettle):
	}
	return a.underHosted(len(online))
}

// underHosted tells whether a hosted service has fewer terminators than the online routers allow.
func (a *Agent) underHosted(online int) bool {
	want := uint(min(online, hostingTerminators))
	for _, n := range a.hosting() {
		if n < want {
			return true
		}
	}
	return false
}

// hosting maps each open listener of the agent that is neither being hosted again nor waiting for its first
// router to the number of routers through which the overlay hosts it.
func (a *Agent) hosting() map[*listener]uint {
	a.mu.Lock()
	ls := make([]*listener, 0, len(a.listeners))
	for l := range a.listeners {
		ls = append(ls, l)
	}
	a.mu.Unlock()
	out := make(map[*listener]uint, len(ls))
	for _, l := range ls {
		l.mu.Lock()
		zl, busy := l.zl, l.closed || l.rebinding
		l.mu.Unlock()
		if busy || zl == nil || zl.IsClosed() {
			continue
		}
		if n, ok := zl.(interface{ GetEstablishedCount() uint }); ok {
			out[l] = n.GetEstablishedCount()
		}
	}
	return out
}

// onlineRouters lists, sorted, the enabled edge routers online that zctx's identity may use.
func onlineRouters(zctx ziti.Context) ([]string, error) {
	impl, ok := zctx.(*ziti.ContextImpl)
	if !ok || impl.CtrlClt == nil {
		return nil, errors.New("the overlay context cannot list edge routers")
	}
	ers, err := impl.CtrlClt.GetAvailableERs()
	if err != nil {
		return nil, fmt.Errorf("list edge routers: %w", err)
	}
	var online []string
	for _, er := range ers {
		if er.Name != nil && er.IsOnline != nil && *er.IsOnline && (er.Disabled == nil || !*er.Disabled) {
			online = append(online, *er.Name)
		}
	}
	slices.Sort(online)
	return online, nil
}
