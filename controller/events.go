package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// The session event feed tells each party of a session about its changes as they happen, so that a provider
// answers a held proposal, and serves an accepted session, without polling the session list.
//
// It is derived from a watch of the sessions bucket, not from what this controller did: a change made by another
// controller sharing the store is seen like one of its own, and after a restart the watch delivers every stored
// session again. A cursor is the bucket's revision of the change (its stream sequence), which every controller
// of the store counts alike and which survives restarts; the epoch names the store (its stream's creation
// time), so that a cursor of another store is not taken for one of this.
//
// The feed keeps the latest sessionEventsKept changes. What a party is told comes only from the changes of its own
// sessions: the cursor it is given is the revision of its own latest change, never the store's, so that neither
// the answers nor their timing reveal anything of sessions it is no party to. When changes of a party's sessions
// newer than its cursor have been dropped, its next answer is a resync: list once, then follow on.

// sessionEventsKept bounds the changes kept in memory (a few MiB).
const sessionEventsKept = 4096

// maxSessionEventsWait caps one long poll, well within the API server's write timeout.
const maxSessionEventsWait = 20 * time.Second

// maxFeedsPerIdentity bounds one identity's concurrent long polls on the feed, so that it cannot pin the
// controller's goroutines and connections.
const maxFeedsPerIdentity = 4

// maxSessionEventsPage bounds the events of one answer; the rest follow on the next request.
const maxSessionEventsPage = 256

// sessionChange is one put to the sessions bucket.
type sessionChange struct {
	rev  uint64
	sess workgroups.Session
}

// sessionEvents is the recent changes of the sessions bucket, kept from a watch.
type sessionEvents struct {
	sessions table[workgroups.Session]
	stream   jetstream.Stream
	log      *slog.Logger

	mu      sync.Mutex
	current bool   // the watch has delivered the bucket's contents
	epoch   string // the store's
	changes []sessionChange
	// dropped is, per party, the newest revision of its changes no longer kept: a cursor below it missed some.
	dropped map[spiffeid.ID]uint64
	changed chan struct{} // closed and replaced at every change
	feeds   map[spiffeid.ID]int
}

func newSessionEvents(sessions table[workgroups.Session], stream jetstream.Stream, log *slog.Logger) *sessionEvents {
	return &sessionEvents{sessions: sessions, stream: stream, log: log, dropped: map[spiffeid.ID]uint64{},
		changed: make(chan struct{}), feeds: map[spiffeid.ID]int{}}
}

// run keeps the changes current until ctx ends, watching again after a failure.
func (e *sessionEvents) run(ctx context.Context) {
	watchAgain(ctx, e.log, "watching sessions for the event feed failed; watching again", e.watch, func() {
		e.mu.Lock()
		e.current = false
		e.mu.Unlock()
	})
}

// watch reads the bucket's contents, then each change, from whichever controller made it.
func (e *sessionEvents) watch(ctx context.Context) error {
	info, err := e.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("sessions stream: %w", err)
	}
	epoch := strconv.FormatInt(info.Created.UnixNano(), 36)
	guard := newWatchGuard(ctx, e.sessions.kv, "sessions")
	w, err := e.sessions.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch sessions: %w", err)
	}
	defer w.Stop()
	check := time.NewTicker(watchCheck)
	defer check.Stop()
	var initial []sessionChange
	current := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-check.C:
			if !current {
				continue
			}
			if err := guard.check(ctx); err != nil {
				return err
			}
		case u, ok := <-w.Updates():
			if !ok {
				return errors.New("watch sessions: updates ended")
			}
			if u == nil { // the end of the initial values
				guard.loaded()
				current = true
				e.reset(epoch, initial)
				initial = nil
				continue
			}
			guard.saw(u.Revision())
			if u.Operation() != jetstream.KeyValuePut {
				continue // removed after the retention: nothing a party acts on
			}
			var sess workgroups.Session
			if err := json.Unmarshal(u.Value(), &sess); err != nil {
				e.log.Warn("unreadable session record", "key", u.Key(), "err", err)
				continue
			}
			c := sessionChange{rev: u.Revision(), sess: sess}
			if !current {
				initial = append(initial, c)
				continue
			}
			e.add(c)
		}
	}
}

// reset starts over from the bucket's contents: each session's latest change.
func (e *sessionEvents) reset(epoch string, initial []sessionChange) {
	slices.SortFunc(initial, func(a, b sessionChange) int { return compareRev(a.rev, b.rev) })
	e.mu.Lock()
	defer e.mu.Unlock()
	e.epoch, e.current = epoch, true
	e.changes = e.changes[:0]
	e.dropped = map[spiffeid.ID]uint64{}
	for _, c := range initial {
		e.keep(c)
	}
	e.broadcast()
}

func (e *sessionEvents) add(c sessionChange) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.keep(c)
	e.broadcast()
}

// keep appends c, dropping the oldest change beyond the bound. e.mu is held.
func (e *sessionEvents) keep(c sessionChange) {
	if len(e.changes) == sessionEventsKept {
		old := e.changes[0]
		for _, p := range []spiffeid.ID{old.sess.Consumer, old.sess.Provider} {
			e.dropped[p] = max(e.dropped[p], old.rev)
		}
		e.changes = slices.Delete(e.changes, 0, 1)
	}
	e.changes = append(e.changes, c)
}

func (e *sessionEvents) broadcast() {
	close(e.changed)
	e.changed = make(chan struct{})
}

func compareRev(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func party(id spiffeid.ID, s workgroups.Session) bool { return s.Consumer == id || s.Provider == id }

// since answers id's feed after cursor of epoch, and returns a channel closed at the next change of any
// session.
func (e *sessionEvents) since(id spiffeid.ID, epoch string, after uint64) (api.SessionEvents, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.current {
		// Not known yet (starting, or watching again): nothing to tell so far.
		return api.SessionEvents{Epoch: epoch, Cursor: after, Events: []api.SessionEvent{}}, e.changed
	}
	out := api.SessionEvents{Epoch: e.epoch, Cursor: after, Events: []api.SessionEvent{}}
	if epoch != e.epoch || after < e.dropped[id] {
		// Continue from id's latest change: everything after it is kept, or counted in dropped.
		out.Resync, out.Cursor = true, e.dropped[id]
		for _, c := range e.changes {
			if party(id, c.sess) {
				out.Cursor = c.rev
			}
		}
		return out, e.changed
	}
	i, _ := slices.BinarySearchFunc(e.changes, after+1, func(c sessionChange, rev uint64) int { return compareRev(c.rev, rev) })
	for _, c := range e.changes[i:] {
		if !party(id, c.sess) {
			continue
		}
		out.Events = append(out.Events, api.SessionEvent{Cursor: c.rev, Session: c.sess})
		out.Cursor = c.rev
		if len(out.Events) == maxSessionEventsPage {
			break
		}
	}
	return out, e.changed
}

// open counts a feed of id, unless it has as many open as it may; release ends it.
func (e *sessionEvents) open(id spiffeid.ID) (release func(), ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.feeds[id] >= maxFeedsPerIdentity {
		return nil, false
	}
	e.feeds[id]++
	return func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.feeds[id]--; e.feeds[id] == 0 {
			delete(e.feeds, id)
		}
	}, true
}

// serveSessionEvents answers the caller's feed: at once if one of its sessions changed after its cursor (or it
// must resync), otherwise as soon as one does, or empty after the wait.
func (s *Server) serveSessionEvents(w http.ResponseWriter, r *http.Request) {
	c := r.Context().Value(callerKey{}).(caller)
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		var err error
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			s.fail(w, r, failf(http.StatusBadRequest, api.CodeBadRequest, "after must be a cursor the feed answered (a whole number)"))
			return
		}
	}
	wait := time.Duration(0)
	if v := q.Get("wait"); v != "" {
		var err error
		if wait, err = time.ParseDuration(v); err != nil || wait < 0 {
			s.fail(w, r, failf(http.StatusBadRequest, api.CodeBadRequest, "wait must be a duration such as 15s"))
			return
		}
	}
	wait = min(wait, maxSessionEventsWait)
	release, ok := s.events.open(c.id)
	if !ok {
		s.fail(w, r, &fault{status: http.StatusTooManyRequests, code: api.CodeTooManyFeeds, retryAfter: 5 * time.Second,
			message: fmt.Sprintf("%s follows the session event feed %d times at once already, the most one identity may: stop an agent or a loop of it that no longer needs the feed", c.id, maxFeedsPerIdentity)})
		return
	}
	defer release()
	epoch := q.Get("epoch")
	page, changed := s.events.since(c.id, epoch, after)
	if !page.Resync && len(page.Events) == 0 && wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
	waiting:
		for {
			select {
			case <-changed:
				page, changed = s.events.since(c.id, epoch, after)
				if page.Resync || len(page.Events) > 0 {
					break waiting
				}
			case <-t.C:
				break waiting
			case <-r.Context().Done():
				return
			}
		}
	}
	reply(w, http.StatusOK, page)
}
