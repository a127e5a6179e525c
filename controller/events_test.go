package controller

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

var worldStranger = spiffeid.RequireFromSegments(worldTD, "acme", "agent", "stranger")

// runEvents follows w's sessions bucket with a feed of w.s until the test ends or stop is called.
func runEvents(t *testing.T, w *govWorld) (stop func()) {
	t.Helper()
	w.s.events = newSessionEvents(w.s.gov.sessions, w.s.gov.sessionStream, w.s.log)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.s.events.run(ctx)
	}()
	stop = func() {
		cancel()
		wg.Wait()
	}
	t.Cleanup(stop)
	return stop
}

// longPoll asks w's feed over HTTP as id, waiting up to wait.
func longPoll(t *testing.T, s *Server, id spiffeid.ID, epoch string, after uint64, wait time.Duration) api.SessionEvents {
	t.Helper()
	q := "?epoch=" + epoch + "&after=" + strconv.FormatUint(after, 10) + "&wait=" + wait.String()
	ctx, cancel := context.WithTimeout(context.Background(), wait+10*time.Second)
	defer cancel()
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, api.PathSessionEvents+q, nil)
	r = r.WithContext(context.WithValue(r.Context(), callerKey{}, caller{id: id}))
	rec := httptest.NewRecorder()
	s.serveSessionEvents(rec, r)
	if rec.Code != http.StatusOK {
		t.Fatalf("feed of %s answered %d: %s", id, rec.Code, rec.Body)
	}
	var out api.SessionEvents
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// subscribe takes the first (resync) answer of id's feed, once the feed has read the store.
func subscribe(t *testing.T, s *Server, id spiffeid.ID) api.SessionEvents {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		page := longPoll(t, s, id, "", 0, 0)
		if page.Resync {
			return page
		}
		if time.Now().After(deadline) {
			t.Fatal("the feed never read the sessions bucket")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func wantEvent(t *testing.T, page api.SessionEvents, id workgroups.SessionID, state workgroups.State) {
	t.Helper()
	if page.Resync {
		t.Fatalf("answer is a resync, want the event of %s in state %s", id, state)
	}
	for _, e := range page.Events {
		if e.Session.ID == id && e.Session.State == state && e.Cursor == page.Cursor {
			return
		}
	}
	t.Fatalf("events %+v (cursor %d), want the last to be %s in state %s", page.Events, page.Cursor, id, state)
}

// TestSessionEventsReachPartiesOnly proposes, answers and closes sessions and checks that a waiting long poll of
// each party is answered with the change, and that an identity that is no party is told nothing, not even a
// cursor that moved.
func TestSessionEventsReachPartiesOnly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := openGovWorld(t, t.TempDir(), Config{})
	runEvents(t, w)
	prov, cons, stranger := subscribe(t, w.s, worldProvider), subscribe(t, w.s, worldConsumer), subscribe(t, w.s, worldStranger)

	// A long poll waiting when the proposal is held is answered with it.
	got := make(chan api.SessionEvents, 1)
	go func() { got <- longPoll(t, w.s, worldProvider, prov.Epoch, prov.Cursor, 15*time.Second) }()
	time.Sleep(100 * time.Millisecond)
	sess := w.mustPropose(ctx, true)
	page := <-got
	wantEvent(t, page, sess.ID, workgroups.StateHeld)
	prov.Cursor = page.Cursor

	if _, err := w.s.answerSession(ctx, w.provider, sess.ID.String(), true, "fine"); err != nil {
		t.Fatal(err)
	}
	wantEvent(t, longPoll(t, w.s, worldConsumer, cons.Epoch, cons.Cursor, 15*time.Second), sess.ID, workgroups.StateAccepted)
	if _, err := w.s.closeSession(ctx, sess.ID.String(), worldConsumer, workgroups.CloseByConsumer, ""); err != nil {
		t.Fatal(err)
	}
	page = longPoll(t, w.s, worldProvider, prov.Epoch, prov.Cursor, 15*time.Second)
	wantEvent(t, page, sess.ID, workgroups.StateClosed)

	// The stranger: nothing at once, nothing after waiting, and its cursor where it was.
	for _, wait := range []time.Duration{0, 300 * time.Millisecond} {
		page := longPoll(t, w.s, worldStranger, stranger.Epoch, stranger.Cursor, wait)
		if page.Resync || len(page.Events) != 0 || page.Cursor != stranger.Cursor {
			t.Fatalf("a non-party was told %+v, want no event and its own cursor %d", page, stranger.Cursor)
		}
	}
	if again := subscribe(t, w.s, worldStranger); again.Cursor != 0 || len(again.Events) != 0 {
		t.Fatalf("a non-party subscribing again was given %+v, want cursor 0 and no event", again)
	}
}

// TestSessionEventsSurviveRestartAndReplicas changes sessions through a second controller sharing the store,
// and while the feed is down between two runs on the same data directory: cursors given before stay valid
// and the changes arrive, without a resync.
func TestSessionEventsSurviveRestartAndReplicas(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	w := openGovWorld(t, dir, Config{})
	stop := runEvents(t, w)
	prov := subscribe(t, w.s, worldProvider)
	other := w.secondController(ctx, Config{})
	held := w.mustPropose(ctx, true)
	if _, err := other.answerSession(ctx, w.provider, held.ID.String(), true, "by the other replica"); err != nil {
		t.Fatal(err)
	}
	page := longPoll(t, w.s, worldProvider, prov.Epoch, prov.Cursor, 15*time.Second)
	wantEvent(t, page, held.ID, workgroups.StateAccepted)
	cursor, epoch := page.Cursor, page.Epoch

	stop()
	w.close()
	w = openGovWorld(t, dir, Config{})
	second := w.mustPropose(ctx, true) // while no feed runs
	runEvents(t, w)
	page = longPoll(t, w.s, worldProvider, epoch, cursor, 15*time.Second)
	if page.Epoch != epoch {
		t.Fatalf("epoch %q after a restart on the same store, want %q", page.Epoch, epoch)
	}
	wantEvent(t, page, second.ID, workgroups.StateHeld)
	for _, e := range page.Events {
		if e.Session.ID == held.ID {
			t.Fatalf("after the restart the feed repeated %s, seen before the cursor", held.ID)
		}
	}
	if bad := longPoll(t, w.s, worldProvider, "another-store", cursor, 0); !bad.Resync {
		t.Fatalf("a cursor of another store was answered %+v, want a resync", bad)
	}
}

// TestSessionEventsResyncAfterDrops fills the feed past what it keeps: a party whose changes were dropped after
// its cursor is told to resync; one whose changes are all kept is not.
func TestSessionEventsResyncAfterDrops(t *testing.T) {
	e := newSessionEvents(table[workgroups.Session]{}, nil, nil)
	e.reset("epoch", nil)
	other := spiffeid.RequireFromSegments(worldTD, "acme", "agent", "other")
	e.add(sessionChange{rev: 1, sess: workgroups.Session{Consumer: worldConsumer, Provider: worldProvider}})
	for i := range sessionEventsKept {
		e.add(sessionChange{rev: uint64(i + 2), sess: workgroups.Session{Consumer: other, Provider: worldProvider}})
	}
	if page, _ := e.since(worldConsumer, "epoch", 0); !page.Resync || page.Cursor != 1 {
		t.Fatalf("a party whose change was dropped was answered %+v, want a resync from cursor 1", page)
	}
	if page, _ := e.since(worldConsumer, "epoch", 1); page.Resync || len(page.Events) != 0 {
		t.Fatalf("a party past its dropped change was answered %+v, want nothing", page)
	}
	page, _ := e.since(other, "epoch", 0)
	if page.Resync || len(page.Events) != maxSessionEventsPage || page.Cursor != maxSessionEventsPage+1 {
		t.Fatalf("a party with all its changes kept: resync %v, %d events, cursor %d; want a full page to cursor %d",
			page.Resync, len(page.Events), page.Cursor, maxSessionEventsPage+1)
	}
}

// TestSessionEventsBoundFeedsPerIdentity opens as many feeds as one identity may: the next is refused with 429
// until one ends, and another identity is not affected.
func TestSessionEventsBoundFeedsPerIdentity(t *testing.T) {
	w := openGovWorld(t, t.TempDir(), Config{})
	runEvents(t, w)
	var releases []func()
	for range maxFeedsPerIdentity {
		release, ok := w.s.events.open(worldProvider)
		if !ok {
			t.Fatal("a feed within the bound was refused")
		}
		releases = append(releases, release)
	}
	r := httptest.NewRequest(http.MethodGet, api.PathSessionEvents+"?wait=1s", nil)
	r = r.WithContext(context.WithValue(r.Context(), callerKey{}, caller{id: worldProvider}))
	rec := httptest.NewRecorder()
	w.s.serveSessionEvents(rec, r)
	var e api.Error
	if err := json.Unmarshal(rec.Body.Bytes(), &e); rec.Code != http.StatusTooManyRequests || err != nil || e.Code != api.CodeTooManyFeeds {
		t.Fatalf("feed beyond the bound answered %d %s, want 429 %s", rec.Code, rec.Body, api.CodeTooManyFeeds)
	}
	if release, ok := w.s.events.open(worldConsumer); !ok {
		t.Fatal("another identity's feed was refused")
	} else {
		release()
	}
	releases[0]()
	if release, ok := w.s.events.open(worldProvider); !ok {
		t.Fatal("a feed after one ended was refused")
	} else {
		release()
	}
}
