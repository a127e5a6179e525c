package agentsdk

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// hostedPoll is how often WaitHosted looks at a listener's terminators.
const hostedPoll = 50 * time.Millisecond

// WaitHosted returns once ln, a listener from Listen or ListenContext, hosts its service: a router has created
// its terminator and the overlay's store holds it, so a dial reaches it. Listen returns before that when no
// router could host the service yet (it goes on trying in the background), and a terminator lost with its router
// is made again in the background too; a host that announces it is ready waits here first. It returns an error
// if ln is closed or not from this package, and one wrapping ctx's error, saying how far hosting got, if ctx ends
// first.
func WaitHosted(ctx context.Context, ln net.Listener) error {
	l, ok := ln.(*listener)
	if !ok {
		return errors.New("agentsdk: wait hosted: not a listener from Listen")
	}
	t := time.NewTicker(hostedPoll)
	defer t.Stop()
	for {
		st := l.hosted()
		switch st {
		case hostClosed:
			return fmt.Errorf("agentsdk: wait hosted %s: %w", l.service, net.ErrClosed)
		case hostDone:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agentsdk: %s not hosted yet (%s): %w", l.service, st, ctx.Err())
		case <-t.C:
		}
	}
}

// establishedCounter is what the overlay SDK's listener reports: how many of its terminators a router has
// created.
type establishedCounter interface{ GetEstablishedCount() uint }

// hostState is how far a listener's hosting has got.
type hostState int

const (
	hostUnbound     hostState = iota // no bind of the service in the current overlay session yet
	hostUnconfirmed                  // bound, but no router has confirmed a terminator
	hostNotInStore                   // a router confirmed a terminator, the overlay's store holds none yet
	hostDone                         // the store holds a terminator: a dial reaches the service
	hostClosed                       // the listener is closed
)

func (s hostState) String() string {
	switch s {
	case hostUnbound:
		return "not bound in the overlay yet"
	case hostUnconfirmed:
		return "no router has confirmed its terminator"
	case hostNotInStore:
		return "a router confirmed its terminator, but the overlay's store holds none yet"
	case hostDone:
		return "hosted"
	default:
		return "closed"
	}
}

// hosted tells how far l's hosting has got: done once a router counts a terminator established and the
// overlay's store holds one.
func (l *listener) hosted() hostState {
	l.mu.Lock()
	zl, closed := l.zl, l.closed
	l.mu.Unlock()
	switch {
	case closed:
		return hostClosed
	case zl == nil || zl.IsClosed():
		return hostUnbound
	}
	if c, ok := zl.(establishedCounter); ok && c.GetEstablishedCount() == 0 {
		return hostUnconfirmed
	}
	if found, _ := l.inStore(zl, time.Now()); !found {
		return hostNotInStore
	}
	return hostDone
}
