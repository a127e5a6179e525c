package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// A member must not be able to fill the store with sessions. Each identity may hold Config.MaxOpenSessions open
// sessions as consumer, of which Config.MaxPendingProposals may be awaiting their providers. The count is kept in
// JetStream, one record per identity (sessionQuota) beside its identity record, written by compare-and-set: it
// holds across restarts and under concurrent proposals, from this controller or another on the same store.
//
// The record lists the sessions it counts. A session leaves it when it closes or is rejected, and stops being
// pending when its provider accepts it. Those releases are best effort (the session's own state is the fact):
// when an identity reaches a cap, the listed sessions are read back and any that ended meanwhile are dropped
// before the proposal is refused.

// reservationGrace is how long a listed session that is not stored is taken to be a proposal still being
// created; after it, it is what a failed proposal left behind.
const reservationGrace = time.Minute

// quotaRecheck is how often, at most, an identity at a cap has its listed sessions read back, so that proposals
// over the cap cost one read, not one per listed session.
const quotaRecheck = 10 * time.Second

// sessionQuota is the open sessions of one identity as consumer.
type sessionQuota struct {
	Sessions []quotaEntry `json:"sessions"`
	// Checked is when the listed sessions were last read back.
	Checked time.Time `json:"checked,omitzero"`
}

// quotaEntry is one counted session.
type quotaEntry struct {
	Session string    `json:"session"`
	Pending bool      `json:"pending,omitempty"` // awaiting its provider
	At      time.Time `json:"at"`                // when it was counted
}

func (q sessionQuota) counts() (open, pending int) {
	for _, e := range q.Sessions {
		if e.Pending {
			pending++
		}
	}
	return len(q.Sessions), pending
}

// pendingState reports whether a session in state st is a proposal awaiting its provider.
func pendingState(st workgroups.State) bool {
	return st == workgroups.StateProposed || st == workgroups.StateHeld
}

// quotaKey is the lock and record key of id's quota.
func quotaLock(id spiffeid.ID) string { return "quota/" + idKey(id) }

// refusal is the fault for a proposal (pending or not) over a cap with q as it is, or nil.
func (s *Server) quotaRefusal(q sessionQuota, pending bool) *fault {
	open, held := q.counts()
	switch {
	case open >= s.cfg.MaxOpenSessions:
		return failf(http.StatusTooManyRequests, api.CodeTooManySessions,
			"you have %d open sessions, the most one identity may hold: close sessions you no longer need, or ask the operator to raise the limit (umbra controller --max-open-sessions)",
			open)
	case pending && held >= s.cfg.MaxPendingProposals:
		return failf(http.StatusTooManyRequests, api.CodeTooManyProposals,
			"you have %d proposals awaiting their providers, the most one identity may have: wait for the providers to answer them, or ask the operator to raise the limit (umbra controller --max-pending-proposals)",
			held)
	}
	return nil
}

// reserveSession counts sess, a new session that is not terminal, against its consumer's caps, or refuses it
// with HTTP 429 (and records the refusal through the refusal limiter). The caller stores sess next, and calls
// releaseSession if that fails.
func (s *Server) reserveSession(ctx context.Context, sess workgroups.Session, adID string) error {
	unlock := s.gov.lockSession(quotaLock(sess.Consumer))
	defer unlock()
	pending := pendingState(sess.State)
	key := idKey(sess.Consumer)
	for range 20 {
		q, rev, err := s.ids.quotas.get(ctx, key)
		if errors.Is(err, errNotFound) {
			q, rev, err = s.quotaFromSessions(ctx, sess.Consumer)
		}
		if err != nil {
			return internal(fmt.Errorf("session quota of %s: %w", sess.Consumer, err))
		}
		now := time.Now().UTC()
		changed := rev == 0 // a count rebuilt from the sessions is kept

		if s.quotaRefusal(q, pending) != nil && now.Sub(q.Checked) >= quotaRecheck {
			if err := s.recheckQuota(ctx, &q, now); err != nil {
				return internal(fmt.Errorf("session quota of %s: %w", sess.Consumer, err))
			}
			changed = true
		}
		refusal := s.quotaRefusal(q, pending)
		if refusal == nil {
			q.Sessions = append(q.Sessions, quotaEntry{Session: sess.ID.String(), Pending: pending, At: now})
			changed = true
		}
		if changed {
			if err := s.ids.quotas.put(ctx, key, q, rev); errors.Is(err, errConflict) {
				continue
			} else if err != nil {
				return internal(fmt.Errorf("session quota of %s: %w", sess.Consumer, err))
			}
		}
		if refusal != nil {
			open, held := q.counts()
			s.recordRefusal(ctx, refusal.code, audit.Record{Kind: "session.propose", Actor: sess.Consumer.String(),
				Decision: audit.DecisionDeny, Reason: refusal.code + ": " + refusal.message, Data: jsonRaw(map[string]any{
					"advertisement": adID, "open": open, "pending": held,
					"max_open_sessions": s.cfg.MaxOpenSessions, "max_pending_proposals": s.cfg.MaxPendingProposals,
				})})
			return refusal
		}
		return nil
	}
	return internal(fmt.Errorf("session quota of %s: too many concurrent updates", sess.Consumer))
}

// releaseSession brings sess's entry in its consumer's quota up to date with its state: gone once it is
// terminal, no longer pending once it was accepted. A failure is logged: the next recheck corrects it.
func (s *Server) releaseSession(ctx context.Context, sess workgroups.Session) {
	unlock := s.gov.lockSession(quotaLock(sess.Consumer))
	defer unlock()
	id := sess.ID.String()
	_, err := s.ids.quotas.update(ctx, idKey(sess.Consumer), func(q *sessionQuota) error {
		i := slices.IndexFunc(q.Sessions, func(e quotaEntry) bool { return e.Session == id })
		switch {
		case i < 0:
		case sess.State.Terminal():
			q.Sessions = slices.Delete(q.Sessions, i, i+1)
		default:
			q.Sessions[i].Pending = pendingState(sess.State)
		}
		return nil
	})
	if err != nil && !errors.Is(err, errNotFound) {
		s.log.Warn("updating a session quota failed", "identity", sess.Consumer.String(), "session", id, "err", err)
	}
}

// recheckQuota reads back every session q lists and drops those that ended, or that were never stored.
func (s *Server) recheckQuota(ctx context.Context, q *sessionQuota, now time.Time) error {
	kept := q.Sessions[:0]
	for _, e := range q.Sessions {
		sess, _, err := s.gov.sessions.get(ctx, e.Session)
		switch {
		case errors.Is(err, errNotFound):
			if now.Sub(e.At) < reservationGrace {
				kept = append(kept, e)
			}
		case err != nil:
			return err
		case !sess.State.Terminal():
			e.Pending = pendingState(sess.State)
			kept = append(kept, e)
		}
	}
	q.Sessions, q.Checked = kept, now
	return nil
}

// quotaFromSessions builds the quota of an identity that has none yet (one whose sessions predate quotas) from
// the stored sessions.
func (s *Server) quotaFromSessions(ctx context.Context, id spiffeid.ID) (sessionQuota, uint64, error) {
	all, err := s.gov.sessions.all(ctx)
	if err != nil {
		return sessionQuota{}, 0, err
	}
	q := sessionQuota{Checked: time.Now().UTC()}
	for _, sess := range all {
		if sess.Consumer == id && !sess.State.Terminal() {
			q.Sessions = append(q.Sessions, quotaEntry{Session: sess.ID.String(), Pending: pendingState(sess.State), At: sess.History[0].At})
		}
	}
	return q, 0, nil
}
