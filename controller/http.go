package controller

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// enrollHandler serves the one endpoint reachable without an identity.
func (s *Server) enrollHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.PathEnroll, func(w http.ResponseWriter, r *http.Request) {
		var req api.EnrollRequest
		var creds api.Credentials
		err := decode(w, r, &req)
		if err == nil {
			creds, err = s.enroll(r.Context(), req)
		}
		s.metrics.enrolled(err)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		reply(w, http.StatusOK, creds)
	})
	return mux
}

type callerKey struct{}

// caller is the verified identity behind a request on the overlay API.
type caller struct {
	id  spiffeid.ID
	rec identityRecord
}

// apiHandler serves the controller API on the overlay. Every request arrives inside mutual TLS; the caller is
// the SPIFFE ID its SVID proved, and must be a known, unrevoked identity.
func (s *Server) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathWhoAmI, func(w http.ResponseWriter, r *http.Request) {
		c := r.Context().Value(callerKey{}).(caller)
		reply(w, http.StatusOK, api.WhoAmI{SPIFFEID: c.id.String(), Org: c.rec.Org, Kind: c.rec.Kind, Name: c.rec.Name, Admin: c.rec.Admin})
	})
	mux.HandleFunc("GET "+api.PathRevocations, s.serveRevocations)
	mux.HandleFunc("POST "+api.PathRenew, func(w http.ResponseWriter, r *http.Request) {
		c := r.Context().Value(callerKey{}).(caller)
		var req api.RenewRequest
		if err := decode(w, r, &req); err != nil {
			s.fail(w, r, err)
			return
		}
		creds, err := s.renew(r.Context(), c.id, req.CSR)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		reply(w, http.StatusOK, creds)
	})
	mux.HandleFunc("POST "+api.PathIdentities, s.admin(func(ctx context.Context, c caller, body []byte) (any, error) {
		var req api.CreateIdentityRequest
		if err := strict(body, &req); err != nil {
			return nil, err
		}
		if !isPlatformAdmin(c) && req.Org != c.rec.Org {
			return nil, failf(http.StatusForbidden, api.CodeForbidden, "an organisation administrator creates identities of its own organisation only")
		}
		if !isPlatformAdmin(c) && (req.Kind == api.GatewayKind || req.Admin) {
			return nil, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator creates gateway or administrator identities")
		}
		return s.createIdentity(ctx, c.id, req)
	}))
	mux.HandleFunc("POST "+api.PathRevoke, s.admin(func(ctx context.Context, c caller, body []byte) (any, error) {
		var req api.RevokeRequest
		if err := strict(body, &req); err != nil {
			return nil, err
		}
		id, err := spiffeid.FromString(req.SPIFFEID)
		if err != nil {
			return nil, failf(http.StatusBadRequest, api.CodeBadRequest, "%q is not a SPIFFE ID: %v", req.SPIFFEID, err)
		}
		if !isPlatformAdmin(c) && orgOf(id) != c.rec.Org {
			return nil, failf(http.StatusForbidden, api.CodeForbidden, "an organisation administrator revokes identities of its own organisation only")
		}
		if !isPlatformAdmin(c) {
			// Gateways serve every organisation: the platform registered them and only it takes them away.
			if rec, _, err := s.ids.get(ctx, id); err == nil && rec.Kind == api.GatewayKind {
				return nil, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator revokes gateway identities")
			}
		}
		return s.revoke(ctx, c.id, id, req.Reason)
	}))
	mux.HandleFunc("POST "+api.PathGrant, s.admin(func(ctx context.Context, c caller, body []byte) (any, error) {
		if !isPlatformAdmin(c) {
			return nil, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator grants services")
		}
		var req api.GrantRequest
		if err := strict(body, &req); err != nil {
			return nil, err
		}
		return struct{}{}, s.grant(ctx, c.id, req)
	}))
	mux.HandleFunc("POST "+api.PathRouters, s.admin(func(ctx context.Context, c caller, body []byte) (any, error) {
		if !isPlatformAdmin(c) {
			return nil, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator registers routers")
		}
		var req api.CreateRouterRequest
		if err := strict(body, &req); err != nil {
			return nil, err
		}
		tok, err := s.CreateRouterToken(req.Name)
		if err != nil {
			return nil, err
		}
		s.log.Info("router created", "name", req.Name, "by", c.id.String())
		return api.CreateRouterResponse{Name: req.Name, Token: tok}, nil
	}))
	s.lifecycleRoutes(mux)
	s.suspendRoutes(mux)
	s.policyRoutes(mux)
	s.postureRoutes(mux)
	mux.HandleFunc("GET "+api.PathAlerts, s.serveAlerts)
	s.governanceRoutes(mux)
	s.gatewayRoutes(mux)
	s.envelopeArchiveRoutes(mux)
	s.clusterRoutes(mux)
	return s.authenticate(mux)
}

func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			s.fail(w, r, failf(http.StatusUnauthorized, api.CodeUnauthenticated, "no client SVID"))
			return
		}
		id, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
		if err != nil {
			s.fail(w, r, &fault{status: http.StatusUnauthorized, code: api.CodeUnauthenticated, message: "client certificate is not an SVID", cause: err})
			return
		}
		rec, _, err := s.ids.get(r.Context(), id)
		switch {
		case errors.Is(err, errNoIdentity):
			s.fail(w, r, failf(http.StatusForbidden, api.CodeUnauthenticated, "%s is not a registered identity", id))
			return
		case err != nil:
			s.fail(w, r, internal(err))
			return
		case rec.State == stateRevoked:
			s.fail(w, r, failf(http.StatusForbidden, api.CodeRevoked, "%s has been revoked", id))
			return
		case rec.Suspended:
			s.fail(w, r, failf(http.StatusForbidden, api.CodeSuspended, "%s is suspended: ask an administrator to resume it (umbra identity resume)", id))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, caller{id: id, rec: rec})))
	})
}

// admin wraps an operation that only administrators may call.
func (s *Server) admin(op func(ctx context.Context, c caller, body []byte) (any, error)) http.HandlerFunc {
	return s.handle(true, op)
}

// anyone wraps an operation any registered identity may call; the operation authorises further.
func (s *Server) anyone(op func(ctx context.Context, c caller, body []byte) (any, error)) http.HandlerFunc {
	return s.handle(false, op)
}

func (s *Server) handle(adminOnly bool, op func(ctx context.Context, c caller, body []byte) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c := r.Context().Value(callerKey{}).(caller)
		if adminOnly && !c.rec.Admin {
			s.fail(w, r, failf(http.StatusForbidden, api.CodeForbidden, "%s is not an administrator", c.id))
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxRequestBytes))
		if err != nil {
			s.fail(w, r, failf(http.StatusRequestEntityTooLarge, api.CodeBadRequest, "request body too large (limit %d bytes)", api.MaxRequestBytes))
			return
		}
		out, err := op(r.Context(), c, body)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		reply(w, http.StatusOK, out)
	}
}

func decode(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxRequestBytes))
	if err != nil {
		return failf(http.StatusRequestEntityTooLarge, api.CodeBadRequest, "request body too large (limit %d bytes)", api.MaxRequestBytes)
	}
	return strict(body, v)
}

// strict decodes exactly one JSON value with no unknown fields.
func strict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return failf(http.StatusBadRequest, api.CodeBadRequest, "malformed request body: %v", err)
	}
	if dec.More() {
		return failf(http.StatusBadRequest, api.CodeBadRequest, "malformed request body: trailing data")
	}
	return nil
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", api.ContentTypeJSON)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// fail answers with a stable code and message and logs the cause under the same error ID.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var f *fault
	if !errors.As(err, &f) {
		f = internal(err)
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	// A refused request is the caller's business (it gets the code and the audit trail has it): info, not a warning
	// an operator must act on.
	level := s.log.Info
	switch {
	case r.Context().Err() != nil:
		// The caller went away (gave up its long poll, or its deadline passed): nothing went wrong here.
		level = s.log.Debug
	case f.status >= 500:
		level = s.log.Error
	}
	level("request refused", "error_id", id, "path", r.URL.Path, "code", f.code, "err", fmt.Sprint(err))
	w.Header().Set(api.HeaderErrorID, id)
	if f.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(f.retryAfter.Seconds()))))
	}
	reply(w, f.status, api.Error{Code: f.code, Message: f.message, ID: id})
}
