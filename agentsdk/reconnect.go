package agentsdk

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/openziti/sdk-golang/ziti"
)

const (
	// reconnectTimeout bounds one attempt to replace the overlay context, whoever asked for it.
	reconnectTimeout = 15 * time.Second
	// maxRetiring is how many replaced overlay contexts the agent keeps open for the connections they carry.
	maxRetiring = 4
	// watchInterval is how often the watchdog looks at the hosted services.
	watchInterval = time.Second
	// downTicks is how many looks in a row a hosted service must be down before the watchdog reconnects.
	downTicks = 2
)

// reconnectCall is one replacement of the overlay context that any number of callers wait for.
type reconnectCall struct {
	done chan struct{}
	err  error
}

// reconnectFrom replaces the overlay context of generation gen with a new one, authenticated afresh, and moves
// the listeners there. Callers that saw the same context fail share one replacement; if the context has been
// replaced already, it returns at once. The replacement runs on even if ctx ends first (it is bounded by
// reconnectTimeout and by Close), so a caller that gives up does not leave the agent half switched.
func (a *Agent) reconnectFrom(ctx context.Context, gen uint64) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	if a.gen != gen {
		a.mu.Unlock()
		return nil
	}
	call := a.reconnect
	if call == nil {
		call = &reconnectCall{done: make(chan struct{})}
		a.reconnect = call
		go func() {
			rctx, cancel := context.WithTimeout(a.runCtx, reconnectTimeout)
			err := a.switchContext(rctx, nil, gen)
			cancel()
			a.mu.Lock()
			a.reconnect = nil
			a.mu.Unlock()
			if err != nil {
				a.opts.log.Debug("reconnecting to the overlay failed", "spiffe_id", a.ID().String(), "err", err)
			} else {
				a.opts.log.Info("reconnected to the overlay", "spiffe_id", a.ID().String())
			}
			call.err = err
			close(call.done)
		}()
	}
	a.mu.Unlock()
	select {
	case <-call.done:
		return call.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// switchContext connects next (nil: the current identity) to the overlay in a new context, makes it current,
// and moves the listeners there. The old context keeps its open connections until its SVID expires (at most
// maxRetiring old contexts are kept). One switch runs at a time; with gen non-zero, the switch happens only if
// generation gen is still current. It returns by ctx's deadline; a context that connects later is closed.
func (a *Agent) switchContext(ctx context.Context, next *Identity, gen uint64) error {
	select {
	case a.switching <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("reconnect: %w", ctx.Err())
	}
	defer func() { <-a.switching }()
	a.mu.Lock()
	switch {
	case a.closed:
		a.mu.Unlock()
		return ErrClosed
	case gen != 0 && a.gen != gen:
		a.mu.Unlock()
		return nil
	case next == nil:
		next = a.id
	}
	a.mu.Unlock()
	zctx, err := await(ctx, func() (ziti.Context, error) { return newZitiContext(next, a.opts.refresh, a.apis) }, closeContext)
	if err != nil {
		return fmt.Errorf("reconnect: %w", err)
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		zctx.Close()
		return ErrClosed
	}
	a.retiring = append(a.retiring, retiring{zctx: a.zctx, at: a.id.svid[0].NotAfter})
	if n := len(a.retiring) - maxRetiring; n > 0 {
		for _, r := range a.retiring[:n] {
			r.zctx.Close()
		}
		a.retiring = append(a.retiring[:0], a.retiring[n:]...)
	}
	a.id, a.zctx = next, zctx
	a.gen++
	a.unbound = map[string]bool{}
	ls := make([]*listener, 0, len(a.listeners))
	for l := range a.listeners {
		ls = append(ls, l)
	}
	a.mu.Unlock()
	// Pooled connections to the controller's API belong to the old context.
	a.Controller().client.CloseIdleConnections()
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.bindListener(ctx, l); err != nil {
				a.opts.log.Warn("moving listener to the new overlay context failed", "service", l.service, "err", err)
				go l.rebind()
			}
		}()
	}
	wg.Wait()
	return nil
}

// watch keeps the hosted services hosted. A listener without a live terminator for downTicks looks in a row,
// or one whose overlay SDK reported a lost session, means the overlay context lost its session (the controller
// restarted, say) or its routers: the agent then reconnects, which hosts every listener again in the new
// context. A failed reconnect (the controller is still away) is retried every couple of seconds; a reconnect
// that did not bring the services back, or that the overlay refused (the identity is revoked), is repeated less
// and less often, up to once a minute.
func (a *Agent) watch(ctx context.Context) {
	t := time.NewTicker(watchInterval)
	defer t.Stop()
	down := 0
	var notBefore time.Time
	failed := backoff{first: time.Second, limit: 2 * time.Second}
	useless := backoff{first: 5 * time.Second, limit: time.Minute}
	trying := false
	for {
		kicked := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.kick:
			kicked = true
		}
		if !a.listenersDown() {
			if trying {
				a.opts.log.Info("hosted services are back", "spiffe_id", a.ID().String())
				trying = false
			}
			down = 0
			failed.reset()
			useless.reset()
			continue
		}
		if down++; (down < downTicks && !kicked) || time.Now().Before(notBefore) {
			continue
		}
		_, gen, err := a.currentGen()
		if err != nil {
			return
		}
		if !trying {
			a.opts.log.Warn("a hosted service is down, reconnecting to the overlay", "spiffe_id", a.ID().String())
			trying = true
		}
		switch err := a.reconnectFrom(ctx, gen); {
		case errors.Is(err, ErrNotAuthorized) || err == nil:
			failed.reset()
			notBefore = time.Now().Add(useless.fail())
		default:
			notBefore = time.Now().Add(failed.fail())
		}
		down = 0
	}
}

// listenersDown tells whether some open listener has no live terminator: none its router counts established,
// or, for storeWait after its router counted one, none in the overlay's store (instore.go). A listener whose
// service the overlay does not know for the identity (listener.refused) does not count: a reconnect would not
// bring it back.
func (a *Agent) listenersDown() bool {
	a.mu.Lock()
	ls := make([]*listener, 0, len(a.listeners))
	for l := range a.listeners {
		ls = append(ls, l)
	}
	a.mu.Unlock()
	anyDown, now := false, time.Now()
	for _, l := range ls {
		l.mu.Lock()
		zl, skip := l.zl, l.closed || l.pending || l.refused
		l.mu.Unlock()
		if skip {
			continue
		}
		if zl == nil || zl.IsClosed() {
			anyDown = true
			continue
		}
		if n, ok := zl.(establishedCounter); ok && n.GetEstablishedCount() == 0 {
			l.forgetStore()
			anyDown = true
			continue
		}
		if _, stuck := l.inStore(zl, now); stuck {
			anyDown = true
		}
	}
	return anyDown
}

// onListenerError is called by the overlay SDK when hosting a service fails on one router.
func (a *Agent) onListenerError(err error) {
	if err != nil && isSessionLost(err) {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
}
