package controller

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/enrolltoken"
)

// An identity renews its own SVID only for Config.MaxIdentityAge after it was enrolled; then an administrator
// hands it a re-enrollment token, and enrolling with it (a new key, the same SPIFFE ID) starts the age over. A
// stolen key thus lives at most until the next re-enrollment is due, even if nobody noticed the theft.

// checkAge refuses a renewal by an identity enrolled longer ago than the maximum identity age.
func (s *Server) checkAge(rec identityRecord, now time.Time) error {
	enrolled := rec.EnrolledAt
	if enrolled.IsZero() {
		enrolled = rec.CreatedAt
	}
	if now.Sub(enrolled) <= s.cfg.MaxIdentityAge {
		return nil
	}
	return failf(http.StatusForbidden, api.CodeReenrollRequired,
		"%s was enrolled more than %s ago and may no longer renew: ask an administrator for a re-enrollment token (umbra identity reenroll) and enroll again",
		rec.SPIFFEID, s.cfg.MaxIdentityAge)
}

// parseTokenTTL reads an enrollment token lifetime; empty means api.DefaultTokenTTL.
func parseTokenTTL(raw string) (time.Duration, error) {
	if raw == "" {
		return api.DefaultTokenTTL, nil
	}
	ttl, err := time.ParseDuration(raw)
	if err != nil || ttl <= 0 || ttl > 7*24*time.Hour {
		return 0, failf(http.StatusBadRequest, api.CodeBadRequest, "token_ttl %q must be a duration between 1s and 168h", raw)
	}
	return ttl, nil
}

// reenroll issues a new one-time enrollment token for an existing identity, under the scope rules of identity
// creation: an organisation administrator for its own organisation only, gateways and administrators by the
// platform only. Another organisation's identity is answered as one that does not exist.
func (s *Server) reenroll(ctx context.Context, c caller, req api.ReenrollRequest) (api.CreateIdentityResponse, error) {
	var out api.CreateIdentityResponse
	id, err := spiffeid.FromString(req.SPIFFEID)
	if err != nil {
		return out, failf(http.StatusBadRequest, api.CodeBadRequest, "%q is not a SPIFFE ID: %v", req.SPIFFEID, err)
	}
	ttl, err := parseTokenTTL(req.TokenTTL)
	if err != nil {
		return out, err
	}
	platform := isPlatformAdmin(c)
	rec, _, err := s.ids.get(ctx, id)
	switch {
	case errors.Is(err, errNoIdentity), err == nil && !platform && rec.Org != c.rec.Org:
		return out, failf(http.StatusNotFound, api.CodeNotFound, "no identity %s", id)
	case err != nil:
		return out, internal(err)
	case rec.Org == api.PlatformAdminOrg:
		return out, failf(http.StatusBadRequest, api.CodeBadRequest,
			"%s belongs to the platform and is not re-enrolled: rotate the platform administrator (umbra admin rotate) instead", id)
	case !platform && (rec.Kind == api.GatewayKind || rec.Admin):
		return out, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator re-enrolls gateway or administrator identities")
	case rec.State == stateRevoked:
		return out, failf(http.StatusConflict, api.CodeRevoked, "%s was revoked and cannot be re-enrolled; create a new identity", id)
	}
	token, claims, err := s.tokens.Issue(id, s.enrollURL(), enrolltoken.CAHash(s.ca.Cert), ttl, time.Now())
	if err != nil {
		return out, internal(err)
	}
	s.record(ctx, audit.Record{Kind: "identity.reenrolled", Actor: c.id.String(), Decision: "allow",
		Data: jsonRaw(map[string]string{"spiffe_id": id.String()})})
	s.log.Info("re-enrollment token issued", "spiffe_id", id.String(), "by", c.id.String())
	return api.CreateIdentityResponse{SPIFFEID: id.String(), Token: token, ExpiresAt: time.Unix(claims.ExpiresAt, 0).UTC()}, nil
}
