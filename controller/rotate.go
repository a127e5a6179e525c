package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/pki"
)

// Rotation of the platform administrator is three steps, each safe to repeat (api.PathAdminRotate):
//
//  1. begin: the current administrator records the intent (the next name becomes Pending) and the new identity
//     is registered. A repeated begin returns the same pending name.
//  2. svid: the current administrator has an SVID signed for a CSR it made for the pending name; the key stays
//     with it. Repeating it signs another CSR for the same name.
//  3. commit: the new administrator, proving its SVID, becomes current, and every earlier one is revoked through
//     the ordinary revocation (circuits cut, the revocation feed carries its certificates). A repeated commit,
//     or the next start of the controller, finishes revocations a crash left undone.
//
// Until the commit the old administrator stays valid, so no lost answer can lock the platform out; after it,
// exactly one administrator of the succession is valid.

// beginRotation records the rotation's intent and registers its new administrator.
func (s *Server) beginRotation(ctx context.Context, c caller) (api.RotateAdminResponse, error) {
	st, err := s.currentSuccession(ctx)
	if err != nil {
		return api.RotateAdminResponse{}, err
	}
	switch c.id.String() {
	case st.Current:
	case st.Pending:
		return api.RotateAdminResponse{}, failf(http.StatusConflict, api.CodeRotationPending,
			"%s is the new administrator of a rotation not yet committed: commit it (umbra admin rotate with this identity does)", c.id)
	default:
		return api.RotateAdminResponse{}, notCurrentAdmin(c.id)
	}
	if st.Pending == "" {
		st, err = s.ids.admins.update(ctx, successionKey, func(st *adminSuccession) error {
			if st.Current != c.id.String() {
				return failf(http.StatusConflict, api.CodeConflict, "the platform administrator changed meanwhile; rotate with the current one")
			}
			if st.Pending != "" {
				return nil // a concurrent begin got there first: share its rotation
			}
			next, n, err := s.nextAdmin(ctx, st.Generation)
			st.Pending, st.Generation = next.String(), n
			return err
		})
		if err != nil {
			return api.RotateAdminResponse{}, asFault(err)
		}
	}
	if err := s.platform.failAt("begin"); err != nil {
		return api.RotateAdminResponse{}, internal(err)
	}
	pending, err := spiffeid.FromString(st.Pending)
	if err != nil {
		return api.RotateAdminResponse{}, internal(err)
	}
	switch rec, _, err := s.ids.get(ctx, pending); {
	case errors.Is(err, errNoIdentity):
		if _, err := s.registerIdentity(ctx, pending, api.PlatformAdminOrg, api.PlatformAdminKind, path.Base(pending.Path()), true, c.id); err != nil {
			var f *fault
			if !errors.As(err, &f) || f.code != api.CodeConflict { // a conflict is a concurrent begin registering it
				return api.RotateAdminResponse{}, err
			}
		}
	case err != nil:
		return api.RotateAdminResponse{}, internal(err)
	case rec.State == stateRevoked:
		return api.RotateAdminResponse{}, internal(fmt.Errorf("pending platform administrator %s is revoked", pending))
	}
	s.log.Info("platform administrator rotation begun", "by", c.id.String(), "new", pending.String())
	return api.RotateAdminResponse{SPIFFEID: pending.String()}, nil
}

// signRotation signs the current administrator's CSR for the pending administrator of its rotation.
func (s *Server) signRotation(ctx context.Context, c caller, csr []byte) (api.Credentials, error) {
	st, err := s.currentSuccession(ctx)
	if err != nil {
		return api.Credentials{}, err
	}
	if c.id.String() != st.Current {
		return api.Credentials{}, notCurrentAdmin(c.id)
	}
	if st.Pending == "" {
		return api.Credentials{}, failf(http.StatusConflict, api.CodeConflict, "no rotation in progress: begin one first (POST %s)", api.PathAdminRotate)
	}
	pending, err := spiffeid.FromString(st.Pending)
	if err != nil {
		return api.Credentials{}, internal(err)
	}
	now := time.Now()
	leaf, err := s.ca.IssueSVID(csr, pending, s.cfg.SVIDTTL, now)
	if err != nil {
		if errors.Is(err, pki.ErrCSRMismatch) {
			return api.Credentials{}, &fault{status: http.StatusBadRequest, code: api.CodeCSRMismatch, message: fmt.Sprintf("the CSR must request exactly %s", pending), cause: err}
		}
		return api.Credentials{}, &fault{status: http.StatusBadRequest, code: api.CodeBadRequest, message: "the CSR is not valid", cause: err}
	}
	if _, err := s.ids.update(ctx, pending, func(r *identityRecord) error {
		if r.State == stateRevoked {
			return failf(http.StatusForbidden, api.CodeRevoked, "%s has been revoked", pending)
		}
		live := r.Certs[:0]
		for _, ce := range r.Certs {
			if ce.NotAfter.After(now) {
				live = append(live, ce)
			}
		}
		r.State, r.EnrolledAt = stateEnrolled, now.UTC()
		r.Certs = append(live, certEntry{Serial: serialOf(leaf), NotAfter: leaf.NotAfter})
		return nil
	}); err != nil {
		return api.Credentials{}, asFault(err)
	}
	return s.credentials(pending, leaf), nil
}

// commitRotation makes the caller, the pending administrator, current and revokes every earlier one.
func (s *Server) commitRotation(ctx context.Context, c caller) (api.CommitRotationResponse, error) {
	st, err := s.currentSuccession(ctx)
	if err != nil {
		return api.CommitRotationResponse{}, err
	}
	var previous string
	switch c.id.String() {
	case st.Current:
		// Committed already (the answer was lost, or revocations were cut short): finish what is left.
	case st.Pending:
		st, err = s.ids.admins.update(ctx, successionKey, func(st *adminSuccession) error {
			switch c.id.String() {
			case st.Current:
				return nil
			case st.Pending:
				previous = st.Current
				st.Current, st.Pending, st.ChangedAt, st.ChangedBy = st.Pending, "", time.Now().UTC(), c.id.String()
				return nil
			}
			return notCurrentAdmin(c.id)
		})
		if err != nil {
			return api.CommitRotationResponse{}, asFault(err)
		}
		if previous != "" {
			s.record(ctx, audit.Record{Kind: "admin.rotated", Actor: c.id.String(), Decision: "allow",
				Data: jsonRaw(map[string]string{"previous": previous, "current": c.id.String()})})
		}
	default:
		return api.CommitRotationResponse{}, failf(http.StatusForbidden, api.CodeForbidden,
			"%s is not the new administrator of a rotation in progress; only that one commits it", c.id)
	}
	s.noteCurrent(st)
	if err := s.platform.failAt("commit"); err != nil {
		return api.CommitRotationResponse{}, internal(err)
	}
	revoked, err := s.retireAdmins(ctx, st, c.id, "platform administrator rotated")
	if err != nil {
		return api.CommitRotationResponse{}, asFault(err)
	}
	s.log.Info("platform administrator rotated", "current", st.Current, "revoked", revoked)
	return api.CommitRotationResponse{SPIFFEID: st.Current, Revoked: append([]string{}, revoked...)}, nil
}

func (s *Server) currentSuccession(ctx context.Context) (adminSuccession, error) {
	st, found, err := s.succession(ctx)
	if err == nil && !found {
		err = errors.New("no platform administrator record")
	}
	if err != nil {
		return st, internal(err)
	}
	return st, nil
}

func notCurrentAdmin(id spiffeid.ID) error {
	return failf(http.StatusForbidden, api.CodeForbidden, "%s is not the current platform administrator; only the current one rotates", id)
}

// lifecycleRoutes serves re-enrollment and the platform administrator's rotation on the overlay API.
func (s *Server) lifecycleRoutes(mux *http.ServeMux) {
	platformOnly := func(op func(ctx context.Context, c caller, body []byte) (any, error)) http.HandlerFunc {
		return s.admin(func(ctx context.Context, c caller, body []byte) (any, error) {
			if !isPlatformAdmin(c) {
				return nil, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator rotates the platform administrator")
			}
			return op(ctx, c, body)
		})
	}
	mux.HandleFunc("POST "+api.PathAdminRotate, platformOnly(func(ctx context.Context, c caller, body []byte) (any, error) {
		if err := strict(body, &struct{}{}); err != nil {
			return nil, err
		}
		return s.beginRotation(ctx, c)
	}))
	mux.HandleFunc("POST "+api.PathAdminRotateSVID, platformOnly(func(ctx context.Context, c caller, body []byte) (any, error) {
		var req api.RenewRequest
		if err := strict(body, &req); err != nil {
			return nil, err
		}
		return s.signRotation(ctx, c, req.CSR)
	}))
	mux.HandleFunc("POST "+api.PathAdminRotateCommit, platformOnly(func(ctx context.Context, c caller, body []byte) (any, error) {
		if err := strict(body, &struct{}{}); err != nil {
			return nil, err
		}
		return s.commitRotation(ctx, c)
	}))
	mux.HandleFunc("POST "+api.PathReenroll, s.admin(func(ctx context.Context, c caller, body []byte) (any, error) {
		var req api.ReenrollRequest
		if err := strict(body, &req); err != nil {
			return nil, err
		}
		return s.reenroll(ctx, c, req)
	}))
}
