package controller

import (
	"context"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/relay"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/workgroups"
)

// The relay (package relay) names what it needs in interfaces of its own; these adapt the controller's stores.

var (
	_ relay.Sessions    = relaySessions{}
	_ relay.Envelopes   = relayEnvelopes{}
	_ relay.RecordGate  = (*envelopeRecorder)(nil)
	_ relay.Refusals    = relayRefusals{}
	_ relay.Memberships = relayMemberships{}
	_ relay.Identities  = relayIdentities{}
	_ relay.Authorizer  = (*orgPolicies)(nil)
	_ relay.Budget      = relayBudget{}
)

// relayLimits bound what the controller decodes of a stored frame, the same as the relay's.
var relayLimits = relay.FrameLimits

// newRelay wires a relay to this controller's stores.
func (s *Server) newRelay() (*relay.Relay, error) {
	return relay.New(relay.Config{
		Sessions:     relaySessions{s},
		Envelopes:    relayEnvelopes{s.gov.env},
		Records:      s.gov.rec,
		Refusals:     relayRefusals{s},
		Memberships:  relayMemberships{s.gov.wgCopy},
		Identities:   relayIdentities{s.ids},
		Authorizer:   s.gov.authz,
		Budget:       relayBudget{s},
		PeerIdentity: agentsdk.PeerIdentity,
		Controller:   s.controllerID,
		Observer:     s.observer(),
		Tracer:       s.tracer(),
		Logger:       s.log,
	})
}

// tracer is what the relay traces with: none unless Config names a provider.
func (s *Server) tracer() trace.Tracer {
	if s.cfg.TracerProvider == nil {
		return nil
	}
	return s.cfg.TracerProvider.Tracer("github.com/umbra-mesh/umbra/controller/relay")
}

// observer is what the relay tells what it did: the metrics, if any are kept.
func (s *Server) observer() relay.Observer {
	if s.metrics == nil {
		return nil
	}
	return s.metrics
}

// relaySessions is the session table, with the transitions the relay causes recorded in the audit trail.
type relaySessions struct{ s *Server }

func (r relaySessions) Get(ctx context.Context, id string) (workgroups.Session, error) {
	sess, _, err := r.s.gov.sessions.get(ctx, id)
	if errors.Is(err, errNotFound) {
		return sess, relay.ErrNoSession
	}
	return sess, err
}

func (r relaySessions) Activate(ctx context.Context, id string, sender spiffeid.ID, at time.Time) error {
	n := 0
	updated, err := r.s.gov.sessions.update(ctx, id, func(ss *workgroups.Session) error {
		n = len(ss.History)
		if ss.State != workgroups.StateAccepted {
			return nil
		}
		return ss.Activate(sender, at)
	})
	if err != nil {
		return err
	}
	r.s.recordTransitions(ctx, updated, n, "", nil)
	return nil
}

func (r relaySessions) Close(ctx context.Context, id string, reason workgroups.CloseReason, detail string) error {
	_, err := r.s.closeSession(ctx, id, r.s.controllerID, reason, detail)
	return err
}

func (r relaySessions) Lock(id string) func() { return r.s.gov.lockSession(id) }

// relayEnvelopes is the envelope store, its delivery cursors seen as relay.Cursor.
type relayEnvelopes struct{ *envstore.Store }

func (e relayEnvelopes) Receiver(ctx context.Context, session, to string) (relay.Cursor, error) {
	c, err := e.Store.Receiver(ctx, session, to)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Wait is wait, for the relay: it returns once the envelope at stream sequence seq has its audit record.
func (r *envelopeRecorder) Wait(ctx context.Context, seq uint64) error { return r.wait(ctx, seq) }

type relayRefusals struct{ s *Server }

func (r relayRefusals) Refuse(ctx context.Context, code string, rec audit.Record) {
	r.s.recordRefusal(ctx, code, rec)
}

type relayBudget struct{ s *Server }

func (r relayBudget) Admit(ctx context.Context, sender spiffeid.ID, session, id string) (string, string, bool) {
	err := r.s.admitAuditBytes(ctx, sender, "envelope.rejected", session, map[string]any{"envelope": id}, true)
	if err == nil {
		return "", "", false
	}
	var f *fault
	if errors.As(err, &f) && f.code == api.CodeAuditBudgetExhausted {
		return f.code, f.message, true
	}
	r.s.log.Error("reading an audit budget failed", "sender", sender.String(), "err", err)
	return api.CodeInternal, "internal error; send it again", true
}

type relayIdentities struct{ ids *identityStore }

func (r relayIdentities) Usable(ctx context.Context, id spiffeid.ID) error {
	rec, _, err := r.ids.get(ctx, id)
	if err != nil {
		return err
	}
	if rec.State == stateRevoked {
		return errors.New("revoked")
	}
	if rec.Suspended {
		return errors.New("suspended")
	}
	return nil
}

// relayMemberships gives the relay the members of workgroups from the governance's copy of them.
type relayMemberships struct {
	wgs *tableCopy[workgroups.Workgroup]
}

// Cached answers from the copy; it may lag the bucket by the time a watch update takes to arrive.
func (m relayMemberships) Cached(ctx context.Context, id spiffeid.ID) ([]workgroups.Membership, error) {
	mine, err := m.wgs.cachedIn(ctx, []string{id.String()})
	if err != nil {
		return nil, err
	}
	return workgroups.MembershipsOf(id, mine), nil
}

// Current answers with every write the bucket had stored when it was called.
func (m relayMemberships) Current(ctx context.Context, id spiffeid.ID) ([]workgroups.Membership, error) {
	mine, err := m.wgs.currentIn(ctx, []string{id.String()})
	if err != nil {
		return nil, err
	}
	return workgroups.MembershipsOf(id, mine), nil
}
