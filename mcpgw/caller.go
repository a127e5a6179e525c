package mcpgw

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/mcpgw/pin"
	"github.com/umbra-mesh/umbra/mcpgw/policy"
)

// Structural filtering: every caller identity gets its own mcp.Server holding exactly the tools, prompts and
// resources that caller may see. What a caller may not see is not registered at all, so tools/list omits it
// and tools/call answers with the SDK's own "unknown tool" error, word for word as for a name that never
// existed. Every call decides again on its own; the registration only keeps lists and notifications right:
// when a caller's view changes, the SDK sends it notifications/*/list_changed, and only then.

// caller is one identity's view of the gateway.
type caller struct {
	g        *Gateway
	id       spiffeid.ID
	server   *mcp.Server
	lastUsed atomic.Int64 // unix nanoseconds

	mu          sync.Mutex           // serialises sync
	tools       map[string]*mcp.Tool // registered, by exposed name
	digests     map[string]string    // exposed tool name -> pin digest registered
	prompts     map[string]string    // exposed name -> JSON of the definition registered
	resources   map[string]string    // exposed URI or template -> JSON of the definition registered
	granted     atomic.Bool          // policies permit this caller something
	unavailable atomic.Bool          // the last directory lookup failed
}

func (g *Gateway) newCaller(id spiffeid.ID) *caller {
	c := &caller{g: g, id: id, tools: map[string]*mcp.Tool{}, digests: map[string]string{},
		prompts: map[string]string{}, resources: map[string]string{}}
	subscribe, unsubscribe := g.subscriptionHandlers(c)
	c.server = mcp.NewServer(&mcp.Implementation{Name: "umbra-mcpgw", Title: "Umbra MCP gateway", Version: version}, &mcp.ServerOptions{
		Logger:       g.sdkLog,
		Instructions: "Tools of several MCP servers, as this identity may use them. Names are <server>" + g.cfg.Separator + "<tool>.",
		// Completions are forwarded under the caller's policy (complete.go); the capability is inferred.
		CompletionHandler:  g.completionHandler(c),
		SubscribeHandler:   subscribe, // subscribe.go
		UnsubscribeHandler: unsubscribe,
		Capabilities: &mcp.ServerCapabilities{
			Logging:   &mcp.LoggingCapabilities{},
			Tools:     &mcp.ToolCapabilities{ListChanged: true},
			Prompts:   &mcp.PromptCapabilities{ListChanged: true},
			Resources: &mcp.ResourceCapabilities{ListChanged: true, Subscribe: true},
		},
	})
	c.server.AddReceivingMiddleware(g.traced(c), g.guard(c), g.carried)
	c.lastUsed.Store(time.Now().UnixNano())
	return c
}

// callerFor returns the caller for id, creating and syncing it on first use.
func (g *Gateway) callerFor(ctx context.Context, id spiffeid.ID) *caller {
	key := id.String()
	g.callersMu.Lock()
	c := g.callers[key]
	g.callersMu.Unlock()
	if c == nil {
		fresh := g.newCaller(id)
		fresh.sync(ctx)
		g.callersMu.Lock()
		if c = g.callers[key]; c == nil {
			c = fresh
			g.callers[key] = c
		}
		g.callersMu.Unlock()
	}
	c.lastUsed.Store(time.Now().UnixNano())
	return c
}

// changed re-syncs every caller after the catalog, a pin or the policies changed.
func (g *Gateway) changed() {
	for state, n := range g.catalog.counts() {
		g.metrics.tools.WithLabelValues(string(state)).Set(float64(n))
	}
	g.callersMu.Lock()
	cs := make([]*caller, 0, len(g.callers))
	for _, c := range g.callers {
		cs = append(cs, c)
	}
	g.callersMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g.report(ctx)
	for _, c := range cs {
		c.sync(ctx)
	}
}

// evictIdle forgets callers without sessions that have not been seen for a while.
func (g *Gateway) evictIdle(idle time.Duration) {
	cutoff := time.Now().Add(-idle).UnixNano()
	g.callersMu.Lock()
	defer g.callersMu.Unlock()
	for k, c := range g.callers {
		if c.lastUsed.Load() < cutoff && !hasSessions(c.server) {
			delete(g.callers, k)
		}
	}
}

func hasSessions(s *mcp.Server) bool {
	for range s.Sessions() {
		return true
	}
	return false
}

func (c *caller) owns(sessionID string) bool {
	for ss := range c.server.Sessions() {
		if ss.ID() == sessionID {
			return true
		}
	}
	return false
}

func toPolicy(p Principal) policy.Principal {
	return policy.Principal{ID: p.ID, Org: p.Org, Admin: p.Admin, Workgroups: p.Workgroups}
}

// sync brings the caller's server in line with the catalog and the policies.
func (c *caller) sync(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.g
	p, err := g.principal(ctx, c.id)
	if err != nil {
		c.unavailable.Store(true)
		return
	}
	c.unavailable.Store(false)
	snap := g.catalog.snapshot()
	eng := g.engine()
	pp := toPolicy(p)
	allowed := func(a policy.Action, it policy.Item) bool {
		return !p.Revoked && eng.Decide(policy.Request{Principal: pp, Action: a, Item: it}).Allow
	}
	granted := snap.empty() && !p.Revoked // nothing to decide on yet
	tools := map[string]*toolEntry{}
	for name, e := range snap.tools {
		if allowed(policy.ListTool, e.item) {
			granted = true
			if e.state == pin.Approved {
				tools[name] = e
			}
		}
	}
	prompts := map[string]*promptEntry{}
	for name, e := range snap.prompts {
		if allowed(policy.ListPrompt, e.item) {
			granted = true
			if e.state == pin.Approved {
				prompts[name] = e
			}
		}
	}
	resources := map[string]*resourceEntry{}
	for uri, e := range snap.resources {
		if allowed(policy.ListResource, e.item) {
			granted = true
			if e.state == pin.Approved {
				resources[uri] = e
			}
		}
	}
	c.granted.Store(granted)
	c.applyTools(tools)
	c.applyPrompts(prompts)
	c.applyResources(resources)
}

func (c *caller) applyTools(want map[string]*toolEntry) {
	var gone []string
	for name, d := range c.digests {
		if e, ok := want[name]; !ok || e.digest != d {
			gone = append(gone, name)
		}
	}
	if len(gone) > 0 {
		c.server.RemoveTools(gone...)
		for _, name := range gone {
			delete(c.digests, name)
			delete(c.tools, name)
		}
	}
	for name, e := range want {
		if _, ok := c.digests[name]; ok {
			continue
		}
		t := *e.def
		t.Name = name
		if err := catchPanic(func() { c.server.AddTool(&t, c.g.toolHandler(c, name)) }); err != nil {
			c.g.log.Warn("mcpgw: tool not exposable", "tool", name, "err", err)
			continue
		}
		c.digests[name], c.tools[name] = e.digest, &t
	}
}

func (c *caller) applyPrompts(want map[string]*promptEntry) {
	versions := map[string]string{}
	var gone []string
	for name, e := range want {
		versions[name] = e.digest + jsonString(e.def)
	}
	for name, v := range c.prompts {
		if versions[name] != v {
			gone = append(gone, name)
			delete(c.prompts, name)
		}
	}
	if len(gone) > 0 {
		c.server.RemovePrompts(gone...)
	}
	for name, e := range want {
		if _, ok := c.prompts[name]; ok {
			continue
		}
		p := *e.def
		p.Name = name
		c.server.AddPrompt(&p, c.g.promptHandler(c, name))
		c.prompts[name] = versions[name]
	}
}

func (c *caller) applyResources(want map[string]*resourceEntry) {
	versions := map[string]string{}
	for uri, e := range want {
		if e.res != nil {
			versions[uri] = "r" + e.digest + jsonString(e.res)
		} else {
			versions[uri] = "t" + e.digest + jsonString(e.tmpl)
		}
	}
	var goneRes, goneTmpl []string
	for uri, v := range c.resources {
		if versions[uri] != v {
			if strings.HasPrefix(v, "r") {
				goneRes = append(goneRes, uri)
			} else {
				goneTmpl = append(goneTmpl, uri)
			}
			delete(c.resources, uri)
		}
	}
	if len(goneRes) > 0 {
		c.server.RemoveResources(goneRes...)
	}
	if len(goneTmpl) > 0 {
		c.server.RemoveResourceTemplates(goneTmpl...)
	}
	for uri, e := range want {
		if _, ok := c.resources[uri]; ok {
			continue
		}
		h := c.g.readHandler(c, uri)
		var err error
		if e.res != nil {
			r := *e.res
			r.URI = uri
			err = catchPanic(func() { c.server.AddResource(&r, h) })
		} else {
			t := *e.tmpl
			t.URITemplate = uri
			err = catchPanic(func() { c.server.AddResourceTemplate(&t, h) })
		}
		if err != nil {
			c.g.log.Warn("mcpgw: resource not exposable", "uri", uri, "err", err)
			continue
		}
		c.resources[uri] = versions[uri]
	}
}

func (c *caller) has(m map[string]string, key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := m[key]
	return ok
}

// visibleTools returns the tools registered for the caller, by name.
func (c *caller) visibleTools() []*mcp.Tool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*mcp.Tool, 0, len(c.tools))
	for _, t := range c.tools {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b *mcp.Tool) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// catchPanic runs f, turning a panic (the SDK panics on definitions it cannot serve) into an error.
func catchPanic(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	f()
	return nil
}

// guard refuses everything to a caller no policy grants anything, explicitly, instead of an empty list; and
// brings the caller's view up to date before every listing.
func (g *Gateway) guard(c *caller) mcp.Middleware {
	return func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			switch method {
			case "tools/list", "prompts/list", "resources/list", "resources/templates/list":
				c.sync(ctx)
			case "tools/call", "prompts/get", "resources/read":
			default:
				return next(ctx, method, req)
			}
			if c.unavailable.Load() {
				ref := newRef()
				g.log.Warn("mcpgw: caller lookup failed", "caller", c.id, "ref", ref)
				return nil, rpcError(CodeUnavailable, ref, "", "cannot look the caller up now; try again")
			}
			if !c.granted.Load() {
				return nil, g.noGrant(ctx, c, method)
			}
			// What is not registered for the caller goes through the same checks as what is, so that the
			// refusal is the same and is recorded.
			switch r := req.(type) {
			case *mcp.CallToolRequest:
				if !c.has(c.digests, r.Params.Name) {
					res, err := g.toolHandler(c, r.Params.Name)(ctx, r)
					if err != nil {
						return nil, err
					}
					return res, nil
				}
			case *mcp.GetPromptRequest:
				if !c.has(c.prompts, r.Params.Name) {
					res, err := g.promptHandler(c, r.Params.Name)(ctx, r)
					if err != nil {
						return nil, err
					}
					return res, nil
				}
			case *mcp.ReadResourceRequest:
				if !c.has(c.resources, r.Params.URI) {
					o := g.newOp("resource", c, r.Session.ID(), r.Params.URI)
					if err := g.authorizeUnlisted(ctx, o, c); err != nil {
						return nil, err
					}
				}
			}
			return next(ctx, method, req)
		}
	}
}

func (g *Gateway) noGrant(ctx context.Context, c *caller, method string) *jsonrpc.Error {
	ref := newRef()
	g.metrics.denied.WithLabelValues(c.id.String(), "no_grant").Inc()
	data, _ := json.Marshal(map[string]any{"ref": ref, "method": method})
	g.record(ctx, audit.Record{Kind: KindDenied, Actor: c.id.String(), Decision: audit.DecisionDeny,
		Reason: "no policy grants this identity anything on the MCP gateway", PolicyVersion: g.engine().Version(), Data: data})
	return rpcError(CodeNotAuthorized, ref, "", "not authorised: no MCP grant for %s", c.id)
}

type callerKey struct{}

// serveMCP authenticates the caller, binds the request to the caller's own server and sessions, and bounds
// the request's size before the SDK sees it.
func (g *Gateway) serveMCP(w http.ResponseWriter, r *http.Request) {
	id, err := g.cfg.Identify(r)
	if err != nil {
		ref := newRef()
		g.log.Debug("mcpgw: unauthenticated request", "ref", ref, "err", err)
		writeJSONError(w, http.StatusUnauthorized, "unauthenticated", "no verified identity", ref)
		return
	}
	c := g.callerFor(r.Context(), id)
	// A session belongs to the identity that opened it: another identity presenting its ID learns nothing.
	if sid := r.Header.Get("Mcp-Session-Id"); sid != "" && !c.owns(sid) {
		http.Error(w, "session not found", http.StatusNotFound)
		return
	}
	if r.Method == http.MethodPost && r.Body != nil && g.cfg.Limits.MaxRequest > 0 {
		limit := g.cfg.Limits.MaxRequest
		body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
		r.Body.Close()
		if err != nil {
			http.Error(w, "cannot read request", http.StatusBadRequest)
			return
		}
		if int64(len(body)) > limit {
			ref := newRef()
			g.metrics.denied.WithLabelValues(id.String(), "too_large").Inc()
			data, _ := json.Marshal(map[string]any{"ref": ref, "limit": limit})
			g.record(r.Context(), audit.Record{Kind: KindDenied, Actor: id.String(), Decision: audit.DecisionDeny,
				Reason: "request too large", Data: data})
			writeRPCError(w, http.StatusRequestEntityTooLarge, requestID(body),
				rpcError(CodeTooLarge, ref, "", "request of more than %d bytes refused", limit))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	defer g.carry(r)()
	g.mcp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
}

func (g *Gateway) serverFor(r *http.Request) *mcp.Server {
	if c, ok := r.Context().Value(callerKey{}).(*caller); ok {
		return c.server
	}
	return nil
}

// requestID finds the "id" of a JSON-RPC request from the start of its encoding, which may be truncated.
func requestID(body []byte) json.RawMessage {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil
		}
		if t == "id" {
			return v
		}
	}
	return nil
}

// writeRPCError answers a request the SDK never saw with a JSON-RPC error, so that clients can tell why.
func writeRPCError(w http.ResponseWriter, status int, id json.RawMessage, e *jsonrpc.Error) {
	if len(id) == 0 || string(id) == "null" {
		http.Error(w, e.Message, status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": id, "error": e})
}

func writeJSONError(w http.ResponseWriter, status int, code, msg, ref string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg, "ref": ref}})
}
