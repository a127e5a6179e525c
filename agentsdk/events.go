package agentsdk

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// ErrNoSessionEvents: the controller offers no session event feed (it predates it); list the sessions instead.
var ErrNoSessionEvents = errors.New("the controller has no session event feed")

// sessionEventsWait is how long one request to the feed waits for news.
const sessionEventsWait = 15 * time.Second

// safetyList is how often Serve and OnProposal list the sessions while the event feed works, when no interval is
// given: the feed tells them of every change at once, the list only repairs what a fault might have lost.
const safetyList = 30 * time.Second

// maxCloseGrace bounds how long Serve keeps receiving on a session it has seen closed, for its last envelopes.
const maxCloseGrace = 5 * time.Second

// sessionFeed is one follower of the controller's session event feed: where it is in the feed.
type sessionFeed struct {
	a      *Agent
	ctrl   *Controller
	epoch  string
	cursor uint64
}

// newSessionFeed returns a follower with a client of its own: the long poll neither takes nor leaves a
// connection in the pool the agent's own API calls use.
func (a *Agent) newSessionFeed() *sessionFeed { return &sessionFeed{a: a, ctrl: a.newController()} }

func (f *sessionFeed) close() { f.ctrl.client.CloseIdleConnections() }

// poll asks for the changes after the follower's cursor, waiting up to wait for one.
func (f *sessionFeed) poll(ctx context.Context, wait time.Duration) (api.SessionEvents, error) {
	q := url.Values{"epoch": {f.epoch}, "after": {strconv.FormatUint(f.cursor, 10)}, "wait": {wait.String()}}
	rctx, cancel := context.WithTimeout(ctx, wait+10*time.Second)
	defer cancel()
	var page api.SessionEvents
	if err := f.ctrl.get(rctx, api.PathSessionEvents+"?"+q.Encode(), &page); err != nil {
		var ae *APIError
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			return page, ErrNoSessionEvents
		}
		return page, err
	}
	f.epoch, f.cursor = page.Epoch, page.Cursor
	return page, nil
}

// deliver sends page's events on out (a resync first, as an event of its own); false once ctx has ended.
func deliver(ctx context.Context, page api.SessionEvents, out chan<- api.SessionEvent) bool {
	events := page.Events
	if page.Resync {
		events = append([]api.SessionEvent{{Cursor: page.Cursor, Resync: true}}, events...)
	}
	for _, e := range events {
		select {
		case out <- e:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// follow long-polls the feed and delivers what it answers until ctx ends or the agent is closed (nil), or the
// controller turns out to have no feed (ErrNoSessionEvents). A controller that does not answer is asked again
// with a capped backoff; its answer then continues from the follower's cursor, so nothing is lost meanwhile.
func (f *sessionFeed) follow(ctx context.Context, out chan<- api.SessionEvent) error {
	retry := backoff{first: 100 * time.Millisecond, limit: 5 * time.Second}
	for ctx.Err() == nil {
		page, err := f.poll(ctx, sessionEventsWait)
		if err == nil {
			retry.reset()
			if !deliver(ctx, page, out) {
				return nil
			}
			continue
		}
		if ctx.Err() != nil || errors.Is(err, ErrClosed) {
			return nil
		}
		if errors.Is(err, ErrNoSessionEvents) {
			return err
		}
		d := retry.fail()
		var ae *APIError
		switch {
		case errors.As(err, &ae) && ae.Code == api.CodeTooManyFeeds:
			d = max(d, 5*time.Second)
		case errors.Is(err, ErrNotAuthorized):
			d = time.Minute // this identity was refused: nothing it could learn would help it now
		}
		f.a.opts.log.Debug("session event feed unreachable, retrying", "in", d, "err", err)
		if !sleep(ctx, d) {
			return nil
		}
	}
	return nil
}

// SessionEvents follows the controller's feed of this agent's sessions, those it is consumer or provider of,
// until ctx ends or the agent is closed; then the channel is closed. Each change of a session (proposed, held,
// accepted, activated, closed, rejected) arrives as the session after it, within moments of the change; several
// changes in quick succession may arrive as the latest only. An event with Resync set (and no session) says
// that changes may have been missed: list the sessions once (Sessions). The first event is such a resync.
//
// The feed is a long poll over the overlay; while the controller cannot be reached it is asked again with a
// backoff, and resumes where it left off. A controller that predates the feed answers ErrNoSessionEvents.
func (a *Agent) SessionEvents(ctx context.Context) (<-chan api.SessionEvent, error) {
	f := a.newSessionFeed()
	first, err := f.poll(ctx, 0)
	if err != nil {
		f.close()
		return nil, fmt.Errorf("agentsdk: session events: %w", err)
	}
	out := make(chan api.SessionEvent, 16)
	fctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(a.runCtx, cancel)
	go func() {
		defer close(out)
		defer f.close()
		defer cancel()
		defer stop()
		if deliver(fctx, first, out) {
			if err := f.follow(fctx, out); err != nil {
				a.opts.log.Warn("the controller no longer offers the session event feed", "err", err)
			}
		}
	}()
	return out, nil
}

// sessionWatch is the event feed as Serve and OnProposal follow it: events, and gone once the controller has
// no feed, when they poll instead.
type sessionWatch struct {
	events chan api.SessionEvent
	gone   chan struct{}
	done   chan struct{}
	cancel context.CancelFunc
}

// watchSessions follows the feed in the background until stop is called.
func (a *Agent) watchSessions(ctx context.Context) *sessionWatch {
	fctx, cancel := context.WithCancel(ctx)
	w := &sessionWatch{events: make(chan api.SessionEvent, 64), gone: make(chan struct{}), done: make(chan struct{}), cancel: cancel}
	f := a.newSessionFeed()
	stopOnClose := context.AfterFunc(a.runCtx, cancel)
	go func() {
		defer close(w.done)
		defer f.close()
		defer stopOnClose()
		if err := f.follow(fctx, w.events); errors.Is(err, ErrNoSessionEvents) {
			a.opts.log.Info("the controller has no session event feed; polling the session list", "err", err)
			close(w.gone)
		}
	}()
	return w
}

// stop ends the follower and waits for it.
func (w *sessionWatch) stop() {
	w.cancel()
	<-w.done
}

// listPeriods returns how often Serve and OnProposal list sessions: with the event feed (safety) and without
// it (poll), for the interval they were given.
func listPeriods(interval time.Duration) (safety, poll time.Duration) {
	if interval <= 0 {
		return safetyList, time.Second
	}
	return interval, interval
}
