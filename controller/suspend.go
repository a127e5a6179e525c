package controller

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// Suspension is the kill switch: a revocation that can be undone. It takes the same path as a revocation, so
// it reaches the same places as fast: the record is marked first (the API, the relay and the gateways' lookups
// refuse the identity from that instant), then the overlay identity is disabled and its live circuits are torn
// down, its open sessions are closed (not paused: a session's contract runs on the clock, so a paused session
// would either expire while paused or outlive its terms) and its certificates go out on the revocation feed as
// suspended, so every host refuses them in its handshakes within about a second. Nothing else is touched: the
// certificates stay valid, and grants and memberships stay as they are, so resuming (the record unmarked, the
// overlay identity enabled, the feed naming the certificates as resumed) lets the identity connect again with
// the identity file it holds, without re-enrollment, as long as its SVID has not expired meanwhile.

func (s *Server) suspendRoutes(mux *http.ServeMux) {
	for _, suspend := range []bool{true, false} {
		path, verb := api.PathSuspend, "suspend"
		if !suspend {
			path, verb = api.PathResume, "resume"
		}
		mux.HandleFunc("POST "+path, s.admin(func(ctx context.Context, c caller, body []byte) (any, error) {
			var req api.SuspendRequest
			if err := strict(body, &req); err != nil {
				return nil, err
			}
			id, err := s.suspendTarget(ctx, c, verb, req)
			if err != nil {
				return nil, err
			}
			if suspend {
				return s.suspend(ctx, c.id, id, req.Reason)
			}
			return s.resume(ctx, c.id, id, req.Reason)
		}))
	}
}

// suspendTarget checks a suspend or resume request: a SPIFFE ID, a reason, and an identity the caller may
// suspend (the platform administrator any, an organisation administrator those of its organisation but gateways).
func (s *Server) suspendTarget(ctx context.Context, c caller, verb string, req api.SuspendRequest) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(req.SPIFFEID)
	if err != nil {
		return id, failf(http.StatusBadRequest, api.CodeBadRequest, "%q is not a SPIFFE ID: %v", req.SPIFFEID, err)
	}
	if strings.TrimSpace(req.Reason) == "" {
		return id, failf(http.StatusBadRequest, api.CodeBadRequest, "give the reason to %s %s (--reason): it goes into the audit trail", verb, id)
	}
	if len(req.Reason) > 500 {
		return id, failf(http.StatusBadRequest, api.CodeBadRequest, "the reason is %d bytes long; keep it under 500", len(req.Reason))
	}
	if !isPlatformAdmin(c) {
		rec, _, err := s.ids.get(ctx, id)
		if err != nil || rec.Org != c.rec.Org {
			// Another organisation's identity is answered as one that does not exist.
			return id, failf(http.StatusNotFound, api.CodeNotFound, "no identity %s in organisation %s", id, c.rec.Org)
		}
		if rec.Kind == api.GatewayKind {
			return id, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator suspends or resumes gateway identities")
		}
	}
	if id == c.id {
		return id, failf(http.StatusBadRequest, api.CodeBadRequest, "an identity cannot %s itself", verb)
	}
	if id == s.controllerID {
		return id, failf(http.StatusBadRequest, api.CodeBadRequest, "the controller's own identity cannot be suspended")
	}
	return id, nil
}

// suspend marks id suspended, cuts it from the overlay, closes its open sessions and records why. Suspending a
// suspended identity again cuts whatever it still holds and records nothing new.
func (s *Server) suspend(ctx context.Context, actor, id spiffeid.ID, reason string) (api.SuspendResponse, error) {
	defer s.changing(id)()
	first := false
	rec, err := s.ids.update(ctx, id, func(r *identityRecord) error {
		if r.State == stateRevoked {
			return failf(http.StatusConflict, api.CodeRevoked, "%s has been revoked; a revoked identity is not suspended", id)
		}
		if first = !r.Suspended; first {
			r.Suspended, r.SuspendedAt, r.SuspendedBy, r.SuspendReason = true, time.Now().UTC(), actor.String(), reason
		}
		return nil
	})
	if err != nil {
		return api.SuspendResponse{}, asFault(err)
	}
	live := s.circuitsOf(rec.OverlayID)
	if rec.OverlayID != "" {
		if err := s.zc.SuspendIdentity(rec.OverlayID); err != nil {
			return api.SuspendResponse{}, internal(err)
		}
		s.closeCircuits(rec.OverlayID)
	}
	closed := s.closeSessionsWhere(ctx, workgroups.CloseIdentitySuspended, "identity "+id.String()+" suspended: "+reason,
		func(ss workgroups.Session) bool { return ss.Consumer == id || ss.Provider == id })
	out := api.SuspendResponse{SPIFFEID: id.String(), Suspended: true, CircuitsClosed: len(live), SessionsClosed: closed}
	if first {
		s.record(ctx, audit.Record{Kind: "identity.suspended", Actor: actor.String(), Decision: "allow", Reason: reason,
			Data: jsonRaw(map[string]any{"spiffe_id": id.String(), "circuits_closed": out.CircuitsClosed, "sessions_closed": closed})})
		s.log.Info("identity suspended", "spiffe_id", id.String(), "by", actor.String(), "reason", reason,
			"circuits_closed", out.CircuitsClosed, "sessions_closed", closed)
	}
	return out, nil
}

// resume lifts a suspension: the record first, then the overlay identity. Resuming an identity that is not
// suspended changes and records nothing.
func (s *Server) resume(ctx context.Context, actor, id spiffeid.ID, reason string) (api.SuspendResponse, error) {
	defer s.changing(id)()
	was := false
	rec, err := s.ids.update(ctx, id, func(r *identityRecord) error {
		if r.State == stateRevoked {
			return failf(http.StatusConflict, api.CodeRevoked, "%s has been revoked for good: create a new identity", id)
		}
		if was = r.Suspended; was {
			r.Suspended, r.SuspendedAt, r.SuspendedBy, r.SuspendReason = false, time.Time{}, "", ""
		}
		return nil
	})
	if err != nil {
		return api.SuspendResponse{}, asFault(err)
	}
	if rec.OverlayID != "" {
		if err := s.zc.Mgmt().EnableIdentity(rec.OverlayID); err != nil {
			return api.SuspendResponse{}, internal(err)
		}
	}
	if was {
		s.record(ctx, audit.Record{Kind: "identity.resumed", Actor: actor.String(), Decision: "allow", Reason: reason,
			Data: jsonRaw(map[string]any{"spiffe_id": id.String()})})
		s.log.Info("identity resumed", "spiffe_id", id.String(), "by", actor.String(), "reason", reason)
	}
	return api.SuspendResponse{SPIFFEID: id.String()}, nil
}
