package agentsdk

import (
	"time"

	"github.com/openziti/sdk-golang/ziti/edge"
)

// A bind the overlay ends as soon as it is made is bound again by the overlay SDK at once, with the same bind
// session, and ended again: hundreds of times a second while the SDK has refreshed the session within the last
// 30 s, and on until then. It happens when the identity loses the right to host the service while it hosts it
// (its advertisement retracted, its membership removed, the service deleted): each turn of that loop is a bind
// at the router and often a terminator the controller creates and removes, enough to have the controller refuse
// everyone's terminator changes for a while. The listener watches its binds come and go, and when they churn it
// closes the SDK's listener, which ends the loop, and binds again itself after a pause that grows while the churn
// recurs.
const (
	// churnWindow and churnChanges define churn: churnChanges changes of a listener's router binds (each made or
	// ended) within churnWindow. A healthy listener changes a few times when a router comes or goes; the loop
	// above changes about a thousand times a second.
	churnWindow  = 2 * time.Second
	churnChanges = 10
	// churnPauseFirst is the pause before binding again after churn; it doubles with each churn that follows
	// within churnMemory of the last, up to churnPauseMax.
	churnPauseFirst = time.Second
	churnPauseMax   = time.Minute
	churnMemory     = 5 * time.Minute
)

// churnState is what a listener knows of its binds' changes.
type churnState struct {
	changes []time.Time   // in the last churnWindow, oldest first
	last    time.Time     // when churn was last found
	pause   time.Duration // taken after the last churn
}

// connectionChanges is the overlay SDK's listener's report of its router binds: the handler is called, in a
// goroutine of its own, with the current binds each time one is made or ended.
type connectionChanges interface {
	SetConnectionChangeHandler(func([]edge.Listener))
}

// bindErrors is the overlay SDK's listener's report of a bind a router refused.
type bindErrors interface {
	SetErrorEventHandler(func(error))
}

// watchChurn has zl report its binds' changes, and the binds its routers refuse, to l; a refusal also goes to the
// watchdog, which reconnects at once when it means a lost session (onListenerError). A refused bind counts as a
// change: the SDK binds again at once after one too (after a suspension is lifted, say, it binds with a service
// session of its old API session, which the router refuses, thousands of times in a few seconds).
func (l *listener) watchChurn(zl edge.Listener) {
	if c, ok := zl.(connectionChanges); ok {
		c.SetConnectionChangeHandler(func([]edge.Listener) { l.bindsChanged(zl, time.Now()) })
	}
	if c, ok := zl.(bindErrors); ok {
		c.SetErrorEventHandler(func(err error) {
			l.agent.onListenerError(err)
			l.bindsChanged(zl, time.Now())
		})
	}
}

// bindsChanged notes that zl's binds changed, or one was refused, at now. When they churn, zl is closed and the
// service is bound again after a pause.
func (l *listener) bindsChanged(zl edge.Listener, now time.Time) {
	l.mu.Lock()
	if l.closed || l.zl != zl {
		l.mu.Unlock()
		return
	}
	c := &l.churn
	c.changes = append(c.changes, now)
	i := 0
	for i < len(c.changes) && now.Sub(c.changes[i]) > churnWindow {
		i++
	}
	c.changes = c.changes[i:]
	if len(c.changes) < churnChanges {
		l.mu.Unlock()
		return
	}
	n := len(c.changes)
	c.changes = nil
	if c.pause == 0 || now.Sub(c.last) > churnMemory {
		c.pause = churnPauseFirst
	} else {
		c.pause = min(2*c.pause, churnPauseMax)
	}
	c.last = now
	pause := c.pause
	// Not l.zl any more, so that its accept loop, which ends now, does not bind again at once; refused, so that
	// the watchdog does not move the whole agent to a new overlay session meanwhile (rebind decides it afresh).
	l.zl = nil
	l.store = storeState{}
	l.refused = true
	l.mu.Unlock()
	l.agent.opts.log.Warn("the overlay keeps ending or refusing this service's binds: the identity may have lost the right to host it (advertisement retracted, membership removed, service deleted, identity suspended); binding again after a pause",
		"service", l.service, "changes", n, "within", churnWindow, "pause", pause)
	l.unbind()
	zl.Close()
	go l.rebindAfter(pause)
}

// rebindAfter binds l again after pause, unless it is closed or bound again (a reconnect moved it) first.
func (l *listener) rebindAfter(pause time.Duration) {
	t := time.NewTimer(pause)
	defer t.Stop()
	select {
	case <-l.done:
		return
	case <-t.C:
	}
	l.mu.Lock()
	bound := l.zl != nil
	l.mu.Unlock()
	if !bound {
		l.rebind()
	}
}
