// Package api is the wire format of the controller's API, shared by the controller and the SDK: paths, request
// and response bodies, and the error envelope with its stable codes.
package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ServiceName is the dark overlay service on which the controller serves its API.
const ServiceName = "umbra.controller"

// Paths. PathEnroll is served on the enrollment listener (TLS, no client identity); every other path is served
// only on the overlay, behind mutual TLS with SVIDs.
const (
	PathEnroll         = "/v1/enroll"
	PathWhoAmI         = "/v1/whoami"
	PathRenew          = "/v1/svid/renew"
	PathIdentities     = "/v1/identities"
	PathRevoke         = "/v1/identities/revoke"
	PathSuspend        = "/v1/identities/suspend"
	PathResume         = "/v1/identities/resume"
	PathGrant          = "/v1/services/grant"
	PathRouters        = "/v1/routers"
	MaxRequestBytes    = 64 << 10
	RouterTokenPrefix  = "urt1."
	DefaultTokenTTL    = time.Hour
	HeaderErrorID      = "Umbra-Error-Id"
	ContentTypeJSON    = "application/json"
	ControllerAPIOrg   = "umbra"
	ControllerAPIKind  = "controller"
	ControllerAPIName  = "api"
	PlatformAdminOrg   = "umbra"
	PlatformAdminKind  = "admin"
	PlatformAdminName  = "root"
	ServiceAttrPrefix  = "svc."
	DialAttrSuffix     = ".dial"
	BindAttrSuffix     = ".bind"
	AllIdentitiesAttr  = "umbra.identity"
	ControllerBindAttr = "umbra.controller.bind"
)

// EnrollRequest exchanges a one-time token and a CSR for an SVID.
type EnrollRequest struct {
	Token string `json:"token"`
	CSR   []byte `json:"csr"` // PKCS#10, DER
}

// Credentials is what enrollment and renewal return.
type Credentials struct {
	SPIFFEID     string    `json:"spiffe_id"`
	SVID         string    `json:"svid"`   // PEM, leaf first
	Bundle       string    `json:"bundle"` // PEM, the trust domain's CA certificates
	ExpiresAt    time.Time `json:"expires_at"`
	OverlayAPI   string    `json:"overlay_api"` // OpenZiti edge client API URL
	OverlayCA    string    `json:"overlay_ca"`  // PEM
	ControllerID string    `json:"controller_id"`
	EnrollURL    string    `json:"enroll_url"`
	// OverlayAPIs lists the edge client API of every controller of the cluster that the issuer knew of, the
	// issuer's (OverlayAPI) first; empty from a controller that predates it. An agent fails over among them.
	OverlayAPIs []string `json:"overlay_apis,omitempty"`
}

// RenewRequest asks for a fresh SVID for the caller's own SPIFFE ID.
type RenewRequest struct {
	CSR []byte `json:"csr"`
}

// WhoAmI describes the caller as the controller sees it.
type WhoAmI struct {
	SPIFFEID string `json:"spiffe_id"`
	Org      string `json:"org"`
	Kind     string `json:"kind"`
	Name     string `json:"name"`
	Admin    bool   `json:"admin"`
}

// CreateIdentityRequest registers a workload and returns its enrollment token.
type CreateIdentityRequest struct {
	Org      string `json:"org"`
	Kind     string `json:"kind"`
	Name     string `json:"name"`
	Admin    bool   `json:"admin,omitempty"`
	TokenTTL string `json:"token_ttl,omitempty"` // Go duration; default DefaultTokenTTL
}

// CreateIdentityResponse carries the enrollment token.
type CreateIdentityResponse struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// RevokeRequest revokes an identity on both layers.
type RevokeRequest struct {
	SPIFFEID string `json:"spiffe_id"`
	Reason   string `json:"reason,omitempty"`
}

// RevokeResponse reports what revocation cut.
type RevokeResponse struct {
	SPIFFEID       string `json:"spiffe_id"`
	CircuitsClosed int    `json:"circuits_closed"`
}

// SuspendRequest suspends or resumes an identity (PathSuspend, PathResume): the kill switch. Suspension cuts
// the identity from the overlay and the controller like a revocation, but keeps its certificates and records, so
// that resuming restores it without re-enrollment.
type SuspendRequest struct {
	SPIFFEID string `json:"spiffe_id"`
	Reason   string `json:"reason"`
}

// SuspendResponse reports what a suspension cut (nothing, for a resume) and the identity's state after it.
type SuspendResponse struct {
	SPIFFEID       string `json:"spiffe_id"`
	Suspended      bool   `json:"suspended"`
	CircuitsClosed int    `json:"circuits_closed"`
	SessionsClosed int    `json:"sessions_closed"`
}

// GrantRequest lets identities host (bind) or use (dial) a service, creating the service if needed.
type GrantRequest struct {
	Service string   `json:"service"`
	Bind    []string `json:"bind,omitempty"`
	Dial    []string `json:"dial,omitempty"`
}

// CreateRouterRequest registers an edge router.
type CreateRouterRequest struct {
	Name string `json:"name"`
}

// CreateRouterResponse carries the router's one-time enrollment token.
type CreateRouterResponse struct {
	Name  string `json:"name"`
	Token string `json:"token"`
}

// RouterToken is the decoded form of a router enrollment token (RouterTokenPrefix + base64url JSON).
type RouterToken struct {
	Name         string `json:"name"`
	JWT          string `json:"jwt"`  // OpenZiti's one-time router enrollment JWT
	CtrlEndpoint string `json:"ctrl"` // tls:host:port of the overlay control plane
}

// Error is the body of every non-2xx response.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	ID      string `json:"id"`
}

// Error codes.
const (
	CodeBadRequest      = "bad_request"
	CodeUnauthenticated = "unauthenticated"
	CodeForbidden       = "forbidden"
	CodeNotFound        = "not_found"
	CodeConflict        = "conflict"
	CodeTokenInvalid    = "token_invalid"
	CodeTokenExpired    = "token_expired"
	CodeTokenUsed       = "token_used"
	CodeCSRMismatch     = "csr_mismatch"
	CodeRevoked         = "revoked"
	CodeSuspended       = "suspended" // the identity is suspended (HTTP 403) until an administrator resumes it
	CodeInternal        = "internal"
)

// EncodeRouterToken renders a router enrollment token.
func EncodeRouterToken(t RouterToken) (string, error) {
	b, err := json.Marshal(t)
	if err != nil {
		return "", err
	}
	return RouterTokenPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// DecodeRouterToken parses a router enrollment token.
func DecodeRouterToken(s string) (RouterToken, error) {
	var t RouterToken
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, RouterTokenPrefix) || len(s) > 16<<10 {
		return t, errors.New("not a router enrollment token")
	}
	b, err := base64.RawURLEncoding.DecodeString(s[len(RouterTokenPrefix):])
	if err != nil {
		return t, fmt.Errorf("router enrollment token: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return t, fmt.Errorf("router enrollment token: %w", err)
	}
	if t.Name == "" || t.JWT == "" || t.CtrlEndpoint == "" {
		return t, errors.New("router enrollment token: name, jwt and ctrl are required")
	}
	return t, nil
}
