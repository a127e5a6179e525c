package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// A session that ended (closed, expired, rejected or withdrawn) stays in the session table for
// Config.ClosedSessionRetention, so that its parties can still look it up and collect its envelopes; then a
// loop of every controller removes it, every revision at once, leaving no marker behind. Nothing is lost: each
// transition of a session is an audit record on the session's own subject of the audit trail, from which
// `umbra audit session` still answers, and `umbra session show` of a removed session answers 404 with code
// session_purged, saying so. The envelope stream keeps its own limits (docs/record-path.md).
//
// A proposal the controller rejects on the spot (outside the advertised terms, and not held for the provider)
// is not stored at all: its consumer has the answer in the propose reply, its transitions are in the audit
// trail, and nothing reads it later (it never counted against the caps, and the relay refuses any session that
// is not accepted).

const defaultClosedSessionRetention = 7 * 24 * time.Hour

// At the proposal rate one identity may churn (ratelimit.go), a week of ended sessions would be more than the
// sessions bucket holds (tableBytes). So of the sessions one consumer ended within the retention, only the
// newest endedPerConsumer stay; the loop removes the older ones as if their retention had passed.
const endedPerConsumer = 1000

// purgeInterval is how often the retention loop looks for ended sessions: a quarter of the retention, between
// 100 ms and a minute.
func purgeInterval(retention time.Duration) time.Duration {
	return min(max(retention/4, 100*time.Millisecond), time.Minute)
}

// purgeEndedSessionsEvery runs purgeEndedSessions every purgeInterval until ctx ends.
func (s *Server) purgeEndedSessionsEvery(ctx context.Context) {
	t := time.NewTicker(purgeInterval(s.cfg.ClosedSessionRetention))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n, err := s.purgeEndedSessions(ctx, now)
			if err != nil && ctx.Err() == nil {
				s.log.Warn("removing ended sessions failed", "removed", n, "err", err)
			} else if n > 0 {
				s.log.Info("ended sessions removed after the retention", "removed", n, "retention", s.cfg.ClosedSessionRetention.String())
			}
		}
	}
}

// purgeEndedSessions removes from the session table every session that ended more than the retention before
// now, and those of a consumer beyond its newest keep ended ones; it returns how many it removed. Several
// controllers may run it at once: removing twice is harmless.
func (s *Server) purgeEndedSessions(ctx context.Context, now time.Time) (int, error) {
	all, err := s.gov.sessions.all(ctx)
	if err != nil {
		return 0, fmt.Errorf("listing sessions: %w", err)
	}
	endedAt := func(sess workgroups.Session) time.Time { return sess.History[len(sess.History)-1].At }
	var due []workgroups.Session
	kept := map[spiffeid.ID][]workgroups.Session{} // ended within the retention, by consumer
	for _, sess := range all {
		switch {
		case !sess.State.Terminal() || len(sess.History) == 0:
		case now.Sub(endedAt(sess)) >= s.cfg.ClosedSessionRetention:
			due = append(due, sess)
		default:
			kept[sess.Consumer] = append(kept[sess.Consumer], sess)
		}
	}
	for _, ended := range kept {
		if len(ended) <= s.gov.keepEnded {
			continue
		}
		slices.SortFunc(ended, func(a, b workgroups.Session) int { return endedAt(b).Compare(endedAt(a)) })
		due = append(due, ended[s.gov.keepEnded:]...)
	}
	n := 0
	for _, sess := range due {
		// An ended session changes no more, so nothing can write it between the read above and the purge.
		if err := s.gov.sessionStream.Purge(ctx, jetstream.WithPurgeSubject("$KV.umbra_sessions."+sess.ID.String())); err != nil {
			return n, fmt.Errorf("removing session %s: %w", sess.ID, err)
		}
		n++
	}
	return n, nil
}

// transitionData is the Data of a session.transition audit record (recordTransitions).
type transitionData struct {
	From          workgroups.State           `json:"from"`
	To            workgroups.State           `json:"to"`
	At            time.Time                  `json:"at"`
	Consumer      spiffeid.ID                `json:"consumer"`
	Provider      spiffeid.ID                `json:"provider"`
	Advertisement workgroups.AdvertisementID `json:"advertisement"`
	Contract      workgroups.Contract        `json:"contract"`
	CloseReason   workgroups.CloseReason     `json:"close_reason"`
}

// sessionFromAudit rebuilds a session that is not in the session table from its transitions in the audit
// trail; false if the trail has none.
func sessionFromAudit(id workgroups.SessionID, recs []audit.Record) (workgroups.Session, bool) {
	sess := workgroups.Session{ID: id}
	for _, r := range recs {
		if r.Kind != "session.transition" {
			continue
		}
		var d transitionData
		if err := json.Unmarshal(r.Data, &d); err != nil {
			continue
		}
		actor, err := spiffeid.FromString(r.Actor)
		if err != nil {
			continue
		}
		wg, err := workgroups.ParseWorkgroupID(r.Workgroup)
		if err != nil {
			continue
		}
		sess.Advertisement, sess.Consumer, sess.Provider, sess.Workgroup = d.Advertisement, d.Consumer, d.Provider, wg
		sess.Contract, sess.State, sess.CloseReason = d.Contract, d.To, d.CloseReason
		if d.To == workgroups.StateAccepted {
			sess.AcceptedAt = d.At
		}
		sess.History = append(sess.History, workgroups.Transition{From: d.From, To: d.To, Actor: actor, At: d.At, Reason: r.Reason})
	}
	return sess, len(sess.History) > 0 && !sess.Consumer.IsZero() && !sess.Provider.IsZero()
}

// maySee tells whether c may know of sess: a party, an administrator of a party's organisation, or the
// platform administrator.
func maySee(c caller, sess workgroups.Session) bool {
	return sess.Consumer == c.id || sess.Provider == c.id || isPlatformAdmin(c) ||
		c.rec.Admin && (orgOf(sess.Consumer) == c.rec.Org || orgOf(sess.Provider) == c.rec.Org)
}

// endedSession answers for a session the session table does not hold: one the caller may see that the audit
// trail knows is returned, rebuilt from the trail, with a session_purged fault saying where its history is;
// anything else is "no session", as for one that never existed.
func (s *Server) endedSession(ctx context.Context, c caller, id workgroups.SessionID) (workgroups.Session, error) {
	none := failf(http.StatusNotFound, api.CodeNotFound, "no session %s", id)
	recs, err := s.gov.audit.Session(ctx, id.String())
	if err != nil {
		s.log.Warn("reading a session's audit records failed", "session", id.String(), "err", err)
		return workgroups.Session{}, none
	}
	sess, ok := sessionFromAudit(id, recs)
	if !ok || !sess.State.Terminal() || !maySee(c, sess) {
		return workgroups.Session{}, none
	}
	last := sess.History[len(sess.History)-1]
	how := string(sess.State)
	if sess.CloseReason != "" {
		how += " " + string(sess.CloseReason)
	}
	if sess.State == workgroups.StateRejected && len(sess.History) == 2 { // proposed, then rejected on the spot
		return sess, failf(http.StatusNotFound, api.CodeSessionPurged,
			"session %s was rejected when proposed (%s) and is not kept; its record: umbra audit session %s", id, last.Reason, id)
	}
	return sess, failf(http.StatusNotFound, api.CodeSessionPurged,
		"session %s ended (%s) at %s and was purged after the retention of ended sessions (%s, and the newest %d per consumer); its history: umbra audit session %s",
		id, how, last.At.UTC().Format(time.RFC3339), s.cfg.ClosedSessionRetention, s.gov.keepEnded, id)
}

// auditableSession is the session `umbra audit session` reconstructs: from the session table, or, once it was
// removed from there, from the audit trail.
func (s *Server) auditableSession(ctx context.Context, c caller, raw string) (workgroups.Session, error) {
	sess, err := s.sessionFor(ctx, c, raw)
	var f *fault
	if errors.As(err, &f) && f.code == api.CodeSessionPurged {
		return sess, nil
	}
	return sess, err
}
