package mcpgw

import (
	"context"
	"crypto/rand"
	"net/http"
	"strings"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// headerCarrier names, inside the gateway only, the HTTP request that carried a JSON-RPC request: serveMCP sets
// it (after removing whatever the client sent under that name) and carried reads it back from the request's
// RequestExtra.
const headerCarrier = "Umbra-Carrier"

// carriers tracks the HTTP requests (POSTs) that carry MCP requests, and the requests in flight per session, so
// that a request is cancelled when its POST ends before its answer, or when its client ends the session.
//
// The SDK cancels a handler when the client sends notifications/cancelled, but not when the client's connection
// merely goes away, and a DELETE of the session waits for the handlers in flight to finish (a held call would
// hold the DELETE until its approval times out). Without an event store (the gateway keeps none) the answer of
// a request whose POST has ended can never be delivered, so its work is stopped: a held call is withdrawn and a
// backend call is cancelled. (With an event store the client could resume the stream; this would then be
// wrong.)
type carriers struct {
	mu       sync.Mutex
	m        map[string]context.Context
	sessions map[string]map[*context.CancelFunc]struct{} // session ID -> cancels of its requests in flight
}

// track registers the cancel of a request in flight on session sid; untrack forgets it.
func (cs *carriers) track(sid string, cancel context.CancelFunc) (untrack func()) {
	if sid == "" {
		return func() {}
	}
	p := &cancel
	cs.mu.Lock()
	if cs.sessions == nil {
		cs.sessions = map[string]map[*context.CancelFunc]struct{}{}
	}
	if cs.sessions[sid] == nil {
		cs.sessions[sid] = map[*context.CancelFunc]struct{}{}
	}
	cs.sessions[sid][p] = struct{}{}
	cs.mu.Unlock()
	return func() {
		cs.mu.Lock()
		delete(cs.sessions[sid], p)
		if len(cs.sessions[sid]) == 0 {
			delete(cs.sessions, sid)
		}
		cs.mu.Unlock()
	}
}

// endSession cancels every request in flight on session sid.
func (cs *carriers) endSession(sid string) {
	cs.mu.Lock()
	var cancels []context.CancelFunc
	for p := range cs.sessions[sid] {
		cancels = append(cancels, *p)
	}
	cs.mu.Unlock()
	for _, cancel := range cancels {
		cancel()
	}
}

// add registers a POST's context under a fresh key; drop forgets it.
func (cs *carriers) add(ctx context.Context) (key string, drop func()) {
	key = rand.Text()
	cs.mu.Lock()
	if cs.m == nil {
		cs.m = map[string]context.Context{}
	}
	cs.m[key] = ctx
	cs.mu.Unlock()
	return key, func() {
		cs.mu.Lock()
		delete(cs.m, key)
		cs.mu.Unlock()
	}
}

func (cs *carriers) get(key string) (context.Context, bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	ctx, ok := cs.m[key]
	return ctx, ok
}

// carry marks r as the carrier of the MCP messages in it; the returned func must run once r is served. A
// DELETE (the client ends its session; serveMCP has checked that the session is the caller's) first cancels the
// session's requests in flight.
func (g *Gateway) carry(r *http.Request) func() {
	r.Header.Del(headerCarrier) // only the gateway names carriers
	if r.Method == http.MethodDelete {
		if sid := r.Header.Get("Mcp-Session-Id"); sid != "" {
			g.carriers.endSession(sid)
		}
	}
	if r.Method != http.MethodPost {
		return func() {}
	}
	key, drop := g.carriers.add(r.Context())
	r.Header.Set(headerCarrier, key)
	return drop
}

// carried cancels the handling of a request when the POST that carried it ends first (the client went away),
// or has already ended when handling starts, or when the client ends the session.
func (g *Gateway) carried(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		extra := req.GetExtra()
		if strings.HasPrefix(method, "notifications/") || extra == nil || extra.Header == nil {
			return next(ctx, method, req)
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if s := req.GetSession(); s != nil {
			defer g.carriers.track(s.ID(), cancel)()
		}
		if key := extra.Header.Get(headerCarrier); key != "" {
			if carrier, ok := g.carriers.get(key); ok {
				defer context.AfterFunc(carrier, cancel)()
			} else {
				cancel()
			}
		}
		return next(ctx, method, req)
	}
}
