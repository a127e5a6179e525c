package llmgw

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/gatewayadmin"
	"github.com/umbra-mesh/umbra/llmgw/budget"
	"github.com/umbra-mesh/umbra/llmgw/guard"
	"github.com/umbra-mesh/umbra/llmgw/provider"
	"github.com/umbra-mesh/umbra/llmgw/route"
	"github.com/umbra-mesh/umbra/workgroups/authz"
	"sync"
)

// Gateway is the LLM gateway. Build it with New, serve Handler, and run Run for health checks.
type Gateway struct {
	cfg      Config
	log      *slog.Logger
	models   map[string]*model
	names    []string // model names in configuration order
	authz    *authorizer
	reqGuard *guard.Scanner
	resGuard *guard.Scanner // nil unless responses are scanned
	limiter  *budget.Limiter
	router   *route.Router // nil without a routing model
	metrics  *metrics
	gatherer prometheus.Gatherer
	identify func(*http.Request) (spiffeid.ID, error)
	grant    *gatewayadmin.Authorizer
	trace    tracing

	audits  chan queuedRecord // outcome records for the worker (auditq.go)
	auditMu sync.RWMutex      // guards auditOn against the worker stopping
	auditOn bool              // Run's worker takes records from audits
	held    audit.Held        // records of what already happened whose append never reached the trail
	outbox  *audit.Outbox     // writes records of what already happened, holding them in held when need be
}

// New checks cfg and builds a Gateway. With cfg.State set it opens the usage bucket, and the bucket of held audit
// records, whose records Run's worker appends.
func New(cfg Config) (*Gateway, error) {
	// The caller keeps its slices; the gateway works on copies.
	cfg.Models = slices.Clone(cfg.Models)
	for i := range cfg.Models {
		cfg.Models[i].Endpoints = slices.Clone(cfg.Models[i].Endpoints)
	}
	cfg.Budgets = slices.Clone(cfg.Budgets)
	cfg.Admins, cfg.AdminOrgs = slices.Clone(cfg.Admins), slices.Clone(cfg.AdminOrgs)
	cfg.Router.Rules = slices.Clone(cfg.Router.Rules)
	cfg.Router.Routes = slices.Clone(cfg.Router.Routes)
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("llmgw: %w", err)
	}
	g := &Gateway{cfg: cfg, log: cfg.Logger, models: map[string]*model{}, identify: cfg.Identify,
		trace: newTracing(cfg.TracerProvider), audits: make(chan queuedRecord, auditQueueLen), held: audit.Held{Max: heldRecords}}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	g.outbox = &audit.Outbox{Held: &g.held, Writer: cfg.Auditor, Bounded: g.appendTimed, Timeout: cfg.AuditTimeout, Log: g.log,
		Name: "llmgw", Lost: g.lost}
	if g.identify == nil {
		g.identify = identifyTLS
	}
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Transport: upstreamTransport()}
	}
	reg := cfg.Registry
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, g.gatherer = r, r
	} else if ga, ok := reg.(prometheus.Gatherer); ok {
		g.gatherer = ga
	}
	var err error
	if g.metrics, err = newMetrics(reg); err != nil {
		return nil, fmt.Errorf("llmgw: metrics: %w", err)
	}
	for _, mc := range cfg.Models {
		m := &model{Model: mc}
		for _, ec := range mc.Endpoints {
			hc := ec.HTTPClient
			if hc == nil {
				hc = client
			}
			ep := &endpoint{cfg: ec, label: endpointLabel(ec), p: &provider.Endpoint{
				Kind: provider.Kind(ec.Provider), BaseURL: ec.BaseURL, APIKey: ec.APIKey, Model: ec.Model,
				Client: g.trace.tracedClient(hc),
			}}
			ep.healthy.Store(true)
			g.metrics.endpointUp.WithLabelValues(m.Name, ep.label).Set(1)
			m.endpoints = append(m.endpoints, ep)
			m.maxIn, m.maxOut = max(m.maxIn, ec.InputPrice), max(m.maxOut, ec.OutputPrice)
		}
		g.models[m.Name] = m
		g.names = append(g.names, m.Name)
	}
	if g.authz, err = newAuthorizer(cfg.Policies); err != nil {
		return nil, fmt.Errorf("llmgw: %w", err)
	}
	if g.grant, err = gatewayadmin.NewAuthorizer(gatewayadmin.Grant{Gateway: cfg.Self, Admins: cfg.Admins, Orgs: cfg.AdminOrgs,
		Policies: cfg.AdminPolicies}); err != nil {
		return nil, fmt.Errorf("llmgw: %w", err)
	}
	gr := cfg.Guardrails
	if g.reqGuard, err = guard.New(guard.Policy{PII: gr.PII, Secrets: gr.Secrets, Injection: gr.Injection}); err != nil {
		return nil, fmt.Errorf("llmgw: %w", err)
	}
	if gr.Responses {
		if g.resGuard, err = guard.New(guard.Policy{PII: gr.PII, Secrets: gr.Secrets}); err != nil {
			return nil, fmt.Errorf("llmgw: %w", err)
		}
	}
	var store budget.Store = budget.NewMemoryStore()
	if cfg.State != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if store, err = budget.NewKVStore(ctx, cfg.State, cfg.UsageBucket); err != nil {
			return nil, fmt.Errorf("llmgw: %w", err)
		}
		if cfg.Auditor != nil {
			if err := g.openHeld(ctx); err != nil {
				return nil, fmt.Errorf("llmgw: %w", err)
			}
		}
	}
	g.limiter = budget.NewLimiter(store)
	if cfg.Router.enabled() {
		if g.router, err = g.newRouter(); err != nil {
			return nil, fmt.Errorf("llmgw: %w", err)
		}
	}
	return g, nil
}

// Handler serves the API:
//
//	POST /v1/chat/completions  OpenAI chat completions, streamed or not
//	POST /v1/embeddings        OpenAI embeddings
//	GET  /v1/models            the models the caller may use
//	GET  /v1/models/{model}    one of them
//	POST /v1/messages          Anthropic Messages, served by any model
//	GET  /v1/usage             usage per identity and day (administrators: anyone's; others: their own)
//	GET  /metrics              Prometheus metrics (administrators)
func (g *Gateway) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", g.traced(g.serveChat))
	mux.HandleFunc("POST /v1/embeddings", g.traced(g.serveEmbeddings))
	mux.HandleFunc("GET /v1/models", g.serveModels)
	mux.HandleFunc("GET /v1/models/{model...}", g.serveModel)
	mux.HandleFunc("POST /v1/messages", g.traced(g.serveMessages))
	mux.HandleFunc("GET /v1/usage", g.serveUsage)
	mux.HandleFunc("GET /metrics", g.serveMetrics)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, openAIError(errorf(http.StatusNotFound, "invalid_request_error", codeNotFound,
			"no such endpoint: %s %s", r.Method, r.URL.Path), newRequestID()))
	})
	return mux
}

// identifyTLS reads the SPIFFE ID of a mutual-TLS client certificate.
func identifyTLS(r *http.Request) (spiffeid.ID, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("no client certificate")
	}
	return x509svid.IDFromCert(r.TLS.PeerCertificates[0])
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "req_" + hex.EncodeToString(b[:])
}

// authenticate identifies the caller and looks them up.
func (g *Gateway) authenticate(r *http.Request) (Principal, *apiError) {
	id, err := g.identify(r)
	if err != nil || id.IsZero() {
		return Principal{}, errorf(http.StatusUnauthorized, "authentication_error", codeUnauthenticated,
			"the caller has no verified SPIFFE identity")
	}
	if g.cfg.Directory == nil {
		return Principal{ID: id, Org: orgOf(id)}, nil
	}
	p, err := g.cfg.Directory.Lookup(r.Context(), id)
	switch {
	case errors.Is(err, ErrUnknownIdentity):
		return Principal{ID: id}, errorf(http.StatusForbidden, "permission_error", codeForbidden,
			"identity %s is not known here", id)
	case err != nil:
		g.log.Error("llmgw: directory lookup failed", "identity", id.String(), "err", err)
		return Principal{ID: id}, errorf(http.StatusServiceUnavailable, "server_error", codeUnavailable,
			"the identity directory is unavailable; retry later")
	}
	p.ID = id
	return p, nil
}

// readBody reads a request body up to the configured limit.
func (g *Gateway) readBody(r *http.Request) ([]byte, *apiError) {
	b, err := io.ReadAll(io.LimitReader(r.Body, g.cfg.MaxRequestBytes+1))
	if err != nil {
		return nil, invalid("could not read the request body")
	}
	if int64(len(b)) > g.cfg.MaxRequestBytes {
		return nil, errorf(http.StatusRequestEntityTooLarge, "invalid_request_error", codeTooLarge,
			"the request body is larger than %d bytes", g.cfg.MaxRequestBytes)
	}
	return b, nil
}

// allowed reports whether p may use a model (the routing model included) with intent in, without recording
// anything.
func (g *Gateway) allowed(p Principal, name, operation string, in *authz.Intent) bool {
	return g.authz.decide(p, name, operation, in).Allow
}

func (g *Gateway) serveMetrics(w http.ResponseWriter, r *http.Request) {
	p, aerr := g.authenticate(r)
	if aerr == nil {
		if acc := g.access(p); !acc.Gateway {
			reason := acc.Reason
			if acc.Granted() {
				reason = "only administrators of the gateway's own organisation, and identities its admins name, read the metrics"
			}
			g.refuseAdmin(r, p, "read metrics", reason, nil)
			aerr = errorf(http.StatusForbidden, "permission_error", codeForbidden, "%s", reason)
		}
	}
	if aerr == nil && g.gatherer == nil {
		aerr = errorf(http.StatusNotFound, "invalid_request_error", codeNotFound, "metrics are served by the registry's owner")
	}
	if aerr != nil {
		writeJSON(w, aerr.Status, openAIError(aerr, newRequestID()))
		return
	}
	promhttp.HandlerFor(g.gatherer, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

// upstreamTransport is the default transport to model providers: Go's default, keeping as many idle connections
// per provider as the gateway may have calls in flight to it (the default of 2 makes most concurrent calls open a
// new connection, and a TLS handshake, to the same provider).
func upstreamTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 256
	return t
}
