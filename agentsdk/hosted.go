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
// its terminator and the overlay's store holds it, so a dial reaches it. Listen returns before that when no router could host the service yet
// (it goes on trying in the background), and a terminator lost with its router is made again in the background
// too; a host that announces it is ready waits here first. It returns an error if ln is closed or not from
// this package, and one wrapping ctx's error if ctx ends first.
func WaitHosted(ctx context.Context, ln net.Listener) error {
	l, ok := ln.(*listener)
	if !ok {
		return errors.New("agentsdk: wait hosted: not a listener from Listen")
	}
	t := time.NewTicker(hostedPoll)
	defer t.Stop()
	for {
		hosted, closed := l.hosted()
		switch {
		case closed:
			return fmt.Errorf("agentsdk: wait hosted %s: %w", l.service, net.ErrClosed)
		case hosted:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agentsdk: %s not hosted yet: %w", l.service, ctx.Err())
		case <-t.C:
		}
	}
}

// establishedCounter is what the overlay SDK's listener reports: how many of its terminators a router has
// created.
type establishedCounter interface{ GetEstablishedCount() uint }

// hosted tells whether l has at least one terminator its router counts established and the overlay's store
// holds, and whether it is closed.
func (l *listener) hosted() (hosted, closed bool) {
	l.mu.Lock()
	zl, closed := l.zl, l.closed
	l.mu.Unlock()
	if closed || zl == nil || zl.IsClosed() {
		return false, closed
	}
	if c, ok := zl.(establishedCounter); ok && c.GetEstablishedCount() == 0 {
		return false, false
	}
	found, _ := l.inStore(zl, time.Now())
	return found, false
}
