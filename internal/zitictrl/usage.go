package zitictrl

import (
	"fmt"
	"time"

	"github.com/openziti/ziti/controller/event"
)

// Use is a sign from the overlay that an identity used a service it was granted: it dialed a circuit to the
// service (Bind false), or it hosts the service (Bind true): it is the far end of a circuit, or it created a
// terminator for the service (it called Listen). IDs are the overlay's; Names resolves them.
type Use struct {
	IdentityID string
	ServiceID  string
	Bind       bool
	At         time.Time
}

// useHandler adapts a callback to OpenZiti's circuit and terminator event handlers.
type useHandler struct{ fn func(Use) }

func (h *useHandler) AcceptCircuitEvent(e *event.CircuitEvent) {
	if e.EventType != event.CircuitCreated {
		return
	}
	svc := e.ServiceId
	if id := e.Tags["clientId"]; id != "" {
		h.fn(Use{IdentityID: id, ServiceID: svc, At: e.Timestamp})
	}
	if id := e.Tags["hostId"]; id != "" {
		h.fn(Use{IdentityID: id, ServiceID: svc, Bind: true, At: e.Timestamp})
	}
}

func (h *useHandler) AcceptTerminatorEvent(e *event.TerminatorEvent) {
	if e.EventType != event.TerminatorCreated || e.HostId == "" {
		return
	}
	h.fn(Use{IdentityID: e.HostId, ServiceID: e.ServiceId, Bind: true, At: e.Timestamp})
}

// Uses calls fn with every use as this controller sees it happen: each circuit created here (its dialer's dial
// and its host's bind) and each terminator created (its host's bind). fn runs on OpenZiti's event goroutines,
// possibly concurrently, and must not block. The returned stop ends the subscription.
func (c *Controller) Uses(fn func(Use)) (stop func()) {
	h := &useHandler{fn: fn}
	d := c.fabric.GetEventDispatcher()
	d.AddCircuitEventHandler(h)
	d.AddTerminatorEventHandler(h)
	return func() {
		d.RemoveCircuitEventHandler(h)
		d.RemoveTerminatorEventHandler(h)
	}
}

// CurrentUses lists the uses in progress at now: every live circuit's dialer and host, and every terminator's
// host. A circuit or a binding that lasts for weeks is still in use, long after the event of its creation.
func (c *Controller) CurrentUses(now time.Time) ([]Use, error) {
	var out []Use
	for _, ci := range c.fabric.GetNetwork().GetAllCircuits() {
		svc := ci.ServiceId
		if id := ci.Tags["clientId"]; id != "" {
			out = append(out, Use{IdentityID: id, ServiceID: svc, At: now})
		}
		if id := ci.Tags["hostId"]; id != "" {
			out = append(out, Use{IdentityID: id, ServiceID: svc, Bind: true, At: now})
		}
	}
	terms, err := c.edge.AppEnv.Managers.Terminator.Query("true limit none")
	if err != nil {
		return out, fmt.Errorf("zitictrl: list terminators: %w", err)
	}
	for _, t := range terms.Entities {
		if t.HostId != "" {
			out = append(out, Use{IdentityID: t.HostId, ServiceID: t.Service, Bind: true, At: now})
		}
	}
	return out, nil
}

// Names resolves an overlay identity id to its externalId (the SPIFFE ID Umbra gave it; "" for identities
// without one, such as routers') and a service id to its name. ok is false if either is unknown.
func (c *Controller) Names(identityID, serviceID string) (externalID, service string, ok bool) {
	m := c.edge.AppEnv.Managers
	id, err := m.Identity.Read(identityID)
	if err != nil || id == nil {
		return "", "", false
	}
	svc, err := m.EdgeService.Read(serviceID)
	if err != nil || svc == nil {
		return "", "", false
	}
	if id.ExternalId != nil {
		externalID = *id.ExternalId
	}
	return externalID, svc.Name, true
}

// terminatorHandler adapts a callback to OpenZiti's terminator event handler.
type terminatorHandler struct{ fn func(created bool) }

func (h terminatorHandler) AcceptTerminatorEvent(e *event.TerminatorEvent) {
	switch e.EventType {
	case event.TerminatorCreated:
		h.fn(true)
	case event.TerminatorDeleted:
		h.fn(false)
	}
}

// Terminators calls fn with each terminator this controller creates (true) or deletes (false), as it happens.
// fn runs on OpenZiti's event goroutines, possibly concurrently, and must not block. The returned stop ends the
// subscription.
func (c *Controller) Terminators(fn func(created bool)) (stop func()) {
	h := &terminatorHandler{fn: fn}
	d := c.fabric.GetEventDispatcher()
	d.AddTerminatorEventHandler(h)
	return func() { d.RemoveTerminatorEventHandler(h) }
}
