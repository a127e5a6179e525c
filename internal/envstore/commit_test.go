package envstore

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestGroupCommitKeepsCountsExact has many writers append at once, two per session and sessions over their limit:
// appends are committed in batches, and every session still holds exactly its limit, each id once.
func TestGroupCommitKeepsCountsExact(t *testing.T) {
	ctx := testContext(t)
	s := newStore(t, Options{})
	s.commit.atomic = true // as on a replicated stream: the batch path is what is tested here
	const sessions, writers, each, limit = 16, 2, 20, 30
	var wg sync.WaitGroup
	var mu sync.Mutex
	stored := map[string]int{}
	for i := range sessions * writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			session := fmt.Sprintf("s%d", i%sessions)
			for j := range each {
				app, err := s.Append(ctx, Envelope{ID: fmt.Sprintf("w%d-%d", i, j), Session: session, To: recipientA, Data: []byte("x")}, limit)
				switch {
				case err == ErrLimit:
				case err != nil:
					t.Error(err)
					return
				case app.Duplicate:
					t.Errorf("a fresh id answered as a duplicate: %+v", app)
				default:
					mu.Lock()
					stored[session]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	for i := range sessions {
		session := fmt.Sprintf("s%d", i)
		msgs, err := s.All(ctx, session)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != limit || stored[session] != limit {
			t.Fatalf("session %s holds %d envelopes, %d appends succeeded; want %d", session, len(msgs), stored[session], limit)
		}
		for k, m := range msgs {
			if got := m.Meta; got != nil {
				t.Fatalf("unexpected meta %v", got)
			}
			raw, err := s.stream.GetMsg(ctx, m.StreamSeq)
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := strconv.Atoi(raw.Header.Get(hdrCount)); n != k+1 {
				t.Fatalf("session %s envelope %d records count %d", session, k+1, n)
			}
		}
	}
	s.commit.mu.Lock()
	batches, batched := s.commit.batches, s.commit.batched
	s.commit.mu.Unlock()
	t.Logf("%d envelopes stored in %d batches of more than one (%d envelopes)", sessions*limit, batches, batched)
	if batches == 0 {
		t.Error("no batch of more than one envelope: appends were not committed together")
	}
}

// TestGroupCommitBatchRefused publishes a batch (large enough to be sent as one) in which one envelope's
// compare-and-set fails: nothing of the batch
// is stored by it, and each envelope is then answered alone, the others stored, the stale one refused.
func TestGroupCommitBatchRefused(t *testing.T) {
	ctx := testContext(t)
	s := newStore(t, Options{})
	s.commit.atomic = true
	if _, err := s.Append(ctx, Envelope{ID: "first", Session: "moved", To: recipientA, Data: []byte("x")}, 0); err != nil {
		t.Fatal(err)
	}
	var batch []*pendingPublish
	for _, session := range []string{"a", "moved", "b", "c", "d", "e", "f", "g", "h"} {
		msg := &nats.Msg{Subject: s.envelopeSubject(session, "id-"+session), Data: []byte("y"), Header: nats.Header{}}
		msg.Header.Set(hdrID, "id-"+session)
		msg.Header.Set(hdrCount, "1")
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0") // stale for "moved"
		msg.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, s.sessionWildcard(session))
		batch = append(batch, &pendingPublish{msg: msg, msgID: session + "/id-" + session, done: make(chan pubDone, 1), lead: make(chan struct{})})
	}
	before := streamMsgs(t, s)
	s.commit.publishBatch(context.Background(), batch)
	for i, p := range batch {
		r := <-p.done
		if i == 1 {
			if !wrongLastSeq(r.err) {
				t.Fatalf("the stale envelope: %+v, want a wrong-last-sequence refusal", r)
			}
			continue
		}
		if r.err != nil || r.seq == 0 {
			t.Fatalf("envelope %d: %+v, want stored alone after the batch was refused", i, r)
		}
	}
	if n := streamMsgs(t, s); n != before+uint64(len(batch)-1) {
		t.Fatalf("the stream holds %d messages, want %d", n, before+uint64(len(batch)-1))
	}
	if s.commit.batches != 0 || s.commit.refused != 1 {
		t.Fatalf("%d batches counted as committed, %d as refused; want 0 and 1", s.commit.batches, s.commit.refused)
	}
}

// losingJS loses the answer to the first `lose` publishes: each is published (when `send`) or dropped, and its
// future never answers, as when the stream leader it went to dies.
type losingJS struct {
	jetstream.JetStream
	send bool
	lose atomic.Int32
}

func (l *losingJS) PublishMsgAsync(msg *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if l.lose.Add(-1) < 0 {
		return l.JetStream.PublishMsgAsync(msg, opts...)
	}
	if l.send {
		if _, err := l.JetStream.PublishMsgAsync(msg, opts...); err != nil {
			return nil, err
		}
	}
	return lostAck{}, nil
}

// lostAck is a publish whose answer never comes.
type lostAck struct{ jetstream.PubAckFuture }

func (lostAck) Ok() <-chan *jetstream.PubAck { return nil }
func (lostAck) Err() <-chan error            { return nil }

// TestRepublishAfterLostAnswer loses the answer to an append's publish, once with the envelope stored and once
// with it never arriving (internal/envstore cluster_test.go kills a real stream leader). The store publishes it again after republishAfter, within the one Append: the envelope
// is stored exactly once and the append learns it stored it (not a duplicate), at the count it expected; the
// next append follows on.
func TestRepublishAfterLostAnswer(t *testing.T) {
	for _, stored := range []bool{true, false} {
		t.Run(fmt.Sprintf("stored=%v", stored), func(t *testing.T) {
			srv := testServer(t)
			ljs := &losingJS{JetStream: connect(t, srv), send: stored}
			s := open(t, ljs, Options{})
			// As on a replicated stream, where answers are lost; a single server answers a copy of a stored
			// message by refusing its compare-and-set, where a cluster's leader answers it as a duplicate.
			s.commit.replicated = true
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			ljs.lose.Store(1)
			app, err := s.Append(ctx, Envelope{ID: "e1", Session: "s1", To: recipientA, Data: []byte("one")}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if app.Duplicate || app.Count != 1 {
				t.Fatalf("first append: %+v, want count 1, not a duplicate", app)
			}
			if n := s.commit.republished.Load(); n != 1 {
				t.Fatalf("%d publishes published again, want 1", n)
			}
			app, err = s.Append(ctx, Envelope{ID: "e2", Session: "s1", To: recipientA, Data: []byte("two")}, 0)
			if err != nil || app.Duplicate || app.Count != 2 {
				t.Fatalf("second append: %+v, %v", app, err)
			}
			// A real retry of the first, by another append, is a duplicate at the original's position.
			dup, err := s.Append(ctx, Envelope{ID: "e1", Session: "s1", To: recipientA, Data: []byte("one")}, 0)
			if err != nil || !dup.Duplicate {
				t.Fatalf("retry of e1: %+v, %v", dup, err)
			}
			checkSession(t, s, "s1", map[string]bool{"e1": true, "e2": true})
		})
	}
}
