package mcpgw

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/gatewayadmin"
)

// Config configures a Gateway. It is copied by New; the zero value of each field selects the default named.
type Config struct {
	// Backends are the MCP servers behind the gateway. At least one; names unique.
	Backends []Backend
	// Separator joins a backend name and a tool or prompt name: "<backend><sep><tool>". Default "__".
	// It may not occur in any backend name, so that exposed names never collide.
	Separator string
	// Policies is the Cedar policy text (see package policy for the model). Empty permits nothing.
	Policies string
	// Sensitive lists exposed tool names (path.Match patterns, e.g. "bank__*") whose calls need an approval
	// whatever the policies say. Policies mark calls sensitive with a @sensitive permit.
	Sensitive []string
	// Approvals tunes human approvals of sensitive calls.
	Approvals Approvals
	// Limits bounds what each caller may do.
	Limits Limits
	// Identify returns the caller's verified SPIFFE ID. An error answers 401. Default: the SPIFFE ID of the
	// client certificate that mutual TLS verified (r.TLS.PeerCertificates[0]).
	Identify func(*http.Request) (spiffeid.ID, error)
	// Directory looks callers up (organisation, administrator flag, active workgroups). Default: the
	// organisation is the first path segment of the SPIFFE ID, no workgroups, not an administrator.
	Directory Directory
	// DirectoryTTL is how long a lookup is reused. Default 15 seconds.
	DirectoryTTL time.Duration
	// Auditor receives one record per decision. A tool call, prompt get or resource read is forwarded only
	// after the Auditor has confirmed its record; one whose record cannot be written is refused with
	// CodeAuditUnavailable. Default: none (records are dropped and nothing is refused for want of them).
	Auditor Auditor
	// AuditTimeout is how long the gateway waits for the Auditor to confirm a record; a request whose record
	// is not confirmed in time is refused. Default 10 seconds.
	AuditTimeout time.Duration
	// AuditArguments puts the call arguments (secrets redacted) into audit records; by default only their
	// digest is recorded.
	AuditArguments bool
	// State keeps tool pins and call approvals in JetStream KV buckets, shared by gateway replicas and kept
	// across restarts. Default nil: in memory.
	State jetstream.JetStream
	// BucketPrefix prefixes the KV bucket names ("<prefix>pins", "<prefix>approvals", and "<prefix>audit_held":
	// records of what already happened kept while the Auditor cannot be reached). Default "umbra_mcpgw_".
	BucketPrefix string
	// Admins administer the gateway fully, whatever the Directory says of them: tool versions, every
	// organisation's held calls, backends and metrics. Besides them, administrators as the Directory marks them
	// administer the gateway when they are the platform administrator (everything) or administrators of the
	// gateway's own organisation, the first path segment of Self (tool versions, backends, metrics, and the held
	// calls of their organisation's callers). Default: none besides those.
	Admins []spiffeid.ID
	// AdminOrgs are further organisations whose administrators administer this gateway, each for the held calls
	// of its own organisation's callers only (not tool versions, backends or metrics). Default: none.
	AdminOrgs []string
	// AdminPolicies is Cedar text added to the built-in administration policies (package gatewayadmin): a forbid
	// takes a default grant away (say, approve_call of one tool), a permit adds one. Default: none.
	AdminPolicies string
	// RefreshInterval is how often every backend's lists are fetched again, which catches definitions changed
	// without a list_changed notification. Default 1 minute.
	RefreshInterval time.Duration
	// KeepAlive is the interval of pings to backends; a backend that misses one is reconnected. Default 15
	// seconds; negative disables.
	KeepAlive time.Duration
	// Service is the overlay service callers reach the gateway by, for its report to the controller (posture
	// judges the use of dial grants of it). Default none.
	Service string
	// Self is the gateway's own SPIFFE ID, the actor of the records it makes on its own account (tool pins); its
	// organisation's administrators administer the gateway (see Admins). Default spiffe://umbra.invalid/mcpgw,
	// with no organisation of its own: only Admins, AdminOrgs and the platform administrator administer it.
	Self spiffeid.ID
	// StartTimeout is how long Run waits, while it retries, for a first backend to connect. Ready is closed
	// only once every backend has been tried and at least one serves; if none does within StartTimeout, Run
	// returns an error naming each backend and why it failed. Default 30 seconds.
	StartTimeout time.Duration
	// Logger receives state changes. Default: discard.
	Logger *slog.Logger
	// TracerProvider receives an mcp.<method> span per JSON-RPC request (a child of the W3C traceparent of the
	// HTTP request that carried it, if any), with a child span per call forwarded to a backend. Nil traces
	// nothing, at no cost.
	TracerProvider trace.TracerProvider
	// Registry receives the gateway's metrics. Default: a private registry, served by Handler at /metrics (to
	// administrators), by MetricsHandler and on MetricsListen.
	Registry prometheus.Registerer
	// MetricsListen is a HOST:PORT on which ServeMetrics serves the metrics over plain HTTP at /metrics, to
	// whoever reaches it; it needs the private registry. It must be a loopback address unless
	// MetricsAllowRemote is set. Default: none (metrics only through Handler, to administrators).
	MetricsListen string
	// MetricsAllowRemote lets MetricsListen be an address other hosts can reach: the metrics name every caller,
	// backend and tool. Default false.
	MetricsAllowRemote bool
}

// Backend is one MCP server behind the gateway.
type Backend struct {
	// Name is [a-z][a-z0-9-]*, at most 32 characters. Tools appear as "<name><sep><tool>", resources as
	// "<name>+<uri>".
	Name string
	// Trusted backends have their tool, prompt and resource definitions approved on first sight, unless the
	// scanner flags them. The default, false, holds every new definition for an administrator. A change after
	// approval is always held.
	Trusted bool
	// Connect returns a fresh transport to the server, once per connection attempt: an mcp.CommandTransport
	// for a stdio server, an mcp.StreamableClientTransport for an HTTP one (with an http.Client that dials the
	// overlay for a dark server). The gateway reconnects with backoff when the connection fails.
	Connect func(ctx context.Context) (mcp.Transport, error)
	// Spawn is SpawnShared (default) for one session shared by all callers, or SpawnPerClient for one
	// session per client session (for servers that keep per-user state); the shared session then only
	// serves listings.
	Spawn string
	// Kind says how the server is reached, for operators ("stdio", "http", "overlay"); the gateway only
	// reports it. Default "custom".
	Kind string
	// Service is the overlay service of a dark server (Kind "overlay"), for the gateway's report to the
	// controller (posture checks who else may dial it). Default none.
	Service string
}

// Spawn modes.
const (
	SpawnShared    = "shared"
	SpawnPerClient = "per-client"
)

// Approvals tunes human approvals.
type Approvals struct {
	Timeout time.Duration // how long a sensitive call waits for a decision; then it is denied. Default 2 minutes.
	TTL     time.Duration // how long an approval may be used after it is given. Default 10 minutes.
	// Hold is how long a sensitive call is held open for the decision. A call still undecided then is answered
	// "no decision yet" with the request's ID, which stays pending: a retry naming it (in _meta
	// "umbra/approval") or with the same arguments goes on with the decision. Default (0): held until decided
	// or Timeout. A call cancelled while held withdraws its request whatever Hold says.
	Hold time.Duration
}

// Limits bound each caller. Zero values select the defaults; negative values disable a limit.
type Limits struct {
	CallsPerMinute int           // tool calls, prompt gets and resource reads per caller. Default 120.
	Burst          int           // calls allowed at once before the rate applies. Default CallsPerMinute.
	Concurrent     int           // calls in flight per caller. Default 8.
	CallTimeout    time.Duration // per forwarded call. Default 60 seconds.
	MaxRequest     int64         // bytes of one HTTP request body. Default 1 MiB.
	MaxResponse    int64         // bytes of one result (JSON). Default 4 MiB.
}

// Principal is what the Directory knows of a caller.
type Principal struct {
	ID         spiffeid.ID
	Org        string
	Admin      bool
	Revoked    bool     // a revoked caller is refused everything
	Workgroups []string // active workgroups, "org/name"
}

// Directory looks callers up.
type Directory interface {
	Lookup(ctx context.Context, id spiffeid.ID) (Principal, error)
}

// Auditor appends records to the audit trail.
type Auditor interface {
	Append(ctx context.Context, r audit.Record) error
}

var backendName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// withDefaults validates c and fills in defaults.
func (c Config) withDefaults() (Config, error) {
	if len(c.Backends) == 0 {
		return c, errors.New("no backends")
	}
	if c.Separator == "" {
		c.Separator = "__"
	}
	if strings.ContainsAny(c.Separator, "+ /") {
		return c, fmt.Errorf("separator %q: may not contain '+', '/' or spaces", c.Separator)
	}
	seen := make(map[string]bool)
	c.Backends = append([]Backend(nil), c.Backends...)
	for i, b := range c.Backends {
		switch {
		case !backendName.MatchString(b.Name):
			return c, fmt.Errorf("backend %q: name must be [a-z][a-z0-9-]*, at most 32 characters", b.Name)
		case seen[b.Name]:
			return c, fmt.Errorf("backend %q given twice: its tools would collide", b.Name)
		case strings.Contains(b.Name, c.Separator):
			return c, fmt.Errorf("backend %q contains the separator %q: exposed names could collide", b.Name, c.Separator)
		case b.Connect == nil:
			return c, fmt.Errorf("backend %q: no Connect", b.Name)
		}
		seen[b.Name] = true
		if b.Kind == "" {
			c.Backends[i].Kind = "custom"
		}
		switch b.Spawn {
		case "":
			c.Backends[i].Spawn = SpawnShared
		case SpawnShared, SpawnPerClient:
		default:
			return c, fmt.Errorf("backend %q: spawn %q: want %q or %q", b.Name, b.Spawn, SpawnShared, SpawnPerClient)
		}
	}
	if err := (gatewayadmin.Grant{Orgs: c.AdminOrgs}).Check(); err != nil {
		return c, err
	}
	c.Admins, c.AdminOrgs = slices.Clone(c.Admins), slices.Clone(c.AdminOrgs)
	for _, p := range c.Sensitive {
		if _, err := path.Match(p, ""); err != nil {
			return c, fmt.Errorf("sensitive pattern %q: %w", p, err)
		}
	}
	if c.Identify == nil {
		c.Identify = PeerID
	}
	if c.AuditTimeout <= 0 {
		c.AuditTimeout = 10 * time.Second
	}
	if c.DirectoryTTL <= 0 {
		c.DirectoryTTL = 15 * time.Second
	}
	if c.BucketPrefix == "" {
		c.BucketPrefix = "umbra_mcpgw_"
	}
	if c.RefreshInterval <= 0 {
		c.RefreshInterval = time.Minute
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = 15 * time.Second
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if err := checkMetricsListen(c.MetricsListen, c.MetricsAllowRemote); err != nil {
		return c, err
	}
	if c.MetricsListen != "" && c.Registry != nil {
		return c, errors.New("metrics listen address set with a registry of your own: serve that registry yourself")
	}
	l := &c.Limits
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.CallsPerMinute, 120)
	def(&l.Burst, max(l.CallsPerMinute, 1))
	def(&l.Concurrent, 8)
	if l.CallTimeout == 0 {
		l.CallTimeout = 60 * time.Second
	}
	if l.MaxRequest == 0 {
		l.MaxRequest = 1 << 20
	}
	if l.MaxResponse == 0 {
		l.MaxResponse = 4 << 20
	}
	return c, nil
}

// PeerID is the default Config.Identify: the SPIFFE ID in the client certificate of the TLS connection. The
// server's TLS configuration must verify that certificate (go-spiffe's tlsconfig.MTLSServerConfig does, in
// VerifyPeerCertificate, which leaves VerifiedChains empty).
func PeerID(r *http.Request) (spiffeid.ID, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("no verified client certificate")
	}
	return idFromCert(r.TLS.PeerCertificates[0])
}

func idFromCert(c *x509.Certificate) (spiffeid.ID, error) {
	id, err := x509svid.IDFromCert(c)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("client certificate: %w", err)
	}
	return id, nil
}
