package zitictrl

import (
	"github.com/openziti/ziti/controller/event"
)

// A member of a cluster issues OIDC (JWT) API sessions, and OpenZiti v1.7.2 checks an identity's disabled flag
// only when it authenticates: a disabled identity keeps using the tokens it holds (a router asks any member for a
// circuit with them and gets one), and exchanges its refresh token for new ones (HybridStorage.createAccessToken
// reads the identity but not the flag). So disabling alone does not suspend an identity in a cluster.
// SuspendIdentity therefore also revokes the identity's tokens issued until then (revokeTokens), and every member
// watches its own token issues: a token issued to a disabled identity (refreshed or exchanged) has its identity's
// tokens revoked again at once, and a circuit this member creates for a disabled identity is removed. Enabling the
// identity again needs nothing undone: tokens issued after the last revocation are valid, and the SDK, refused
// with its old ones, authenticates again.

// SuspendIdentity disables overlay identity id until EnableIdentity: it can no longer authenticate, and in a
// cluster its tokens are revoked too (see above). An identity the overlay does not know is left as it is.
func (c *Controller) SuspendIdentity(id string) error {
	if err := c.mgmt.DisableIdentity(id); err != nil {
		if isNotFound(err) {
			return nil
		}
		return err
	}
	if c.cfg.Cluster == nil {
		return nil
	}
	return c.revokeTokensOnce(id)
}

// revokeTokensOnce is revokeTokens for one identity at a time in this process: its read, delete and create of the
// revocation would otherwise race with themselves.
func (c *Controller) revokeTokensOnce(id string) error {
	c.revoking.Lock()
	defer c.revoking.Unlock()
	return c.revokeTokens(id)
}

// disabledGuard is the watch, on one member of a cluster, of the tokens and circuits it gives disabled identities.
type disabledGuard struct {
	c    *Controller
	work chan func()
}

// guardDisabled starts the watch; it ends when the overlay controller closes.
func (c *Controller) guardDisabled() {
	g := &disabledGuard{c: c, work: make(chan func(), 256)}
	d := c.fabric.GetEventDispatcher()
	d.AddApiSessionEventHandler(g)
	d.AddCircuitEventHandler(g)
	go func() {
		done := c.fabric.GetCloseNotifyChannel()
		for {
			select {
			case <-done:
				d.RemoveApiSessionEventHandler(g)
				d.RemoveCircuitEventHandler(g)
				return
			case f := <-g.work:
				f()
			}
		}
	}()
}

// disabled reports whether overlay identity id exists and is disabled, by this member's copy of the store.
func (g *disabledGuard) disabled(id string) bool {
	ident, err := g.c.edge.AppEnv.Managers.Identity.Read(id)
	return err == nil && ident != nil && ident.Disabled
}

// later queues f for the guard's goroutine; the event handlers must not block. A full queue drops f: the queue
// holds only repeats of the same few identities' work then.
func (g *disabledGuard) later(f func()) {
	select {
	case g.work <- f:
	default:
		g.c.log.Warn("the overlay's watch of disabled identities is behind; a token or circuit of one may be left")
	}
}

// AcceptApiSessionEvent revokes again the tokens of a disabled identity that was just given one.
func (g *disabledGuard) AcceptApiSessionEvent(e *event.ApiSessionEvent) {
	if e.Type != event.ApiSessionTypeJwt || e.IdentityId == "" {
		return
	}
	switch e.EventType {
	case event.ApiSessionEventTypeRefreshed, event.ApiSessionEventTypeExchanged, event.ApiSessionEventTypeCreated:
	default:
		return
	}
	id := e.IdentityId
	g.later(func() {
		if !g.disabled(id) {
			return
		}
		if err := g.c.revokeTokensOnce(id); err != nil {
			g.c.log.Warn("revoking the token just issued to a disabled overlay identity failed", "identity", id, "err", err)
			return
		}
		g.c.log.Info("revoked the token just issued to a disabled overlay identity", "identity", id, "event", e.EventType)
	})
}

// AcceptCircuitEvent removes a circuit this member created for a disabled identity, as dialer or host.
func (g *disabledGuard) AcceptCircuitEvent(e *event.CircuitEvent) {
	if e.EventType != event.CircuitCreated {
		return
	}
	circuit, client, host := e.CircuitId, e.Tags["clientId"], e.Tags["hostId"]
	g.later(func() {
		if (client == "" || !g.disabled(client)) && (host == "" || !g.disabled(host)) {
			return
		}
		if err := g.c.fabric.GetNetwork().RemoveCircuit(circuit, true); err != nil {
			g.c.log.Debug("removing the circuit of a disabled overlay identity failed", "circuit", circuit, "err", err)
			return
		}
		g.c.log.Info("removed a circuit of a disabled overlay identity", "circuit", circuit, "client", client, "host", host)
	})
}
