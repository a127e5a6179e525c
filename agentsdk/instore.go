package agentsdk

import (
	"fmt"
	"time"

	"github.com/openziti/sdk-golang/ziti/edge"
)

const (
	// storeWait is how long a listener may count as hosted by its router while the overlay's store answers that
	// it holds no terminator of the service, before the watchdog hosts everything again in a new overlay session.
	storeWait = 30 * time.Second
	// storeAskEvery is the least time between two questions to the store about one listener's bind.
	storeAskEvery = 250 * time.Millisecond
)

// storeState is what the overlay's store was found to hold for one bind of a listener.
//
// A router can count a bind established whose terminator the overlay's store never gets: a bind carrying the
// listener id of a terminator the router still creates takes that one over and is answered at once, and if its
// create is never applied, every dial is answered "service … has no terminators" while the listener looks
// hosted (docs/overlay-reliability.md, "Ready means dialable"). The agent cannot see the router's state, but it
// can ask the store through the client API.
type storeState struct {
	zl     edge.Listener // the bind the fields are about
	since  time.Time     // when the watchdog or WaitHosted first saw that bind established
	asked  time.Time     // when the last question went out
	asking bool          // a question is on its way
	found  bool          // the store held a terminator of the service
	none   bool          // the store answered, and held none
	warned bool          // the watchdog said the bind is stuck
}

// inStore tells whether the overlay's store holds a terminator of l's service, for zl, a bind of l its router
// counts established; while it has not found one it asks the store in the background, at most every
// storeAskEvery. stuck is true once the store has answered that it holds none and storeWait has passed since zl
// was first seen established. A store that cannot be asked (the controller is away) never makes a bind stuck:
// the watchdog has other signs for that.
func (l *listener) inStore(zl edge.Listener, now time.Time) (found, stuck bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := &l.store
	if s.zl != zl {
		*s = storeState{zl: zl, since: now}
	}
	if s.found {
		return true, false
	}
	if !s.asking && now.Sub(s.asked) >= storeAskEvery {
		s.asking, s.asked = true, now
		go l.askStore(zl)
	}
	stuck = s.none && now.Sub(s.since) >= storeWait
	if stuck && !s.warned {
		s.warned = true
		l.agent.opts.log.Warn("the router counts the service hosted, but the overlay's store holds no terminator of it; hosting it again in a new overlay session",
			"service", l.service, "waited", storeWait)
	}
	return false, stuck
}

// forgetStore drops what the store was found to hold: the bind lost its terminators (a router went away), and
// once the router counts it established again, the store must be asked again.
func (l *listener) forgetStore() {
	l.mu.Lock()
	l.store = storeState{} // an answer on its way is dropped: it is about the bind before
	l.mu.Unlock()
}

// askStore asks the overlay's store how many terminators l's service has and records the answer for zl.
func (l *listener) askStore(zl edge.Listener) {
	n, err := l.agent.terminatorsInStore(l.service)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.store.zl != zl {
		return
	}
	l.store.asking = false
	switch {
	case err != nil:
		l.agent.opts.log.Debug("asking the overlay's store for the service's terminators failed", "service", l.service, "err", err)
	case n > 0:
		l.store.found, l.store.none = true, false
	default:
		l.store.none = true
	}
}

// terminatorsInStore counts the terminators of service in the overlay's store, as the client API lists them to
// an identity that may use the service. Any host's terminator counts: a dial can then be routed. The overlay SDK
// bounds the request (10 s).
func (a *Agent) terminatorsInStore(service string) (int, error) {
	if a.storeCount != nil {
		return a.storeCount(service)
	}
	_, zctx, err := a.current()
	if err != nil {
		return 0, err
	}
	_, total, err := zctx.GetServiceTerminators(service, 0, 1)
	if err != nil {
		return 0, fmt.Errorf("list the terminators of %s: %w", service, err)
	}
	return total, nil
}
