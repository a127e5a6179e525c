package mcpgw

import (
	"context"
	"fmt"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/mcpgw/pin"
	"github.com/umbra-mesh/umbra/mcpgw/policy"
)

// Resource subscriptions. A caller subscribes to a static resource it may read; the gateway subscribes to it
// at the backend once, whoever asks (counted, unsubscribed when the last caller unsubscribes, subscribed again
// after a reconnection), and hands the backend's notifications/resources/updated to the callers that may
// still see the resource: the SDK then notifies only those of their sessions that subscribed to it.

// subscriptionHandlers are the per-caller server's subscribe and unsubscribe handlers.
func (g *Gateway) subscriptionHandlers(c *caller) (func(context.Context, *mcp.SubscribeRequest) error, func(context.Context, *mcp.UnsubscribeRequest) error) {
	sub := func(ctx context.Context, req *mcp.SubscribeRequest) error {
		e, original, err := g.subscribable(ctx, c, req.Session, req.Params.URI)
		if err != nil {
			return err
		}
		return e.backend.subscribe(ctx, req.Session, original)
	}
	unsub := func(ctx context.Context, req *mcp.UnsubscribeRequest) error {
		e, ok := g.catalog.resource(req.Params.URI)
		_, original, okURI := backendURI(req.Params.URI)
		if !ok || !okURI {
			return nil // nothing the gateway subscribed to at a backend
		}
		return e.backend.unsubscribe(ctx, req.Session, original)
	}
	return sub, unsub
}

// subscribable checks that the caller may read the static resource uri, as a read would.
func (g *Gateway) subscribable(ctx context.Context, c *caller, ss *mcp.ServerSession, uri string) (*resourceEntry, string, error) {
	o := g.newOp("resource", c, ss.ID(), uri)
	e, ok := g.catalog.resource(uri)
	_, original, okURI := backendURI(uri)
	if !ok || !okURI || e.res == nil || e.state != pin.Approved || !c.has(c.resources, uri) {
		return nil, "", o.refuse(ctx, "hidden", "no such resource", mcp.ResourceNotFoundError(uri))
	}
	o.backend, o.original = e.backend.cfg.Name, original
	if err := g.authorize(ctx, o, c, policy.ListResource, policy.ReadResource, e.item, e.item, nil, mcp.ResourceNotFoundError(uri)); err != nil {
		return nil, "", err
	}
	return e, original, nil
}

// subscribe subscribes to uri at the backend for the client session ss: on its own session if the backend is
// spawned per client, else once on the shared session for all callers.
func (b *backendConn) subscribe(ctx context.Context, ss *mcp.ServerSession, uri string) error {
	cs, _, err := b.session(ctx, ss)
	if err != nil {
		return fmt.Errorf("%s is unavailable", b.cfg.Name)
	}
	if caps := cs.InitializeResult().Capabilities; caps == nil || caps.Resources == nil || !caps.Resources.Subscribe {
		return fmt.Errorf("backend %s does not support resource subscriptions", b.cfg.Name)
	}
	if b.cfg.Spawn == SpawnPerClient {
		return cs.Subscribe(ctx, &mcp.SubscribeParams{URI: uri})
	}
	b.mu.Lock()
	b.subs[uri]++
	first := b.subs[uri] == 1
	b.mu.Unlock()
	if !first {
		return nil
	}
	if err := cs.Subscribe(ctx, &mcp.SubscribeParams{URI: uri}); err != nil {
		b.mu.Lock()
		b.subs[uri]--
		if b.subs[uri] <= 0 {
			delete(b.subs, uri)
		}
		b.mu.Unlock()
		return err
	}
	return nil
}

func (b *backendConn) unsubscribe(ctx context.Context, ss *mcp.ServerSession, uri string) error {
	cs, _, err := b.session(ctx, ss)
	if err != nil {
		return nil // the backend session is gone, and its subscriptions with it
	}
	if b.cfg.Spawn == SpawnPerClient {
		return cs.Unsubscribe(ctx, &mcp.UnsubscribeParams{URI: uri})
	}
	b.mu.Lock()
	n, ok := b.subs[uri]
	if ok {
		b.subs[uri] = n - 1
		if n <= 1 {
			delete(b.subs, uri)
		}
	}
	b.mu.Unlock()
	if ok && n <= 1 {
		return cs.Unsubscribe(ctx, &mcp.UnsubscribeParams{URI: uri})
	}
	return nil
}

// resubscribe renews the shared session's subscriptions after a reconnection.
func (b *backendConn) resubscribe(ctx context.Context, cs *mcp.ClientSession) {
	b.mu.Lock()
	uris := make([]string, 0, len(b.subs))
	for u := range b.subs {
		uris = append(uris, u)
	}
	b.mu.Unlock()
	for _, u := range uris {
		if err := cs.Subscribe(ctx, &mcp.SubscribeParams{URI: u}); err != nil {
			b.g.log.Warn("mcpgw: resource subscription not renewed", "backend", b.cfg.Name, "uri", u, "err", err)
		}
	}
}

// onResourceUpdated hands a backend's update to the callers that may see the resource (for a per-client
// session, to its caller only).
func (b *backendConn) onResourceUpdated(ctx context.Context, req *mcp.ResourceUpdatedNotificationRequest) {
	exposed := exposedURI(b.cfg.Name, req.Params.URI)
	p := &mcp.ResourceUpdatedNotificationParams{URI: exposed}
	b.mu.Lock()
	var owner *mcp.ServerSession
	for ss, sp := range b.perClient {
		if sp.cs == req.Session {
			owner = ss
		}
	}
	b.mu.Unlock()
	g := b.g
	if owner != nil {
		if c := g.callerOf(owner); c != nil && c.has(c.resources, exposed) {
			_ = c.server.ResourceUpdated(ctx, p)
		}
		return
	}
	g.callersMu.Lock()
	cs := make([]*caller, 0, len(g.callers))
	for _, c := range g.callers {
		cs = append(cs, c)
	}
	g.callersMu.Unlock()
	for _, c := range cs {
		if c.has(c.resources, exposed) {
			_ = c.server.ResourceUpdated(ctx, p)
		}
	}
}
