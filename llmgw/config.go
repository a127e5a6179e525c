package llmgw

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/gatewayadmin"
	"github.com/umbra-mesh/umbra/llmgw/guard"
	"github.com/umbra-mesh/umbra/llmgw/provider"
	"github.com/umbra-mesh/umbra/llmgw/route"
)

// Config configures a Gateway. It is copied by New; zero values have the defaults documented per field.
type Config struct {
	// Models is the routing table: the models callers may name, each served by one or more endpoints.
	Models []Model
	// Policies is Cedar text deciding who may use which model: principal Umbra::Identity::"<SPIFFE ID>"
	// (member of Umbra::Org::"<org>" and Umbra::Workgroup::"<org>/<name>"), action Umbra::Action::"use",
	// resource Umbra::Model::"<name>". Empty means nobody may use anything.
	Policies string
	// Budgets are rate limits and spending budgets. None means no limits (usage is still counted).
	Budgets []Budget
	// Guardrails says what to do with personal data, secrets and prompt injection. The zero value scans nothing.
	Guardrails Guardrails
	// Router configures the routing model (by default named "auto"). The zero value has none.
	Router Router
	// Identify returns the caller's verified SPIFFE ID. Nil means the URI SAN of the client certificate of a
	// mutual-TLS connection.
	Identify func(*http.Request) (spiffeid.ID, error)
	// Directory tells the caller's organisation, workgroups and admin flag. Nil means the organisation is the
	// first path segment of the SPIFFE ID, with no workgroups and no administrators.
	Directory Directory
	// Service is the overlay service callers reach the gateway by, for its report to the controller (posture
	// judges the use of dial grants of it). Empty: not reported.
	Service string
	// Self is the gateway's own SPIFFE ID. Administrators (as the Directory marks them) of its organisation, the
	// first path segment, administer the gateway: the usage of their organisation's identities, and the metrics.
	// Zero means the gateway has no organisation of its own.
	Self spiffeid.ID
	// Admins administer the gateway fully, whatever the Directory says of them: everyone's usage and the
	// metrics, as the platform administrator does. Nil means nobody besides those.
	Admins []spiffeid.ID
	// AdminOrgs are further organisations whose administrators read the usage of their own organisation's
	// identities here (not the metrics). Nil means none.
	AdminOrgs []string
	// AdminPolicies is Cedar text added to the built-in administration policies (package gatewayadmin): a forbid
	// takes a default grant away (say, approve_call of one tool), a permit adds one. Default: none.
	AdminPolicies string
	// Auditor receives the calls' records. A call goes upstream only after the Auditor has confirmed its
	// llm.call record; one whose record cannot be written is refused with 503 audit_unavailable. Nil means
	// calls are not audited (and none is refused for want of a record).
	Auditor Auditor
	// AuditTimeout is how long the gateway waits for the Auditor to confirm a record; a call whose record is
	// not confirmed in time is refused. Zero means 10 seconds.
	AuditTimeout time.Duration
	// State keeps usage counters in a JetStream key-value bucket (UsageBucket) so that they survive a restart.
	// Nil keeps them in memory.
	State jetstream.JetStream
	// UsageBucket names the bucket in State. Empty means "llmgw_usage".
	UsageBucket string
	// HeldBucket names the bucket in State that keeps records of how calls ended while the Auditor cannot be
	// reached, so that a restart does not lose them. Empty means "llmgw_audit_held".
	HeldBucket string
	// LogPrompts puts the messages sent upstream (after redaction) and the answer into audit records.
	LogPrompts bool
	// HTTPClient calls the upstream providers. Nil means a client with default transport settings and no
	// overall timeout (streams may be long); requests are bounded by the caller's context.
	HTTPClient *http.Client
	// OutputReserve is the output tokens a request without max_tokens reserves against token budgets.
	// Zero means 1024.
	OutputReserve int64
	// MaxRequestBytes bounds request bodies. Zero means 16 MiB (images arrive inline).
	MaxRequestBytes int64
	// Logger receives state changes (endpoints going down and up) and failures to audit. Nil discards.
	Logger *slog.Logger
	// TracerProvider receives an llm.request span per chat, embeddings and messages request (a child of the
	// caller's W3C traceparent, if it sent one) and an llm.upstream span per attempt on an endpoint, whose
	// traceparent goes upstream with the request. Nil traces nothing, at no cost.
	TracerProvider trace.TracerProvider
	// MetricsListen is a HOST:PORT on which ServeMetrics serves the metrics in the Prometheus text format, over
	// plain HTTP, to anyone who can reach it. It must be a loopback address unless MetricsAllowRemote is set.
	// Empty serves them only at /metrics of Handler, to administrators.
	MetricsListen string
	// MetricsAllowRemote lets MetricsListen be an address other hosts can reach.
	MetricsAllowRemote bool
	// Registry receives the gateway's metrics. Nil means a registry of its own. /metrics serves it when it is
	// also a prometheus.Gatherer.
	Registry prometheus.Registerer
}

// Model is a name callers use and the endpoints that serve it.
type Model struct {
	Name      string
	Endpoints []Endpoint
	// Retries is how many more attempts follow a failed one (network error, 408, 409, 429, 5xx), moving through
	// the endpoints in order and then around again. Zero means one attempt per endpoint; negative means none.
	Retries int
	// Backoff is the wait before retrying an endpoint already tried, doubled each round, with jitter; a
	// Retry-After from the upstream is honoured if longer. Zero means 200ms. Moving to an endpoint not yet
	// tried does not wait.
	Backoff time.Duration
	// HealthInterval is how often Run probes each endpoint, and how long an endpoint that failed a request
	// is tried last. Zero means 30s; negative turns probing off (failed endpoints are then tried last for 30s).
	HealthInterval time.Duration
}

// Endpoint is one upstream serving a model.
type Endpoint struct {
	// Provider is "openai" (the default), "anthropic" or "openai-compatible".
	Provider string
	// BaseURL is the API base including its version, e.g. "http://127.0.0.1:11434/v1". Empty means the
	// provider's public API; required for "openai-compatible".
	BaseURL string
	// APIKey is sent upstream; callers never see it.
	APIKey string
	// Model is the model's name upstream. Empty means the Model's Name.
	Model string
	// Weight is the endpoint's share of first attempts relative to the others. Zero means 1.
	Weight int
	// InputPrice and OutputPrice are USD per million tokens, for cost budgets and reports.
	InputPrice, OutputPrice float64
	// HTTPClient reaches this endpoint. Nil means Config.HTTPClient. A model server that is itself a dark
	// service on the overlay is reached with the overlay's HTTP client here.
	HTTPClient *http.Client
	// Service names the overlay service of such a dark model server, for the gateway's report (posture checks
	// who else may dial it). Empty for an endpoint reached otherwise.
	Service string
}

// Budget limits an identity, an organisation's identities together, or (neither set) each identity that has
// no budget of its own. Zero fields do not limit. Several budgets for one subject combine to the strictest.
type Budget struct {
	Identity          string // a SPIFFE ID
	Org               string
	RequestsPerMinute int64
	TokensPerMinute   int64
	TokensPerDay      int64
	TokensPerMonth    int64
	CostPerDay        float64 // USD
	CostPerMonth      float64 // USD
	MaxConcurrent     int64
}

// Guardrails configures scanning. Requests are scanned for all three categories (prompt injection only in
// user and tool messages); responses for personal data and secrets when Responses is set.
type Guardrails struct {
	PII       guard.Mode
	Secrets   guard.Mode
	Injection guard.Mode
	// Responses scans answers too, streamed ones included.
	Responses bool
	// Window is how many bytes of a streamed answer are held back so that a finding split across chunks is
	// caught before any of it is sent. Zero means 256.
	Window int
}

// Router configures the routing model.
type Router struct {
	// Name is what callers ask for. Empty means "auto".
	Name string
	// Rules are tried first, in order.
	Rules []route.Rule
	// Routes are matched by embedding similarity to their examples, then by the classifier.
	Routes []route.Route
	// EmbeddingModel names a Model whose embeddings compare prompts with route examples. Empty turns the
	// embedding layer off.
	EmbeddingModel string
	// MinSimilarity is the similarity the best example must reach. Zero means 0.75.
	MinSimilarity float64
	// ClassifierModel names a Model asked to pick a route when similarity does not decide. Empty turns the
	// classifier off.
	ClassifierModel string
	// Default is the Model used when no layer decides. Empty refuses such requests.
	Default string
}

func (r Router) enabled() bool {
	return len(r.Rules) > 0 || len(r.Routes) > 0 || r.Default != ""
}

// Principal is a caller as the directory knows it.
type Principal struct {
	ID         spiffeid.ID
	Org        string
	Admin      bool     // an administrator of Org; what it administers here is Config.Self's, Admins' and AdminOrgs' to say
	Workgroups []string // "<org>/<name>"
}

// Directory looks callers up. Lookup returns an error wrapping ErrUnknownIdentity for identities it does not
// know (the call is refused as forbidden); other errors refuse it as unavailable.
type Directory interface {
	Lookup(ctx context.Context, id spiffeid.ID) (Principal, error)
}

// ErrUnknownIdentity is returned by a Directory for an identity it does not know.
var ErrUnknownIdentity = errors.New("llmgw: unknown identity")

// Auditor appends audit records.
type Auditor interface {
	Append(ctx context.Context, r audit.Record) error
}

// check validates cfg and fills defaults in place (cfg is New's copy).
func (cfg *Config) check() error {
	if cfg.AuditTimeout <= 0 {
		cfg.AuditTimeout = 10 * time.Second
	}
	if cfg.OutputReserve <= 0 {
		cfg.OutputReserve = 1024
	}
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = 16 << 20
	}
	if cfg.Router.Name == "" {
		cfg.Router.Name = "auto"
	}
	if err := checkMetricsListen(cfg.MetricsListen, cfg.MetricsAllowRemote); err != nil {
		return err
	}
	if err := (gatewayadmin.Grant{Orgs: cfg.AdminOrgs}).Check(); err != nil {
		return err
	}
	names := map[string]bool{}
	for i := range cfg.Models {
		m := &cfg.Models[i]
		if m.Name == "" {
			return fmt.Errorf("model %d has no name", i)
		}
		if names[m.Name] {
			return fmt.Errorf("model %s given twice", m.Name)
		}
		names[m.Name] = true
		if len(m.Endpoints) == 0 {
			return fmt.Errorf("model %s has no endpoints", m.Name)
		}
		if m.Backoff <= 0 {
			m.Backoff = 200 * time.Millisecond
		}
		if m.HealthInterval == 0 {
			m.HealthInterval = 30 * time.Second
		}
		if m.Retries == 0 {
			m.Retries = len(m.Endpoints) - 1
		}
		m.Retries = max(m.Retries, 0)
		for j := range m.Endpoints {
			e := &m.Endpoints[j]
			kind, err := provider.ParseKind(e.Provider)
			if err != nil {
				return fmt.Errorf("model %s endpoint %d: %w", m.Name, j, err)
			}
			e.Provider = string(kind)
			if e.BaseURL == "" {
				if kind == provider.Compatible {
					return fmt.Errorf("model %s endpoint %d: an openai-compatible endpoint needs a base URL", m.Name, j)
				}
				e.BaseURL = provider.DefaultBaseURL(kind)
			}
			if u, err := url.Parse(e.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("model %s endpoint %d: base URL %q is not an http(s) URL", m.Name, j, e.BaseURL)
			}
			if e.Model == "" {
				e.Model = m.Name
			}
			if e.Weight < 0 || e.InputPrice < 0 || e.OutputPrice < 0 {
				return fmt.Errorf("model %s endpoint %d: negative weight or price", m.Name, j)
			}
			if e.Weight == 0 {
				e.Weight = 1
			}
		}
	}
	for i, b := range cfg.Budgets {
		if b.Identity != "" && b.Org != "" {
			return fmt.Errorf("budget %d names both an identity and an organisation", i)
		}
		if b.Identity != "" {
			if _, err := spiffeid.FromString(b.Identity); err != nil {
				return fmt.Errorf("budget %d: identity: %w", i, err)
			}
		}
	}
	for _, m := range []guard.Mode{cfg.Guardrails.PII, cfg.Guardrails.Secrets, cfg.Guardrails.Injection} {
		if _, err := guard.ParseMode(string(m)); err != nil {
			return err
		}
	}
	r := cfg.Router
	if !r.enabled() {
		return nil
	}
	if names[r.Name] {
		return fmt.Errorf("router name %s is also a model", r.Name)
	}
	need := map[string]string{"embedding model": r.EmbeddingModel, "classifier model": r.ClassifierModel, "default": r.Default}
	for _, rule := range r.Rules {
		need["rule "+rule.Name] = rule.Model
	}
	for _, rt := range r.Routes {
		need["route "+rt.Name] = rt.Model
	}
	for what, name := range need {
		if name != "" && !names[name] {
			return fmt.Errorf("router: %s names unknown model %q", what, name)
		}
	}
	if r.EmbeddingModel != "" {
		for _, e := range cfg.Models {
			if e.Name == r.EmbeddingModel {
				for _, ep := range e.Endpoints {
					if ep.Provider == string(provider.Anthropic) {
						return errors.New("router: the embedding model has an Anthropic endpoint, which has no embeddings")
					}
				}
			}
		}
	}
	return nil
}

// orgOf is the default organisation of an identity: the first segment of its path.
func orgOf(id spiffeid.ID) string {
	org, _, _ := strings.Cut(strings.TrimPrefix(id.Path(), "/"), "/")
	return org
}
