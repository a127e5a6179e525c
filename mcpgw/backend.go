package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/mcpgw/pin"
	"github.com/umbra-mesh/umbra/mcpgw/redact"
)

const (
	// backendProtocol is the MCP version the gateway speaks to backends: sessions with notifications.
	backendProtocol = "2025-11-25"
	connectTimeout  = 30 * time.Second
	minBackoff      = 100 * time.Millisecond
	maxBackoff      = 30 * time.Second
)

var errBackendDown = errors.New("backend unavailable")

// backendConn keeps the gateway's session with one backend: it connects, lists what the backend serves,
// refreshes on list_changed notifications and periodically, and reconnects with backoff when the session ends.
type backendConn struct {
	g      *Gateway
	cfg    Backend
	client *mcp.Client

	refreshCh chan struct{}

	mu        sync.Mutex
	cs        *mcp.ClientSession // nil while down
	lastErr   string
	failing   bool // the last attempt failed: logged once, not at every retry
	listed    bool // connected and what it serves is listed: the gateway may report ready
	perClient map[*mcp.ServerSession]*spawned
	flights   map[uint64]flight // calls in flight, for log forwarding
	nflight   uint64
	subs      map[string]int // resource subscriptions on the shared session: callers' subscriptions by backend URI
}

type flight struct {
	ss  *mcp.ServerSession
	ctx context.Context
}

func newBackend(g *Gateway, cfg Backend) *backendConn {
	b := &backendConn{g: g, cfg: cfg, refreshCh: make(chan struct{}, 1),
		perClient: map[*mcp.ServerSession]*spawned{}, flights: map[uint64]flight{}, subs: map[string]int{}}
	keepAlive := g.cfg.KeepAlive
	if keepAlive < 0 {
		keepAlive = 0
	}
	b.client = mcp.NewClient(&mcp.Implementation{Name: "umbra-mcpgw", Version: version}, &mcp.ClientOptions{
		Logger:                      g.sdkLog.With("backend", cfg.Name),
		ToolListChangedHandler:      func(context.Context, *mcp.ToolListChangedRequest) { b.poke() },
		PromptListChangedHandler:    func(context.Context, *mcp.PromptListChangedRequest) { b.poke() },
		ResourceListChangedHandler:  func(context.Context, *mcp.ResourceListChangedRequest) { b.poke() },
		ProgressNotificationHandler: b.onProgress,
		LoggingMessageHandler:       b.onLog,
		CreateMessageHandler:        b.onCreateMessage, // forwarded to the caller whose call caused it (backendreq.go)
		ElicitationHandler:          b.onElicit,
		ResourceUpdatedHandler:      b.onResourceUpdated, // subscribe.go
		KeepAlive:                   keepAlive,
		Capabilities:                &mcp.ClientCapabilities{}, // no roots; sampling and elicitation inferred from the handlers
	})
	return b
}

// poke asks for a refresh; notifications arrive on the session's reader, which must not block on it.
func (b *backendConn) poke() {
	select {
	case b.refreshCh <- struct{}{}:
	default:
	}
}

func (b *backendConn) dial(ctx context.Context) (*mcp.ClientSession, error) {
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	t, err := b.cfg.Connect(cctx)
	if err != nil {
		return nil, fmt.Errorf("transport: %w", err)
	}
	cs, err := b.client.Connect(cctx, t, &mcp.ClientSessionOptions{ProtocolVersion: backendProtocol})
	if err != nil {
		return nil, fmt.Errorf("initialize: %w", err)
	}
	if caps := cs.InitializeResult().Capabilities; caps != nil && caps.Logging != nil {
		_ = cs.SetLoggingLevel(cctx, &mcp.SetLoggingLevelParams{Level: "debug"})
	}
	return cs, nil
}

// run keeps the backend connected until ctx ends. first is signalled after the first attempt.
func (b *backendConn) run(ctx context.Context, first func()) {
	defer func() {
		if first != nil {
			first()
		}
	}()
	backoff := minBackoff
	for ctx.Err() == nil {
		cs, err := b.dial(ctx)
		if err == nil {
			b.setUp(cs) // before the tools are published: a call may follow at once
			if err = b.refresh(ctx, cs); err != nil {
				cs.Close()
			}
		}
		if err != nil && ctx.Err() == nil {
			b.g.metrics.reconnects.WithLabelValues(b.cfg.Name, "failed").Inc()
			b.setDown(err)
		}
		if first != nil { // after setDown: whoever waits for the first attempt learns why it failed
			first()
			first = nil
		}
		if err != nil {
			// Jitter spreads the reconnections of many gateways to one backend.
			d := backoff/2 + rand.N(backoff/2+1)
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		b.resubscribe(ctx, cs)
		b.mu.Lock()
		b.listed = true
		b.mu.Unlock()
		b.g.backendUp()
		b.g.metrics.reconnects.WithLabelValues(b.cfg.Name, "connected").Inc()
		err = b.serve(ctx, cs)
		b.setDown(err)
	}
}

func (b *backendConn) setUp(cs *mcp.ClientSession) {
	b.mu.Lock()
	b.cs, b.lastErr, b.failing = cs, "", false
	b.mu.Unlock()
	b.g.metrics.backendUp.WithLabelValues(b.cfg.Name).Set(1)
	b.g.log.Info("mcpgw: backend connected", "backend", b.cfg.Name, "server", serverName(cs))
}

func serverName(cs *mcp.ClientSession) string {
	if r := cs.InitializeResult(); r != nil && r.ServerInfo != nil {
		return r.ServerInfo.Name
	}
	return ""
}

func (b *backendConn) setDown(err error) {
	b.mu.Lock()
	wasUp, wasFailing := b.cs != nil, b.failing
	b.cs, b.listed = nil, false
	if err != nil {
		b.lastErr = redact.String(err.Error())
	}
	b.failing = !wasUp
	lastErr := b.lastErr
	b.mu.Unlock()
	b.g.metrics.backendUp.WithLabelValues(b.cfg.Name).Set(0)
	switch {
	case wasUp:
		b.g.log.Warn("mcpgw: backend disconnected", "backend", b.cfg.Name, "err", lastErr)
	case !wasFailing:
		b.g.log.Warn("mcpgw: backend unavailable, retrying", "backend", b.cfg.Name, "kind", b.cfg.Kind, "err", lastErr)
	}
	if b.g.catalog.drop(b.cfg.Name) {
		b.g.changed()
	}
}

// serve waits for the session to end, refreshing the lists when asked and periodically.
func (b *backendConn) serve(ctx context.Context, cs *mcp.ClientSession) error {
	ended := make(chan error, 1)
	go func() { ended <- cs.Wait() }()
	tick := time.NewTicker(b.g.cfg.RefreshInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			cs.Close()
			return ctx.Err()
		case err := <-ended:
			if err == nil {
				err = errors.New("session closed")
			}
			return err
		case <-b.refreshCh:
		case <-tick.C:
		}
		if err := b.refresh(ctx, cs); err != nil {
			b.g.log.Warn("mcpgw: backend refresh failed", "backend", b.cfg.Name, "err", redact.String(err.Error()))
			if !isRPCError(err) {
				cs.Close() // the session is broken: reconnect
			}
		}
	}
}

func isRPCError(err error) bool {
	var we *jsonrpc.Error
	return errors.As(err, &we)
}

// broken reports that a call on cs failed in transport: the session is closed so that run reconnects.
func (b *backendConn) broken(cs *mcp.ClientSession) {
	b.mu.Lock()
	shared := cs == b.cs
	b.mu.Unlock()
	if shared {
		cs.Close()
	}
}

// refresh lists what the backend serves, pins tool definitions and publishes the result.
func (b *backendConn) refresh(ctx context.Context, cs *mcp.ClientSession) error {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	caps := cs.InitializeResult().Capabilities
	if caps == nil {
		caps = &mcp.ServerCapabilities{}
	}
	it := newItems()
	g := b.g
	if caps.Tools != nil {
		for t, err := range cs.Tools(ctx, nil) {
			if err != nil {
				return fmt.Errorf("tools/list: %w", err)
			}
			if e := b.toolEntry(ctx, t); e != nil {
				if _, dup := it.tools[e.name]; !dup {
					it.tools[e.name] = e
				}
			}
		}
	}
	if caps.Prompts != nil {
		for p, err := range cs.Prompts(ctx, nil) {
			if err != nil {
				return fmt.Errorf("prompts/list: %w", err)
			}
			if !toolName.MatchString(p.Name) {
				continue
			}
			e, err := b.promptEntry(ctx, cs, p)
			if err != nil {
				return err
			}
			it.prompts[e.name] = e
		}
	}
	if caps.Resources != nil {
		for r, err := range cs.Resources(ctx, nil) {
			if err != nil {
				return fmt.Errorf("resources/list: %w", err)
			}
			if !uriScheme.MatchString(r.URI) {
				continue
			}
			e, err := b.resourceEntry(ctx, cs, r)
			if err != nil {
				return err
			}
			it.resources[e.uri] = e
		}
		for r, err := range cs.ResourceTemplates(ctx, nil) {
			if err != nil {
				return fmt.Errorf("resources/templates/list: %w", err)
			}
			if !uriScheme.MatchString(r.URITemplate) {
				continue
			}
			e := b.templateEntry(ctx, r)
			it.resources[e.uri] = e
		}
	}
	g.catalog.set(b.cfg.Name, it)
	g.changed()
	return nil
}

// toolEntry pins a tool definition and describes it, or returns nil for a tool that cannot be exposed.
func (b *backendConn) toolEntry(ctx context.Context, t *mcp.Tool) *toolEntry {
	g := b.g
	if !toolName.MatchString(t.Name) {
		g.log.Warn("mcpgw: tool with an invalid name not exposed", "backend", b.cfg.Name, "tool", clip(t.Name))
		return nil
	}
	name := g.exposedName(b.cfg.Name, t.Name)
	e := &toolEntry{backend: b, name: name, def: t, state: pin.Pending, item: g.toolItem(b.cfg.Name, name, t)}
	def, err := json.Marshal(t)
	if err != nil {
		g.log.Warn("mcpgw: tool definition not encodable", "backend", b.cfg.Name, "tool", t.Name, "err", err)
		return e
	}
	e.findings = g.scanner.Definition(def)
	obs, err := g.pins.Observe(ctx, pin.Ref{Kind: pin.Tool, Backend: b.cfg.Name, Name: t.Name}, def, e.findings, b.cfg.Trusted)
	if err != nil {
		// Fail closed: a tool whose pin cannot be checked stays hidden.
		g.log.Error("mcpgw: cannot check tool pin", "backend", b.cfg.Name, "tool", t.Name, "err", err)
		return e
	}
	e.digest, e.state = obs.Digest, obs.State
	g.recordPin(ctx, e, obs)
	return e
}

func (g *Gateway) recordPin(ctx context.Context, e *toolEntry, obs pin.Observation) {
	var kind, decision, reason string
	switch obs.Event {
	case pin.Pinned:
		kind, decision, reason = KindToolPinned, audit.DecisionAllow, "first seen; approved: trusted backend, nothing flagged"
	case pin.Held:
		kind, reason = KindToolPinned, "new definition; held for an administrator"
	case pin.Changed:
		kind, decision, reason = KindToolQuarantined, audit.DecisionDeny, "definition changed after approval; quarantined"
	case pin.Restored:
		kind, decision, reason = KindToolRestored, audit.DecisionAllow, "backend serves the approved definition again"
	default:
		return
	}
	if len(e.findings) > 0 {
		reason += fmt.Sprintf("; %d scanner finding(s)", len(e.findings))
	}
	g.log.Info("mcpgw: "+reason, "tool", e.name, "digest", obs.Digest)
	data, _ := json.Marshal(map[string]any{"tool": e.name, "backend": e.backend.cfg.Name, "backend_name": e.def.Name,
		"digest": obs.Digest, "approved": obs.Record.Approved, "state": obs.State, "findings": e.findings})
	g.record(ctx, audit.Record{Kind: kind, Actor: g.self, Decision: decision, Reason: reason, Data: data})
}

// spawned is a backend session opened for one client session. blocked holds the tools whose definitions in
// this session differ from the approved ones: each spawn could serve different definitions.
type spawned struct {
	cs      *mcp.ClientSession
	blocked map[string]bool // backend tool names
}

// session returns the backend session to use for a request from the client session ss, and the tools that
// may not be called on it.
func (b *backendConn) session(ctx context.Context, ss *mcp.ServerSession) (*mcp.ClientSession, map[string]bool, error) {
	b.mu.Lock()
	shared := b.cs
	if b.cfg.Spawn != SpawnPerClient {
		b.mu.Unlock()
		if shared == nil {
			return nil, nil, errBackendDown
		}
		return shared, nil, nil
	}
	sp := b.perClient[ss]
	b.mu.Unlock()
	if sp != nil {
		return sp.cs, sp.blocked, nil
	}
	if shared == nil { // the backend is down: do not spawn per client either
		return nil, nil, errBackendDown
	}
	cs, err := b.dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	blocked, err := b.check(ctx, cs)
	if err != nil {
		cs.Close()
		return nil, nil, err
	}
	b.mu.Lock()
	if other := b.perClient[ss]; other != nil { // lost a race with another request of the same session
		b.mu.Unlock()
		cs.Close()
		return other.cs, other.blocked, nil
	}
	sp = &spawned{cs: cs, blocked: blocked}
	b.perClient[ss] = sp
	b.mu.Unlock()
	go func() {
		ended := make(chan struct{})
		go func() { cs.Wait(); close(ended) }()
		select {
		case <-ended:
		case <-waitSession(ss):
		}
		cs.Close()
		b.mu.Lock()
		if b.perClient[ss] == sp {
			delete(b.perClient, ss)
		}
		b.mu.Unlock()
	}()
	return cs, blocked, nil
}

// check compares the tools of a spawned session with the catalog: each spawn could serve other definitions.
// A tool whose definition differs from the approved one is blocked in this session, and recorded.
func (b *backendConn) check(ctx context.Context, cs *mcp.ClientSession) (map[string]bool, error) {
	blocked := map[string]bool{}
	if caps := cs.InitializeResult().Capabilities; caps == nil || caps.Tools == nil {
		return blocked, nil
	}
	for t, err := range cs.Tools(ctx, nil) {
		if err != nil {
			return nil, fmt.Errorf("tools/list: %w", err)
		}
		known, ok := b.g.catalog.tool(b.g.exposedName(b.cfg.Name, t.Name))
		def, err := json.Marshal(t)
		if err != nil || !ok || known.state != pin.Approved {
			blocked[t.Name] = true
			continue
		}
		if d, _, err := pin.Digest(def); err != nil || d != known.digest {
			blocked[t.Name] = true
			data, _ := json.Marshal(map[string]any{"tool": known.name, "backend": b.cfg.Name, "digest": d, "approved": known.digest})
			b.g.record(ctx, audit.Record{Kind: KindToolQuarantined, Actor: b.g.self, Decision: audit.DecisionDeny,
				Reason: "definition differs in a per-client session; blocked there", Data: data})
		}
	}
	return blocked, nil
}

// closeSpawned closes the sessions spawned per client, at shutdown.
func (b *backendConn) closeSpawned() {
	b.mu.Lock()
	spawned := make([]*spawned, 0, len(b.perClient))
	for _, sp := range b.perClient {
		spawned = append(spawned, sp)
	}
	b.mu.Unlock()
	for _, sp := range spawned {
		sp.cs.Close()
	}
}

func waitSession(ss *mcp.ServerSession) <-chan struct{} {
	ch := make(chan struct{})
	go func() { ss.Wait(); close(ch) }()
	return ch
}

// enter registers a call in flight from client session ss, so that the backend's log messages reach it.
func (b *backendConn) enter(ctx context.Context, ss *mcp.ServerSession) (leave func()) {
	b.mu.Lock()
	b.nflight++
	id := b.nflight
	b.flights[id] = flight{ss: ss, ctx: ctx}
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		delete(b.flights, id)
		b.mu.Unlock()
	}
}

// onLog forwards a backend's log message to the client sessions with calls in flight on it (for a backend
// spawned per client, to its client): log messages carry no request ID, and a shared backend's messages must not
// reach callers that have nothing to do with them.
func (b *backendConn) onLog(_ context.Context, req *mcp.LoggingMessageRequest) {
	p := *req.Params
	p.Logger = b.cfg.Name
	if req.Params.Logger != "" {
		p.Logger += "/" + req.Params.Logger
	}
	b.mu.Lock()
	targets := map[*mcp.ServerSession]context.Context{}
	for ss, sp := range b.perClient {
		if sp.cs == req.Session {
			targets[ss] = context.Background()
		}
	}
	if len(targets) == 0 {
		for _, f := range b.flights {
			if _, ok := targets[f.ss]; !ok {
				targets[f.ss] = f.ctx
			}
		}
	}
	b.mu.Unlock()
	for ss, ctx := range targets {
		_ = ss.Log(ctx, &p)
	}
}

// onProgress forwards a backend's progress notification to the client whose call it is about.
func (b *backendConn) onProgress(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
	tok, ok := req.Params.ProgressToken.(string)
	if !ok {
		return
	}
	e, ok := b.g.progress.get(tok)
	if !ok {
		return
	}
	p := *req.Params
	p.ProgressToken = e.token
	_ = e.ss.NotifyProgress(e.ctx, &p)
}

// status describes the backend for administrators; pins are the pin records of its tools.
func (b *backendConn) status(pins []pin.Record) BackendStatus {
	b.mu.Lock()
	st := BackendStatus{Name: b.cfg.Name, Kind: b.cfg.Kind, Up: b.cs != nil, Trusted: b.cfg.Trusted, Spawn: b.cfg.Spawn,
		LastError: b.lastErr, ClientSessions: len(b.perClient), listed: b.listed}
	b.mu.Unlock()
	switch {
	case st.Up:
		st.State = StateConnected
	case st.LastError != "":
		st.State = StateFailed
	default:
		st.State = StateConnecting
	}
	if it, ok := b.g.catalog.backend(b.cfg.Name); ok {
		for _, e := range it.tools {
			if e.state == pin.Approved {
				st.Tools++
			}
		}
		st.Prompts, st.Resources = len(it.prompts), len(it.resources)
	}
	for _, r := range pins {
		if r.Backend != b.cfg.Name || r.Ref().Kind != pin.Tool {
			continue
		}
		if r.Approved != "" {
			st.Pinned++
		}
		if r.Pending != "" {
			switch r.StateOf(r.Pending) {
			case pin.Quarantined:
				st.Quarantined++
			case pin.Pending:
				st.Held++
			}
		}
	}
	return st
}

// Backend states.
const (
	StateConnecting = "connecting" // not tried yet
	StateConnected  = "connected"
	StateFailed     = "failed" // the last attempt failed (LastError says why); retried with backoff
)

// BackendStatus is what the gateway knows of a backend.
type BackendStatus struct {
	Name           string `json:"name"`
	Kind           string `json:"kind"`  // Backend.Kind: stdio, http, overlay, ...
	State          string `json:"state"` // StateConnecting, StateConnected or StateFailed
	Up             bool   `json:"up"`    // State == StateConnected
	Trusted        bool   `json:"trusted"`
	Spawn          string `json:"spawn"`
	LastError      string `json:"last_error,omitempty"`      // why the last attempt failed, secrets redacted
	ClientSessions int    `json:"client_sessions,omitempty"` // per-client sessions open
	Tools          int    `json:"tools"`                     // approved tools served now, exposed to callers whose policy allows
	Prompts        int    `json:"prompts"`                   // prompts served now
	Resources      int    `json:"resources"`                 // resources and resource templates served now
	Pinned         int    `json:"pinned"`                    // tools with an approved (pinned) definition, served or not
	Quarantined    int    `json:"quarantined"`               // tools whose served definition differs from the pinned one
	Held           int    `json:"held"`                      // new tools awaiting a first approval

	listed bool // Up, and what it serves is listed
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
