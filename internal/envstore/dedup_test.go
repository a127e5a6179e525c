package envstore

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// shortWindow is the duplicate window of the tests that replay envelopes after it.
const shortWindow = time.Second

// waitOutWindow sleeps until JetStream can no longer remember message ids from before the call.
func waitOutWindow() { time.Sleep(shortWindow + 500*time.Millisecond) }

// windowForgot checks that the stream no longer de-duplicates the message id of session/id by itself, so that
// a test replaying it after the window exercises the store and not JetStream's memory. It writes one message
// on a session of its own.
func windowForgot(t *testing.T, s *Store, session, id string) {
	t.Helper()
	msg := legacyMsg(s, "probe", "probe", recipientA, 1)
	ack, err := s.js.PublishMsg(testContext(t), msg, withMsgID(session+"/"+id))
	if err != nil {
		t.Fatal(err)
	}
	if ack.Duplicate {
		t.Fatalf("JetStream still remembers %s/%s: the replay was not after the duplicate window", session, id)
	}
}

func TestDuplicateAfterWindow(t *testing.T) {
	srv := testServer(t)
	js := connect(t, srv)
	s := open(t, js, Options{DuplicateWindow: shortWindow})
	ctx := testContext(t)
	appendN(t, s, "late", 0, 3, func(int) string { return recipientA }, 3)
	orig, err := s.All(ctx, "late")
	if err != nil || len(orig) != 3 {
		t.Fatalf("All: %d envelopes, %v", len(orig), err)
	}
	waitOutWindow()

	fresh := open(t, js, Options{DuplicateWindow: shortWindow}) // another replica, nothing cached
	for _, st := range []*Store{s, fresh} {
		for i, m := range orig {
			// The session is at its limit (3): a replay of any stored id is still a duplicate, not ErrLimit.
			a, err := st.Append(ctx, Envelope{ID: m.ID, Session: "late", To: recipientA, Data: []byte("data-" + m.ID)}, 3)
			if err != nil || !a.Duplicate || a.StreamSeq != m.StreamSeq || a.Count != 3 {
				t.Fatalf("replay %d of %s: %+v, %v; want a duplicate of sequence %d at count 3", i, m.ID, a, err, m.StreamSeq)
			}
		}
	}
	if _, err := s.Append(ctx, Envelope{ID: "new", Session: "late", To: recipientA}, 3); !errors.Is(err, ErrLimit) {
		t.Fatalf("a new id at the limit: %v, want ErrLimit", err)
	}
	windowForgot(t, s, "late", "m00")
	checkSession(t, s, "late", map[string]bool{"m00": true, "m01": true, "m02": true})

	r, err := s.Receiver(ctx, "late", recipientA)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, m := range orig {
		ack(t, r, next(t, r, m.ID))
	}
	expectNothing(t, r)
}

func TestDuplicateAfterRestart(t *testing.T) {
	dir := t.TempDir()
	opts := Options{DuplicateWindow: shortWindow}
	toA := func(int) string { return recipientA }

	srv := startServer(t, dir)
	s := open(t, connect(t, srv), opts)
	appendN(t, s, "again", 0, 3, toA, 0)
	orig, err := s.All(testContext(t), "again")
	if err != nil || len(orig) != 3 {
		t.Fatalf("All: %d envelopes, %v", len(orig), err)
	}
	r, err := s.Receiver(testContext(t), "again", recipientA)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range orig {
		ack(t, r, next(t, r, m.ID))
	}
	srv.Shutdown()
	waitOutWindow()

	srv = startServer(t, dir)
	t.Cleanup(srv.Shutdown)
	s = open(t, connect(t, srv), opts)
	ctx := testContext(t)
	for _, m := range orig {
		a, err := s.Append(ctx, Envelope{ID: m.ID, Session: "again", To: recipientA, Data: []byte("data-" + m.ID)}, 0)
		if err != nil || !a.Duplicate || a.StreamSeq != m.StreamSeq || a.Count != 3 {
			t.Fatalf("replay of %s after restart: %+v, %v; want a duplicate of sequence %d at count 3", m.ID, a, err, m.StreamSeq)
		}
	}
	windowForgot(t, s, "again", "m01")
	appendN(t, s, "again", 3, 4, toA, 0)
	checkSession(t, s, "again", map[string]bool{"m00": true, "m01": true, "m02": true, "m03": true})

	r, err = s.Receiver(ctx, "again", recipientA)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ack(t, r, next(t, r, "m03"))
	expectNothing(t, r)
}

// TestDuplicateRace has two stores (as two controllers would) append the same ids at the same moment, within
// the duplicate window and after it: each id is stored once, and every other Append reports that original.
func TestDuplicateRace(t *testing.T) {
	const ids, writers = 12, 6
	srv := testServer(t)
	opts := Options{DuplicateWindow: shortWindow}
	stores := []*Store{open(t, connect(t, srv), opts), open(t, connect(t, srv), opts)}
	ctx := testContext(t)

	// race appends each id from all writers at once. With orig nil the ids are new and exactly one Append of
	// each stores it; otherwise every Append is a duplicate of the sequence orig holds for it.
	race := func(round string, orig map[string]uint64) map[string]uint64 {
		seqs := make(map[string]uint64)
		for i := range ids {
			id := fmt.Sprintf("e%02d", i)
			var (
				wg      sync.WaitGroup
				start   = make(chan struct{})
				results = make([]Appended, writers)
			)
			for w := range writers {
				wg.Go(func() {
					<-start
					e := Envelope{ID: id, Session: "dup-race", To: recipientA, Data: []byte("x")}
					a, err := stores[w%len(stores)].Append(ctx, e, 0)
					if err != nil {
						t.Errorf("%s: Append %s: %v", round, id, err)
					}
					results[w] = a
				})
			}
			close(start)
			wg.Wait()
			stored := 0
			for _, a := range results {
				if !a.Duplicate {
					stored++
				}
				if a.StreamSeq != results[0].StreamSeq {
					t.Errorf("%s: %s reported at sequences %d and %d", round, id, results[0].StreamSeq, a.StreamSeq)
				}
			}
			want := 1
			if orig != nil {
				want = 0
				if results[0].StreamSeq != orig[id] {
					t.Errorf("%s: %s reported at sequence %d, want %d (the original)", round, id, results[0].StreamSeq, orig[id])
				}
			}
			if stored != want {
				t.Errorf("%s: %s stored by %d of %d racing appends, want %d", round, id, stored, writers, want)
			}
			seqs[id] = results[0].StreamSeq
		}
		return seqs
	}

	orig := race("new ids", nil)
	waitOutWindow()
	windowForgot(t, stores[0], "dup-race", "e00")
	race("replays after the window", orig)
	stored := make(map[string]bool)
	for id := range orig {
		stored[id] = true
	}
	checkSession(t, stores[1], "dup-race", stored)
	if n := streamMsgs(t, stores[0]); n != ids+1 { // and the probe
		t.Fatalf("stream holds %d messages, want %d", n, ids+1)
	}
}
