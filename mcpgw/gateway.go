package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/gatewayadmin"
	"github.com/umbra-mesh/umbra/mcpgw/approval"
	"github.com/umbra-mesh/umbra/mcpgw/internal/kv"
	"github.com/umbra-mesh/umbra/mcpgw/pin"
	"github.com/umbra-mesh/umbra/mcpgw/policy"
	"github.com/umbra-mesh/umbra/mcpgw/scan"
)

const (
	version = "0.1.0"
	// selfID is the actor of records the gateway makes on its own account (tool pins) when Config.Self is unset.
	selfID      = "spiffe://umbra.invalid/mcpgw"
	callerIdle  = 10 * time.Minute
	sessionIdle = 30 * time.Minute
)

// Gateway is an MCP gateway: create it with New, start it with Run, serve Handler.
type Gateway struct {
	cfg     Config
	log     *slog.Logger
	sdkLog  *slog.Logger // for the SDK's own messages
	self    string
	scanner *scan.Scanner
	policy  atomic.Pointer[policy.Engine]
	catalog *catalog
	backs   []*backendConn
	limits  *limiter
	metrics *metrics
	promReg *prometheus.Registry // private registry, or nil
	grant   *gatewayadmin.Authorizer
	mcp     *mcp.StreamableHTTPHandler
	handler http.Handler

	// set up by New (in memory) or Run (JetStream)
	pins      *pin.Store
	approvals *approval.Manager

	progress progressTable
	carriers carriers

	dirMu sync.Mutex
	dir   map[string]dirEntry

	callersMu sync.Mutex
	callers   map[string]*caller

	auditMu sync.RWMutex
	auditOn bool
	audits  chan audit.Record
	held    audit.Held    // records of what already happened whose append never reached the trail
	outbox  *audit.Outbox // writes records of what already happened, holding them in held when need be

	reportMu sync.Mutex
	reported [32]byte // digest of the last inventory reported

	trace tracing

	ready   chan struct{}
	upCh    chan struct{} // a backend connected
	running atomic.Bool
}

// quiet passes on records at or above min: the SDK logs every session, which is request detail, not state.
type quiet struct {
	slog.Handler
	min slog.Level
}

func (h quiet) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h quiet) WithAttrs(as []slog.Attr) slog.Handler { return quiet{h.Handler.WithAttrs(as), h.min} }
func (h quiet) WithGroup(name string) slog.Handler    { return quiet{h.Handler.WithGroup(name), h.min} }

type dirEntry struct {
	p  Principal
	at time.Time
}

// New checks cfg and builds a gateway. Nothing runs until Run.
func New(cfg Config) (*Gateway, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("mcpgw: config: %w", err)
	}
	eng, err := policy.Parse(cfg.Policies)
	if err != nil {
		return nil, fmt.Errorf("mcpgw: %w", err)
	}
	g := &Gateway{cfg: cfg, log: cfg.Logger, sdkLog: slog.New(quiet{cfg.Logger.Handler(), slog.LevelWarn}), self: selfID, scanner: scan.New(), catalog: newCatalog(),
		limits: newLimiter(cfg.Limits), dir: map[string]dirEntry{},
		callers: map[string]*caller{}, audits: make(chan audit.Record, 1024), held: audit.Held{Max: heldRecords},
		ready: make(chan struct{}), upCh: make(chan struct{}, 1)}
	if !cfg.Self.IsZero() {
		g.self = cfg.Self.String()
	}
	g.outbox = &audit.Outbox{Held: &g.held, Writer: cfg.Auditor, Bounded: g.appendTimed, Timeout: cfg.AuditTimeout, Log: g.log,
		Name: "mcpgw", Lost: g.lost}
	g.trace = newTracing(cfg.TracerProvider)
	g.policy.Store(eng)
	if g.grant, err = gatewayadmin.NewAuthorizer(gatewayadmin.Grant{Gateway: cfg.Self, Admins: cfg.Admins, Orgs: cfg.AdminOrgs,
		Policies: cfg.AdminPolicies}); err != nil {
		return nil, fmt.Errorf("mcpgw: %w", err)
	}
	reg := cfg.Registry
	if reg == nil {
		g.promReg = prometheus.NewRegistry()
		reg = g.promReg
	}
	if g.metrics, err = newMetrics(reg); err != nil {
		return nil, fmt.Errorf("mcpgw: %w", err)
	}
	if cfg.State == nil {
		g.pins = pin.NewStore(kv.Memory())
		g.approvals = approval.New(kv.Memory(), approval.Config{Timeout: cfg.Approvals.Timeout, TTL: cfg.Approvals.TTL})
	}
	for _, b := range cfg.Backends {
		g.backs = append(g.backs, newBackend(g, b))
	}
	g.mcp = mcp.NewStreamableHTTPHandler(g.serverFor, &mcp.StreamableHTTPOptions{
		Logger:              g.sdkLog,
		SessionTimeout:      sessionIdle,
		MaxRequestBodyBytes: -1, // serveMCP bounds the body and answers with a JSON-RPC error
	})
	g.handler = g.routes()
	return g, nil
}

// Run opens the state buckets, connects the backends (reconnecting on failure) and serves until ctx ends.
// Ready is closed once every backend has been tried once. Run returns nil when ctx ends.
func (g *Gateway) Run(ctx context.Context) error {
	if !g.running.CompareAndSwap(false, true) {
		return errors.New("mcpgw: Run called twice")
	}
	if g.cfg.State != nil {
		pins, err := kv.JetStream(ctx, g.cfg.State, g.cfg.BucketPrefix+"pins")
		if err != nil {
			return fmt.Errorf("mcpgw: %w", err)
		}
		apr, err := kv.JetStream(ctx, g.cfg.State, g.cfg.BucketPrefix+"approvals")
		if err != nil {
			return fmt.Errorf("mcpgw: %w", err)
		}
		g.pins = pin.NewStore(pins)
		if g.cfg.Auditor != nil {
			b, err := audit.OpenHeldBucket(ctx, g.cfg.State, g.cfg.BucketPrefix+"audit_held")
			if err != nil {
				return fmt.Errorf("mcpgw: %w", err)
			}
			n, err := g.held.Open(ctx, b)
			if n > 0 {
				g.log.Warn("mcpgw: audit records held by an earlier run; appending them once the controller is reached", "records", n)
			}
			if err != nil {
				g.log.Error("mcpgw: held audit records left unread", "err", err)
			}
		}
		g.approvals = approval.New(apr, approval.Config{Timeout: g.cfg.Approvals.Timeout, TTL: g.cfg.Approvals.TTL,
			Poll: 500 * time.Millisecond})
	}

	actx, stopAudit := context.WithCancel(context.Background())
	auditDone := make(chan struct{})
	g.auditMu.Lock()
	g.auditOn = g.cfg.Auditor != nil
	g.auditMu.Unlock()
	if g.cfg.Auditor != nil {
		go g.auditWorker(actx, auditDone)
	} else {
		close(auditDone)
	}
	defer func() { stopAudit(); <-auditDone }()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var tried sync.WaitGroup
	tried.Add(len(g.backs))
	for _, b := range g.backs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.run(ctx, tried.Done)
		}()
	}
	allTried := make(chan struct{})
	go func() {
		tried.Wait()
		close(allTried)
	}()
	startFailed := make(chan error, 1)
	go g.awaitBackends(ctx, allTried, startFailed)
	stop := func() {
		cancel()
		wg.Wait()
		for _, b := range g.backs {
			b.closeSpawned()
		}
	}

	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			stop()
			return nil
		case err := <-startFailed:
			stop()
			return err
		case <-tick.C:
			g.evictIdle(callerIdle)
			g.limits.prune()
			g.pruneDirectory()
		}
	}
}

// Ready is closed when the gateway serves: every backend has been tried once and at least one is connected.
// Run returns an error instead if no backend connects within Config.StartTimeout.
func (g *Gateway) Ready() <-chan struct{} { return g.ready }

// Handler serves the MCP endpoint (streamable HTTP) at "/", the administration API under "/admin/" (see
// admin.go) and, with the private metrics registry, "/metrics" to administrators. Until Ready it answers 503.
func (g *Gateway) Handler() http.Handler { return g.handler }

// MetricsHandler serves the private metrics registry without authentication, for an operator to expose where
// only the operator can reach it. It is nil when Config.Registry was given.
func (g *Gateway) MetricsHandler() http.Handler {
	if g.promReg == nil {
		return nil
	}
	return promhttp.HandlerFor(g.promReg, promhttp.HandlerOpts{})
}

// SetPolicies replaces the Cedar policies. The new text's version binds approvals given from then on:
// approvals given under the old policies no longer apply. by names who changed them, for the audit record.
func (g *Gateway) SetPolicies(ctx context.Context, text string, by spiffeid.ID) error {
	eng, err := policy.Parse(text)
	if err != nil {
		return fmt.Errorf("mcpgw: %w", err)
	}
	old := g.policy.Swap(eng)
	actor := g.self
	if !by.IsZero() {
		actor = by.String()
	}
	data, _ := json.Marshal(map[string]string{"previous": old.Version()})
	g.record(ctx, audit.Record{Kind: KindPolicyChanged, Actor: actor, PolicyVersion: eng.Version(),
		Reason: "MCP gateway policies replaced", Data: data})
	g.log.Info("mcpgw: policies replaced", "version", eng.Version())
	g.changed()
	return nil
}

func (g *Gateway) engine() *policy.Engine { return g.policy.Load() }

// principal looks a caller up, through a short-lived cache.
func (g *Gateway) principal(ctx context.Context, id spiffeid.ID) (Principal, error) {
	key := id.String()
	g.dirMu.Lock()
	e, ok := g.dir[key]
	g.dirMu.Unlock()
	if ok && time.Since(e.at) < g.cfg.DirectoryTTL {
		return e.p, nil
	}
	var p Principal
	if g.cfg.Directory == nil {
		p = Principal{ID: id}
		if segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/"); segs[0] != "" {
			p.Org = segs[0]
		}
	} else {
		var err error
		if p, err = g.cfg.Directory.Lookup(ctx, id); err != nil {
			return Principal{}, fmt.Errorf("mcpgw: look up %s: %w", id, err)
		}
		if p.ID != id { // a directory answering for someone else is not trusted
			return Principal{}, fmt.Errorf("mcpgw: directory answered for %s when asked for %s", p.ID, id)
		}
	}
	g.dirMu.Lock()
	g.dir[key] = dirEntry{p: p, at: time.Now()}
	g.dirMu.Unlock()
	return p, nil
}

func (g *Gateway) pruneDirectory() {
	g.dirMu.Lock()
	defer g.dirMu.Unlock()
	for k, e := range g.dir {
		if time.Since(e.at) > g.cfg.DirectoryTTL {
			delete(g.dir, k)
		}
	}
}

// access says what id may administer here (package gatewayadmin): the zero Access, which grants nothing, when
// the directory cannot tell.
func (g *Gateway) access(ctx context.Context, id spiffeid.ID) gatewayadmin.Access {
	p, err := g.principal(ctx, id)
	if err != nil {
		return gatewayadmin.Access{Reason: "the administrator cannot be looked up now; try again"}
	}
	return g.grant.Access(gatewayadmin.Caller{ID: id, Org: p.Org, Admin: p.Admin, Revoked: p.Revoked})
}

// adminCaller is what the directory says of id, for the administration policies; the zero Org and Admin when it
// cannot tell (which the policies grant nothing).
func (g *Gateway) adminCaller(ctx context.Context, id spiffeid.ID) gatewayadmin.Caller {
	p, err := g.principal(ctx, id)
	if err != nil {
		return gatewayadmin.Caller{ID: id}
	}
	return gatewayadmin.Caller{ID: id, Org: p.Org, Admin: p.Admin, Revoked: p.Revoked}
}

// orgOf is the organisation of a caller, from the directory; "" (which no access covers) when it cannot tell.
func (g *Gateway) orgOf(ctx context.Context, caller string) string {
	id, err := spiffeid.FromString(caller)
	if err != nil {
		return ""
	}
	p, err := g.principal(ctx, id)
	if err != nil {
		return ""
	}
	return p.Org
}

// Backends reports the state of every backend, in configuration order, with the counts of its pinned tools.
func (g *Gateway) Backends(ctx context.Context) ([]BackendStatus, error) {
	if err := g.started(); err != nil {
		return nil, err
	}
	pins, err := g.pins.All(ctx)
	if err != nil {
		return nil, fmt.Errorf("mcpgw: tool pins: %w", err)
	}
	return g.backendStates(pins), nil
}

func (g *Gateway) backendStates(pins []pin.Record) []BackendStatus {
	out := make([]BackendStatus, 0, len(g.backs))
	for _, b := range g.backs {
		out = append(out, b.status(pins))
	}
	return out
}

// backendUp wakes Run while it waits for a first backend.
func (g *Gateway) backendUp() {
	select {
	case g.upCh <- struct{}{}:
	default:
	}
}

// awaitBackends closes ready once every backend has been tried and one serves, or reports on failed why none
// served within StartTimeout, naming each backend.
func (g *Gateway) awaitBackends(ctx context.Context, tried <-chan struct{}, failed chan<- error) {
	select {
	case <-tried:
	case <-ctx.Done():
		return
	}
	deadline := time.NewTimer(g.cfg.StartTimeout)
	defer deadline.Stop()
	for {
		states := g.backendStates(nil)
		var up []string
		var down []any
		for _, st := range states {
			if st.listed {
				up = append(up, st.Name)
			} else {
				down = append(down, slog.String(st.Name, st.LastError))
			}
		}
		if len(up) > 0 {
			close(g.ready)
			g.log.Info("mcpgw: ready", "backends", len(states), "connected", strings.Join(up, ","))
			if len(down) > 0 {
				g.log.Warn("mcpgw: backends unavailable at start, retrying", down...)
			}
			return
		}
		select {
		case <-g.upCh:
		case <-ctx.Done():
			return
		case <-deadline.C:
			var why []string
			for _, st := range g.backendStates(nil) {
				reason := st.LastError
				if reason == "" {
					reason = "not connected yet"
				}
				why = append(why, st.Name+" ("+st.Kind+"): "+reason)
			}
			failed <- fmt.Errorf("mcpgw: no backend available after %s: %s", g.cfg.StartTimeout, strings.Join(why, "; "))
			return
		}
	}
}

// Tools returns the tools caller may see now, as tools/list would show them, or an error wrapping
// ErrNotAuthorized for a caller with no grant at all.
func (g *Gateway) Tools(ctx context.Context, id spiffeid.ID) ([]*mcp.Tool, error) {
	c := g.callerFor(ctx, id)
	c.sync(ctx)
	if c.unavailable.Load() {
		return nil, errors.New("mcpgw: cannot look the caller up now")
	}
	if !c.granted.Load() {
		return nil, fmt.Errorf("%w: no MCP grant for %s", ErrNotAuthorized, id)
	}
	return c.visibleTools(), nil
}

// progressTable maps the progress tokens the gateway gives backends to the client sessions and tokens they
// stand for.
type progressTable struct {
	mu sync.Mutex
	n  uint64
	m  map[string]progressEntry
}

type progressEntry struct {
	ss    *mcp.ServerSession
	token any
	ctx   context.Context
}

func (t *progressTable) add(ctx context.Context, ss *mcp.ServerSession, token any) (string, func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]progressEntry{}
	}
	t.n++
	key := fmt.Sprintf("umbra-%d", t.n)
	t.m[key] = progressEntry{ss: ss, token: token, ctx: ctx}
	return key, func() {
		t.mu.Lock()
		delete(t.m, key)
		t.mu.Unlock()
	}
}

func (t *progressTable) get(key string) (progressEntry, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[key]
	return e, ok
}
