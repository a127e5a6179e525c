package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/workgroups"
)

// Revoking or suspending an identity is two writes: its record (from that instant the API refuses it and hosts
// learn of it through the revocation feed), then the overlay (the identity disabled; in a cluster, when revoked,
// its tokens revoked and the identity deleted), after which its circuits and sessions are closed. A controller
// that dies between the two, or an overlay that fails the second, would leave an identity that every record
// refuses but the overlay still lets in: it could keep authenticating, dial every service a policy lets it dial
// and hold its terminators. So every identity record the identity watch delivers (at start all of them, then each
// change) is checked against the overlay, and one the overlay still admits although it is revoked or suspended is
// cut off (completeCut) once it has stayed so for a grace, the time the request that wrote it has to finish the
// job itself: cutGrace on a lone controller, whose own requests under way are known and waited for, and
// cutGraceCluster in a cluster, where the request may be under way at another member (a revocation there is
// several overlay writes through raft). A cut that fails is tried again, after a pause that doubles up to
// cutRetryMax.
const (
	cutGrace        = 5 * time.Second
	cutGraceCluster = 30 * time.Second
	cutRetryMax     = time.Minute
)

// overlayCuts are the identities found revoked or suspended in their records while the overlay still admitted
// them, with when to cut each off. The identity watch adds to it; keepCuts works through it.
type overlayCuts struct {
	mu    sync.Mutex
	due   map[spiffeid.ID]cutDue
	busy  map[spiffeid.ID]int // identities a revocation, suspension or resumption of this process is changing
	grace time.Duration       // 0: cutGrace or cutGraceCluster; a test sets another
}

type cutDue struct {
	at    time.Time
	pause time.Duration // the wait before the next attempt if this one fails
}

func newOverlayCuts() *overlayCuts {
	return &overlayCuts{due: map[spiffeid.ID]cutDue{}, busy: map[spiffeid.ID]int{}}
}

// sawIdentity checks a record the identity watch delivered: a revoked or suspended identity that the overlay
// still admits is due to be cut off after the grace, unless it is due already.
func (s *Server) sawIdentity(r identityRecord, now time.Time) {
	if r.OverlayID == "" || r.State != stateRevoked && !r.Suspended {
		return
	}
	admits, err := s.zc.Admits(r.OverlayID, r.State == stateRevoked)
	if err != nil {
		s.log.Warn("checking a revoked or suspended identity in the overlay failed; checking again", "spiffe_id", r.SPIFFEID, "err", err)
		admits = true // completeCut reads it again
	}
	if !admits {
		return
	}
	id, err := spiffeid.FromString(r.SPIFFEID)
	if err != nil {
		s.log.Warn("an identity record with an unreadable SPIFFE ID", "spiffe_id", r.SPIFFEID, "err", err)
		return
	}
	s.cuts.mu.Lock()
	defer s.cuts.mu.Unlock()
	if _, ok := s.cuts.due[id]; !ok {
		s.cuts.due[id] = cutDue{at: now.Add(s.cutGrace()), pause: time.Second}
	}
}

// cutGrace is how long an identity found revoked or suspended while the overlay admits it is left to the request
// that is changing it; call it with s.cuts.mu held.
func (s *Server) cutGrace() time.Duration {
	switch {
	case s.cuts.grace > 0:
		return s.cuts.grace
	case s.zc.Clustered():
		return cutGraceCluster
	}
	return cutGrace
}

// changing marks id as being revoked, suspended or resumed by a request of this process, until the returned
// function is called: keepCuts leaves it to the request meanwhile.
func (s *Server) changing(id spiffeid.ID) (done func()) {
	s.cuts.mu.Lock()
	s.cuts.busy[id]++
	s.cuts.mu.Unlock()
	return func() {
		s.cuts.mu.Lock()
		defer s.cuts.mu.Unlock()
		if s.cuts.busy[id]--; s.cuts.busy[id] <= 0 {
			delete(s.cuts.busy, id)
		}
	}
}

// keepCuts cuts off, every watchCheck, the identities that are due, until ctx ends.
func (s *Server) keepCuts(ctx context.Context) {
	tick := time.NewTicker(watchCheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			s.cuts.mu.Lock()
			var ids []spiffeid.ID
			for id, d := range s.cuts.due {
				switch {
				case now.Before(d.at):
				case s.cuts.busy[id] > 0:
					s.cuts.due[id] = cutDue{at: now.Add(s.cutGrace()), pause: d.pause}
				default:
					ids = append(ids, id)
				}
			}
			s.cuts.mu.Unlock()
			for _, id := range ids {
				err := s.completeCut(ctx, id)
				if ctx.Err() != nil {
					return
				}
				s.cuts.mu.Lock()
				if d := s.cuts.due[id]; err != nil {
					s.log.Warn("cutting off a revoked or suspended identity that the overlay still admits failed; trying again",
						"spiffe_id", id.String(), "in", d.pause, "err", err)
					s.cuts.due[id] = cutDue{at: time.Now().Add(d.pause), pause: min(2*d.pause, cutRetryMax)}
				} else {
					delete(s.cuts.due, id)
				}
				s.cuts.mu.Unlock()
			}
		}
	}
}

// completeCut does what a revocation or suspension does after writing the record, for identity id, if its
// record (read afresh) still says so and the overlay still admits it.
func (s *Server) completeCut(ctx context.Context, id spiffeid.ID) error {
	rec, _, err := s.ids.get(ctx, id)
	switch {
	case errors.Is(err, errNoIdentity):
		return nil
	case err != nil:
		return err
	case rec.OverlayID == "" || rec.State != stateRevoked && !rec.Suspended:
		return nil
	}
	revoked := rec.State == stateRevoked
	if admits, err := s.zc.Admits(rec.OverlayID, revoked); err != nil || !admits {
		return err
	}
	s.log.Warn("completing a revocation or suspension that the overlay did not apply (the controller stopped or the overlay failed half way)",
		"spiffe_id", id.String(), "revoked", revoked, "suspended", rec.Suspended)
	if revoked {
		if err := s.zc.RevokeIdentity(rec.OverlayID); err != nil {
			return err
		}
		s.closeCircuits(rec.OverlayID)
		s.revokeSessions(ctx, id)
		return nil
	}
	if err := s.zc.SuspendIdentity(rec.OverlayID); err != nil {
		return err
	}
	// A resume may have been written between the read above and the disable: lift it again, as resume does. If
	// the record cannot be read again the identity stays disabled, and resuming it again lifts that.
	now, _, err := s.ids.get(ctx, id)
	if err != nil {
		return fmt.Errorf("read %s again after disabling it: %w", id, err)
	}
	if !now.Suspended && now.State != stateRevoked {
		return s.zc.Mgmt().EnableIdentity(rec.OverlayID)
	}
	s.closeCircuits(rec.OverlayID)
	s.closeSessionsWhere(ctx, workgroups.CloseIdentitySuspended, "identity "+id.String()+" suspended: "+rec.SuspendReason,
		func(ss workgroups.Session) bool { return ss.Consumer == id || ss.Provider == id })
	return nil
}
