package controller

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/console"
	"github.com/umbra-mesh/umbra/internal/enrolltoken"
	"github.com/umbra-mesh/umbra/internal/pki"
	"github.com/umbra-mesh/umbra/workgroups"
)

// fault is an error with what the remote caller may see: HTTP status, stable code and message. The cause
// stays in the server log.
type fault struct {
	status  int
	code    string
	message string
	cause   error
	// retryAfter, when set, is sent as the Retry-After header: when the refused call may succeed.
	retryAfter time.Duration
}

func (f *fault) Error() string {
	if f.cause != nil {
		return f.message + ": " + f.cause.Error()
	}
	return f.message
}

func (f *fault) Unwrap() error { return f.cause }

func failf(status int, code, format string, args ...any) *fault {
	return &fault{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

func internal(cause error) *fault {
	return &fault{status: http.StatusInternalServerError, code: api.CodeInternal, message: "internal error", cause: cause}
}

var segment = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
var serviceName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$`)

// workloadID builds spiffe://<td>/<org>/<kind>/<name>, checking each segment.
func workloadID(td spiffeid.TrustDomain, org, kind, name string) (spiffeid.ID, error) {
	for _, s := range []struct{ what, v string }{{"org", org}, {"kind", kind}, {"name", name}} {
		if workgroups.ValidateName(s.v) != nil {
			return spiffeid.ID{}, failf(http.StatusBadRequest, api.CodeBadRequest,
				"%s %q is not valid: use 1-63 lowercase letters, digits, '_' or '-', starting with a letter", s.what, s.v)
		}
	}
	id, err := spiffeid.FromSegments(td, org, kind, name)
	if err != nil {
		return spiffeid.ID{}, failf(http.StatusBadRequest, api.CodeBadRequest, "invalid SPIFFE ID: %v", err)
	}
	return id, nil
}

// createIdentity registers a workload on both layers and issues its enrollment token.
func (s *Server) createIdentity(ctx context.Context, actor spiffeid.ID, req api.CreateIdentityRequest) (api.CreateIdentityResponse, error) {
	var out api.CreateIdentityResponse
	if req.Org == api.PlatformAdminOrg {
		return out, failf(http.StatusBadRequest, api.CodeBadRequest, "org %q is reserved for the platform", req.Org)
	}
	id, err := workloadID(s.td, req.Org, req.Kind, req.Name)
	if err != nil {
		return out, err
	}
	// Kind names mean what they say in every SPIFFE ID, log line and audit record: "controller" only ever names
	// a controller, and "admin" names an administrator and nothing else.
	switch {
	case req.Kind == api.ControllerAPIKind:
		return out, failf(http.StatusBadRequest, api.CodeBadRequest, "kind %q is reserved for controllers; choose another kind", req.Kind)
	case req.Admin && req.Kind != api.PlatformAdminKind:
		return out, failf(http.StatusBadRequest, api.CodeBadRequest, "an administrator identity has kind %q", api.PlatformAdminKind)
	case !req.Admin && req.Kind == api.PlatformAdminKind:
		return out, failf(http.StatusBadRequest, api.CodeBadRequest, "kind %q is reserved for administrators; choose another kind", req.Kind)
	}
	ttl, err := parseTokenTTL(req.TokenTTL)
	if err != nil {
		return out, err
	}
	switch existing, _, err := s.ids.get(ctx, id); {
	case err == nil && existing.State == stateRevoked:
		return out, failf(http.StatusConflict, api.CodeConflict, "%s was revoked and cannot be created again", id)
	case err == nil:
		return out, failf(http.StatusConflict, api.CodeConflict, "%s already exists", id)
	case !errors.Is(err, errNoIdentity):
		return out, internal(err)
	}
	rec, err := s.registerIdentity(ctx, id, req.Org, req.Kind, req.Name, req.Admin, actor)
	if err != nil {
		return out, err
	}
	token, claims, err := s.tokens.Issue(id, s.enrollURL(), enrolltoken.CAHash(s.ca.Cert), ttl, time.Now())
	if err != nil {
		return out, internal(err)
	}
	s.log.Info("identity created", "spiffe_id", rec.SPIFFEID, "by", actor.String(), "admin", rec.Admin)
	return api.CreateIdentityResponse{SPIFFEID: id.String(), Token: token, ExpiresAt: time.Unix(claims.ExpiresAt, 0).UTC()}, nil
}

// registerIdentity creates the overlay identity (matched by SPIFFE ID) and the governance record.
func (s *Server) registerIdentity(ctx context.Context, id spiffeid.ID, org, kind, name string, admin bool, actor spiffeid.ID) (identityRecord, error) {
	attrs := []string{api.AllIdentitiesAttr}
	if kind == api.ControllerAPIKind && org == api.ControllerAPIOrg {
		attrs = append(attrs, api.ControllerBindAttr)
	}
	if admin {
		attrs = append(attrs, console.DialAttr)
	}
	overlay, found, err := s.zc.Mgmt().FindIdentity(id.String())
	if err != nil {
		return identityRecord{}, internal(err)
	}
	overlayID := overlay.ID
	if !found {
		if overlayID, err = s.zc.Mgmt().CreateIdentity(id.String(), s.authPolicy, attrs); err != nil {
			return identityRecord{}, internal(err)
		}
	}
	rec := identityRecord{SPIFFEID: id.String(), Org: org, Kind: kind, Name: name, Admin: admin, State: statePending,
		OverlayID: overlayID, Attributes: attrs, CreatedAt: time.Now().UTC(), CreatedBy: actor.String()}
	if err := s.ids.create(ctx, rec); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return identityRecord{}, failf(http.StatusConflict, api.CodeConflict, "%s already exists", id)
		}
		return identityRecord{}, internal(err)
	}
	return rec, nil
}

// replicaLagWait bounds how long enrollment waits for this member's copy of the identity bucket to show an
// identity another member created (enroll).
const replicaLagWait = 3 * time.Second

// enroll redeems a token: verify it, check the CSR is for the token's SPIFFE ID, spend the token, sign.
// Nothing is changed unless every check passes.
func (s *Server) enroll(ctx context.Context, req api.EnrollRequest) (api.Credentials, error) {
	claims, err := enrolltoken.Verify(req.Token, s.tokens.Public(), s.td, time.Now())
	switch {
	case errors.Is(err, enrolltoken.ErrExpired):
		return api.Credentials{}, &fault{status: http.StatusUnauthorized, code: api.CodeTokenExpired, message: "enrollment token has expired", cause: err}
	case errors.Is(err, enrolltoken.ErrTrustDomain):
		return api.Credentials{}, &fault{status: http.StatusUnauthorized, code: api.CodeTokenInvalid, message: "enrollment token is for another trust domain", cause: err}
	case err != nil:
		return api.Credentials{}, &fault{status: http.StatusUnauthorized, code: api.CodeTokenInvalid, message: "enrollment token is not valid", cause: err}
	}
	id, err := claims.SPIFFE()
	if err != nil {
		return api.Credentials{}, &fault{status: http.StatusUnauthorized, code: api.CodeTokenInvalid, message: "enrollment token is not valid", cause: err}
	}
	rec, _, err := s.ids.get(ctx, id)
	// A token is signed only once its identity is stored. In a cluster, a genuine token naming an unknown identity
	// is most likely one another member issued a moment ago, whose write this member's copy of the bucket has not
	// applied yet (bucket reads are answered by any copy): read again for a little while.
	for wait := time.Now().Add(replicaLagWait); errors.Is(err, errNoIdentity) && s.cfg.Replicas > 1 && time.Now().Before(wait); {
		select {
		case <-ctx.Done():
			return api.Credentials{}, internal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		rec, _, err = s.ids.get(ctx, id)
	}
	switch {
	case errors.Is(err, errNoIdentity):
		return api.Credentials{}, failf(http.StatusUnauthorized, api.CodeTokenInvalid, "enrollment token names an unknown identity")
	case err != nil:
		return api.Credentials{}, internal(err)
	case rec.State == stateRevoked:
		return api.Credentials{}, failf(http.StatusForbidden, api.CodeRevoked, "%s has been revoked", id)
	}
	leaf, err := s.ca.IssueSVID(req.CSR, id, s.cfg.SVIDTTL, time.Now())
	if err != nil {
		if errors.Is(err, pki.ErrCSRMismatch) {
			return api.Credentials{}, &fault{status: http.StatusBadRequest, code: api.CodeCSRMismatch, message: fmt.Sprintf("the CSR must request exactly %s", id), cause: err}
		}
		return api.Credentials{}, &fault{status: http.StatusBadRequest, code: api.CodeBadRequest, message: "the CSR is not valid", cause: err}
	}
	if err := s.ids.spendToken(ctx, claims.ID, id); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return api.Credentials{}, failf(http.StatusUnauthorized, api.CodeTokenUsed, "enrollment token has already been used")
		}
		return api.Credentials{}, internal(err)
	}
	if _, err := s.ids.update(ctx, id, func(r *identityRecord) error {
		if r.State == stateRevoked {
			return failf(http.StatusForbidden, api.CodeRevoked, "%s has been revoked", id)
		}
		r.State, r.EnrolledAt = stateEnrolled, time.Now().UTC()
		r.Certs = append(r.Certs, certEntry{Serial: serialOf(leaf), NotAfter: leaf.NotAfter})
		return nil
	}); err != nil {
		return api.Credentials{}, asFault(err)
	}
	s.log.Info("identity enrolled", "spiffe_id", id.String(), "expires_at", leaf.NotAfter)
	return s.credentials(id, leaf), nil
}

// renew issues a fresh SVID to a caller that proved its current one, unless it is revoked or was enrolled
// longer ago than the maximum identity age.
func (s *Server) renew(ctx context.Context, caller spiffeid.ID, csr []byte) (api.Credentials, error) {
	rec, _, err := s.ids.get(ctx, caller)
	if err != nil {
		return api.Credentials{}, asFault(err)
	}
	if rec.State == stateRevoked {
		return api.Credentials{}, failf(http.StatusForbidden, api.CodeRevoked, "%s has been revoked", caller)
	}
	if err := s.checkAge(rec, time.Now()); err != nil {
		return api.Credentials{}, err
	}
	leaf, err := s.issueSVID(ctx, caller, csr)
	if err != nil {
		if f := (*fault)(nil); errors.As(err, &f) {
			return api.Credentials{}, f
		}
		if errors.Is(err, pki.ErrCSRMismatch) {
			return api.Credentials{}, &fault{status: http.StatusBadRequest, code: api.CodeCSRMismatch, message: fmt.Sprintf("the CSR must request exactly %s", caller), cause: err}
		}
		return api.Credentials{}, &fault{status: http.StatusBadRequest, code: api.CodeBadRequest, message: "the CSR is not valid", cause: err}
	}
	return s.credentials(caller, leaf), nil
}

func (s *Server) credentials(id spiffeid.ID, leaf *x509.Certificate) api.Credentials {
	return api.Credentials{
		SPIFFEID: id.String(), SVID: string(pki.EncodeCertsPEM(leaf)), Bundle: string(s.ca.CertPEM()),
		ExpiresAt: leaf.NotAfter, OverlayAPI: s.zc.ClientAPIURL(), OverlayAPIs: s.zc.ClientAPIURLs(), OverlayCA: string(s.zc.CACertPEM()),
		ControllerID: s.controllerID.String(), EnrollURL: s.enrollURL(),
	}
}

// revoke cuts an identity on both layers: the record is marked first (the API refuses it from that instant),
// then the overlay identity is revoked (disabled, which drops its API sessions; in a cluster also its tokens
// revoked and the identity deleted: zitictrl.Controller.RevokeIdentity) and its live circuits are torn down.
func (s *Server) revoke(ctx context.Context, actor, id spiffeid.ID, reason string) (api.RevokeResponse, error) {
	if id == actor {
		return api.RevokeResponse{}, failf(http.StatusBadRequest, api.CodeBadRequest, "an identity cannot revoke itself")
	}
	if id == s.controllerID {
		return api.RevokeResponse{}, failf(http.StatusBadRequest, api.CodeBadRequest, "the controller's own identity cannot be revoked")
	}
	defer s.changing(id)()
	first := false
	rec, err := s.ids.update(ctx, id, func(r *identityRecord) error {
		if first = r.State != stateRevoked; first {
			r.State, r.RevokedAt, r.RevokedBy, r.RevokeReason = stateRevoked, time.Now().UTC(), actor.String(), reason
		}
		return nil
	})
	if err != nil {
		return api.RevokeResponse{}, asFault(err)
	}
	if first {
		s.metrics.revoked()
	}
	// Count the live circuits before revoking: on a lone controller, disabling already drops most of them. In a
	// cluster every member also closes those it created when it sees the record revoked (followRevocations).
	live := s.circuitsOf(rec.OverlayID)
	if err := s.zc.RevokeIdentity(rec.OverlayID); err != nil {
		return api.RevokeResponse{}, internal(err)
	}
	s.closeCircuits(rec.OverlayID)
	closed := len(live)
	s.revokeSessions(ctx, id)
	s.log.Info("identity revoked", "spiffe_id", id.String(), "by", actor.String(), "reason", reason, "circuits_closed", closed)
	return api.RevokeResponse{SPIFFEID: id.String(), CircuitsClosed: closed}, nil
}

// circuitsOf lists the live circuits the overlay identity dialled or hosts.
func (s *Server) circuitsOf(overlayID string) []string {
	if overlayID == "" {
		return nil
	}
	var ids []string
	for _, c := range s.zc.Fabric().GetNetwork().GetAllCircuits() {
		if c.Tags["clientId"] == overlayID || c.Tags["hostId"] == overlayID {
			ids = append(ids, c.Id)
		}
	}
	return ids
}

// closeCircuits removes every live circuit the overlay identity dialled or hosts.
func (s *Server) closeCircuits(overlayID string) int {
	if overlayID == "" {
		return 0
	}
	n := 0
	network := s.zc.Fabric().GetNetwork()
	for _, c := range network.GetAllCircuits() {
		if c.Tags["clientId"] != overlayID && c.Tags["hostId"] != overlayID {
			continue
		}
		if err := network.RemoveCircuit(c.Id, true); err != nil {
			s.log.Warn("removing circuit failed", "circuit", c.Id, "err", err)
			continue
		}
		n++
	}
	return n
}

// grant lets identities bind or dial a service; the service and its two policies are created on first use.
func (s *Server) grant(ctx context.Context, actor spiffeid.ID, req api.GrantRequest) error {
	if !serviceName.MatchString(req.Service) {
		return failf(http.StatusBadRequest, api.CodeBadRequest, "service name %q is not valid: use 1-128 letters, digits, '.', '_' or '-'", req.Service)
	}
	if req.Service == api.ServiceName || strings.HasPrefix(req.Service, "umbra.") {
		return failf(http.StatusBadRequest, api.CodeBadRequest, "service names starting with \"umbra.\" are reserved")
	}
	// Advertisements' services (a2a.<id>) and their shared policies (umbra-a2a-…): a grant of such a name would
	// take over another agent's advertisement, or the dial policy of a workgroup.
	if strings.HasPrefix(req.Service, "a2a.") || strings.HasPrefix(req.Service, "a2a-") {
		return failf(http.StatusBadRequest, api.CodeBadRequest, "service names starting with \"a2a.\" or \"a2a-\" are reserved for advertisements; choose another name")
	}
	if len(req.Bind)+len(req.Dial) == 0 {
		return failf(http.StatusBadRequest, api.CodeBadRequest, "name at least one identity to bind or dial")
	}
	type change struct {
		id   spiffeid.ID
		attr string
	}
	svcAttr := api.ServiceAttrPrefix + req.Service
	var changes []change
	for _, set := range []struct {
		ids    []string
		suffix string
	}{{req.Bind, api.BindAttrSuffix}, {req.Dial, api.DialAttrSuffix}} {
		for _, raw := range set.ids {
			id, err := spiffeid.FromString(raw)
			if err != nil {
				return failf(http.StatusBadRequest, api.CodeBadRequest, "%q is not a SPIFFE ID: %v", raw, err)
			}
			rec, _, err := s.ids.get(ctx, id)
			if errors.Is(err, errNoIdentity) {
				return failf(http.StatusNotFound, api.CodeNotFound, "no identity %s", id)
			} else if err != nil {
				return internal(err)
			}
			if rec.State == stateRevoked {
				return failf(http.StatusConflict, api.CodeRevoked, "%s has been revoked", id)
			}
			changes = append(changes, change{id, svcAttr + set.suffix})
		}
	}
	m := s.zc.Mgmt()
	if _, err := m.EnsureService(req.Service, []string{svcAttr}); err != nil {
		return internal(err)
	}
	if err := m.EnsureServicePolicy("umbra-"+req.Service+"-bind", "Bind", []string{"#" + svcAttr + api.BindAttrSuffix}, []string{"#" + svcAttr}); err != nil {
		return internal(err)
	}
	if err := m.EnsureServicePolicy("umbra-"+req.Service+"-dial", "Dial", []string{"#" + svcAttr + api.DialAttrSuffix}, []string{"#" + svcAttr}); err != nil {
		return internal(err)
	}
	for _, c := range changes {
		rec, err := s.ids.update(ctx, c.id, func(r *identityRecord) error {
			if !slices.Contains(r.Attributes, c.attr) {
				r.Attributes = append(r.Attributes, c.attr)
				if r.GrantedAt == nil {
					r.GrantedAt = map[string]time.Time{}
				}
				r.GrantedAt[c.attr] = time.Now().UTC()
			}
			return nil
		})
		if err != nil {
			return asFault(err)
		}
		if err := m.SetAttributes(rec.OverlayID, rec.Attributes); err != nil {
			return internal(err)
		}
	}
	s.log.Info("service granted", "service", req.Service, "bind", req.Bind, "dial", req.Dial, "by", actor.String())
	return nil
}

func asFault(err error) error {
	var f *fault
	if errors.As(err, &f) {
		return f
	}
	if errors.Is(err, errNoIdentity) {
		return failf(http.StatusNotFound, api.CodeNotFound, "no such identity")
	}
	return internal(err)
}
