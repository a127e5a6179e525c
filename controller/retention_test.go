package controller

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// wantFault asserts err is a one-line fault with status and code whose message contains want.
func wantFault(t *testing.T, err error, status int, code, want string) {
	t.Helper()
	var f *fault
	if !errors.As(err, &f) {
		t.Fatalf("err %v, want %d %s", err, status, code)
	}
	if f.status != status || f.code != code || strings.Contains(f.message, "\n") || !strings.Contains(f.message, want) {
		t.Fatalf("answer %d %s %q, want %d %s in one line containing %q", f.status, f.code, f.message, status, code, want)
	}
}

// sessionMessages is how many messages the sessions bucket holds for id: revisions and markers alike.
func (w *govWorld) sessionMessages(ctx context.Context, id string) uint64 {
	w.t.Helper()
	subject := "$KV.umbra_sessions." + id
	info, err := w.s.gov.sessionStream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		w.t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

// strictAd publishes an advertisement with the world's terms that rejects proposals outside them.
func (w *govWorld) strictAd(ctx context.Context) workgroups.Advertisement {
	w.t.Helper()
	id, err := workgroups.NewAdvertisementID(rand.Reader)
	if err != nil {
		w.t.Fatal(err)
	}
	ad := w.ad
	ad.ID, ad.Terms.HoldForProvider = id, false
	if err := w.s.gov.ads.create(ctx, id.String(), ad); err != nil {
		w.t.Fatal(err)
	}
	return ad
}

// TestRetentionPurgesEndedSessions ends sessions every way one can end (closed, withdrawn, rejected by the
// provider), removes them after the retention, and checks that an open session stays, that nothing of a removed
// one is left in the bucket, and that show and audit of a removed session still answer: the one with a one-line
// 404 that says so, the other from the audit trail. A proposal rejected on the spot is never stored.
func TestRetentionPurgesEndedSessions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const retention = time.Hour
	w := openGovWorld(t, t.TempDir(), Config{ClosedSessionRetention: retention})

	closed := w.mustPropose(ctx, false)
	if _, err := w.s.closeByCaller(ctx, w.consumer, closed.ID.String(), "done"); err != nil {
		t.Fatal(err)
	}
	withdrawn := w.mustPropose(ctx, true)
	if _, err := w.s.withdrawSession(ctx, w.consumer, withdrawn.ID.String(), ""); err != nil {
		t.Fatal(err)
	}
	declined := w.mustPropose(ctx, true)
	if _, err := w.s.answerSession(ctx, w.provider, declined.ID.String(), false, "no"); err != nil {
		t.Fatal(err)
	}
	open := w.mustPropose(ctx, false)
	ended := map[string]workgroups.Session{}
	for _, sess := range []workgroups.Session{closed, withdrawn, declined} {
		stored, _, err := w.s.gov.sessions.get(ctx, sess.ID.String())
		if err != nil {
			t.Fatal(err)
		}
		ended[sess.ID.String()] = stored
	}

	// Within the retention nothing goes.
	if n, err := w.s.purgeEndedSessions(ctx, time.Now().Add(retention-time.Minute)); err != nil || n != 0 {
		t.Fatalf("within the retention: %d removed, err %v; want none", n, err)
	}
	n, err := w.s.purgeEndedSessions(ctx, time.Now().Add(retention+time.Minute))
	if err != nil || n != len(ended) {
		t.Fatalf("after the retention: %d removed, err %v; want %d", n, err, len(ended))
	}
	for id := range ended {
		if _, _, err := w.s.gov.sessions.get(ctx, id); !errors.Is(err, errNotFound) {
			t.Fatalf("session %s after the purge: err %v, want not found", id, err)
		}
		if m := w.sessionMessages(ctx, id); m != 0 {
			t.Fatalf("session %s: %d messages left in the bucket, want none (no revision, no marker)", id, m)
		}
	}
	if _, _, err := w.s.gov.sessions.get(ctx, open.ID.String()); err != nil {
		t.Fatalf("the open session was touched: %v", err)
	}

	// show: a one-line 404 naming the retention and the way to the history; to anyone else, no such session.
	stranger := caller{id: spiffeid.RequireFromSegments(worldTD, "acme", "agent", "stranger"), rec: identityRecord{Org: "acme", Kind: "agent"}}
	for id, was := range ended {
		_, err := w.s.sessionFor(ctx, w.provider, id)
		wantFault(t, err, http.StatusNotFound, api.CodeSessionPurged, "purged after the retention")
		wantFault(t, err, http.StatusNotFound, api.CodeSessionPurged, "umbra audit session "+id)
		_, err = w.s.sessionFor(ctx, stranger, id)
		wantFault(t, err, http.StatusNotFound, api.CodeNotFound, "no session "+id)
		_, err = w.s.auditableSession(ctx, stranger, id)
		wantFault(t, err, http.StatusNotFound, api.CodeNotFound, "no session "+id)

		// audit session: rebuilt from the trail, as it was stored.
		got, err := w.s.auditableSession(ctx, w.consumer, id)
		if err != nil {
			t.Fatalf("audit of removed session %s: %v", id, err)
		}
		if got.State != was.State || got.CloseReason != was.CloseReason || got.Consumer != was.Consumer ||
			got.Provider != was.Provider || got.Workgroup != was.Workgroup || got.Advertisement != was.Advertisement ||
			len(got.History) != len(was.History) {
			t.Fatalf("session %s rebuilt from the audit trail:\n%+v\nwas stored as\n%+v", id, got, was)
		}
		for i, tr := range was.History {
			g := got.History[i]
			if g.From != tr.From || g.To != tr.To || g.Actor != tr.Actor || !g.At.Equal(tr.At) || g.Reason != tr.Reason {
				t.Fatalf("session %s transition %d rebuilt as %+v, was %+v", id, i, g, tr)
			}
		}
		rep, err := w.s.sessionAudit(ctx, got)
		if err != nil || len(rep.Records) < len(was.History) {
			t.Fatalf("audit of removed session %s: %d records, err %v", id, len(rep.Records), err)
		}
	}
	// An unknown session is no session, for its would-be parties too.
	unknown, err := workgroups.NewSessionID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.s.auditableSession(ctx, w.consumer, unknown.String())
	wantFault(t, err, http.StatusNotFound, api.CodeNotFound, "no session")

	// Rejected on the spot: answered, recorded, not stored.
	strict := w.strictAd(ctx)
	resp, err := w.s.propose(ctx, w.consumer, api.ProposeRequest{Advertisement: strict.ID.String(), Proposal: workgroups.Proposal{MaxMessages: 100}})
	if err != nil || resp.Session.State != workgroups.StateRejected || resp.Reason == "" {
		t.Fatalf("proposal outside strict terms: %+v, %v; want rejected with the reason", resp, err)
	}
	rid := resp.Session.ID.String()
	if m := w.sessionMessages(ctx, rid); m != 0 {
		t.Fatalf("a proposal rejected on the spot left %d messages in the sessions bucket", m)
	}
	_, err = w.s.sessionFor(ctx, w.consumer, rid)
	wantFault(t, err, http.StatusNotFound, api.CodeSessionPurged, "rejected when proposed")
	got, err := w.s.auditableSession(ctx, w.consumer, rid)
	if err != nil || got.State != workgroups.StateRejected || len(got.History) != 2 {
		t.Fatalf("audit of a proposal rejected on the spot: %+v, %v", got, err)
	}
}

// TestRetentionLoopRemovesEndedSessions runs the controller's retention loop with a short retention: an ended
// session leaves the table once the retention has passed, and the loop stops with its context.
func TestRetentionLoopRemovesEndedSessions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const retention = 300 * time.Millisecond
	w := openGovWorld(t, t.TempDir(), Config{ClosedSessionRetention: retention})
	lctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.s.purgeEndedSessionsEvery(lctx)
	}()
	open := w.mustPropose(ctx, false)
	sess := w.mustPropose(ctx, false)
	endedAt := time.Now()
	if _, err := w.s.closeByCaller(ctx, w.consumer, sess.ID.String(), "done"); err != nil {
		t.Fatal(err)
	}
	for {
		_, _, err := w.s.gov.sessions.get(ctx, sess.ID.String())
		if errors.Is(err, errNotFound) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ctx.Err() != nil || time.Since(endedAt) > 30*time.Second {
			t.Fatal("the retention loop did not remove an ended session within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if gone := time.Since(endedAt); gone < retention {
		t.Fatalf("session removed %v after it ended, before the retention of %v", gone, retention)
	}
	if _, _, err := w.s.gov.sessions.get(ctx, open.ID.String()); err != nil {
		t.Fatalf("the open session was removed: %v", err)
	}
	stop()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the retention loop did not stop with its context")
	}
}

// TestWithdrawHeldProposal: only the consumer withdraws its held proposal; that frees its pending place, is
// recorded, and a second withdrawal, or one of an accepted session, is answered with why not.
func TestWithdrawHeldProposal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := openGovWorld(t, t.TempDir(), Config{MaxPendingProposals: 1})
	held := w.mustPropose(ctx, true)
	_, err := w.propose(ctx, true)
	refusedWith(t, err, api.CodeTooManyProposals)

	id := held.ID.String()
	_, err = w.s.withdrawSession(ctx, w.provider, id, "")
	wantFault(t, err, http.StatusForbidden, api.CodeForbidden, "only the consumer that proposed session "+id)
	stranger := caller{id: spiffeid.RequireFromSegments(worldTD, "acme", "agent", "stranger"), rec: identityRecord{Org: "acme", Kind: "agent"}}
	_, err = w.s.withdrawSession(ctx, stranger, id, "")
	wantFault(t, err, http.StatusNotFound, api.CodeNotFound, "no session "+id)

	sess, err := w.s.withdrawSession(ctx, w.consumer, id, "found another seller")
	if err != nil {
		t.Fatal(err)
	}
	last := sess.History[len(sess.History)-1]
	if sess.State != workgroups.StateRejected || last.Actor != worldConsumer || last.Reason != withdrawnReason+": found another seller" {
		t.Fatalf("withdrawn session in state %s, last transition %+v", sess.State, last)
	}
	// Its pending place is free again.
	w.mustPropose(ctx, true)

	_, err = w.s.withdrawSession(ctx, w.consumer, id, "")
	wantFault(t, err, http.StatusConflict, api.CodeConflict, "session "+id+" was already withdrawn at ")
	accepted := w.mustPropose(ctx, false)
	_, err = w.s.withdrawSession(ctx, w.consumer, accepted.ID.String(), "")
	wantFault(t, err, http.StatusConflict, api.CodeConflict, "is accepted, not a proposal awaiting its provider")

	// The withdrawal is in the session's audit trail, as the consumer's.
	recs, err := w.s.gov.audit.Session(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range recs {
		if r.Kind == "session.transition" && r.Actor == worldConsumer.String() && r.Decision == audit.DecisionAllow &&
			strings.HasPrefix(r.Reason, withdrawnReason) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no audit record of the withdrawal among %d records of the session", len(recs))
	}
}

// TestRetentionKeepsTheNewestEndedPerConsumer: within the retention, a consumer keeps only its newest ended
// sessions; the older ones go, its open sessions stay.
func TestRetentionKeepsTheNewestEndedPerConsumer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := openGovWorld(t, t.TempDir(), Config{})
	w.s.gov.keepEnded = 2
	var ended []workgroups.Session
	for range 4 {
		sess := w.mustPropose(ctx, false)
		if _, err := w.s.closeByCaller(ctx, w.consumer, sess.ID.String(), "done"); err != nil {
			t.Fatal(err)
		}
		ended = append(ended, sess)
	}
	open := w.mustPropose(ctx, false)
	n, err := w.s.purgeEndedSessions(ctx, time.Now())
	if err != nil || n != 2 {
		t.Fatalf("%d removed, err %v; want the 2 oldest of 4 ended sessions", n, err)
	}
	for i, sess := range append(ended, open) {
		_, _, err := w.s.gov.sessions.get(ctx, sess.ID.String())
		if gone := errors.Is(err, errNotFound); gone != (i < 2) {
			t.Fatalf("session %d (%s): removed %v, err %v; want only the two oldest ended ones removed", i, sess.ID, gone, err)
		}
	}
	_, err = w.s.sessionFor(ctx, w.consumer, ended[0].ID.String())
	wantFault(t, err, http.StatusNotFound, api.CodeSessionPurged, "the newest 2 per consumer")
}
