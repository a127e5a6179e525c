package agentsdk

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// Controller is a client of the controller's API. It travels over the overlay, inside mutual TLS in which the
// controller must prove the SPIFFE ID named in the agent's identity; the controller knows the caller by its SVID.
// Every call returns by its context's deadline (by 30 s if it has none) with an error wrapping ctx.Err().
type Controller struct {
	a      *Agent
	client *http.Client
}

// controllerRehost is how long after its first try a dial of a service the controller hosts (its API, the relay)
// is tried again while the service has no terminator, controllerRehostPause apart (each try itself takes about a
// second: dialOverlay's own tries).
const (
	controllerRehost      = 5 * time.Second
	controllerRehostPause = 250 * time.Millisecond
)

// Controller returns a client of the controller's API for this agent.
func (a *Agent) Controller() *Controller {
	a.ctrlOnce.Do(func() { a.ctrl = a.newController() })
	return a.ctrl
}

func (a *Agent) newController() *Controller {
	return &Controller{a: a, client: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			// A request whose connection could not be made was never sent (ErrNotSent).
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				conn, err := a.dialController(ctx, api.ServiceName)
				if err != nil {
					return nil, notSentError{err}
				}
				return &meteredConn{Conn: conn}, nil
			},
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     30 * time.Second,
		},
	}}
}

// dialController dials service, one the controller hosts whenever it runs, inside mutual TLS in which the
// controller proves its SPIFFE ID. Such a service without a terminator is one being hosted again (the controller
// restarted, or moved to a new overlay session), so the dial is tried again for a while within ctx.
func (a *Agent) dialController(ctx context.Context, service string) (net.Conn, error) {
	id, _, err := a.current()
	if err != nil {
		return nil, err
	}
	for until := time.Now().Add(controllerRehost); ; {
		conn, err := a.dial(ctx, service, tlsconfig.AuthorizeID(id.controllerID))
		if err == nil || !time.Now().Before(until) || !strings.Contains(err.Error(), "has no terminators") ||
			!sleep(ctx, controllerRehostPause) {
			return conn, err
		}
	}
}

func (c *Controller) post(ctx context.Context, path string, in, out any) error {
	return postJSON(ctx, c.client, "http://"+api.ServiceName+path, in, out)
}

// WhoAmI asks the controller who this agent is.
func (c *Controller) WhoAmI(ctx context.Context) (api.WhoAmI, error) {
	var out api.WhoAmI
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+api.ServiceName+api.PathWhoAmI, nil)
	if err != nil {
		return out, fmt.Errorf("agentsdk: whoami: %w", err)
	}
	if err := doJSON(c.client, req, &out); err != nil {
		return out, fmt.Errorf("agentsdk: whoami: %w", err)
	}
	return out, nil
}

// CreateIdentity registers a workload (admin only) and returns its one-time enrollment token.
func (c *Controller) CreateIdentity(ctx context.Context, req api.CreateIdentityRequest) (api.CreateIdentityResponse, error) {
	var out api.CreateIdentityResponse
	if err := c.post(ctx, api.PathIdentities, req, &out); err != nil {
		return out, fmt.Errorf("agentsdk: create identity: %w", err)
	}
	return out, nil
}

// Revoke revokes an identity (admin only): the overlay drops it and its live connections, and the controller
// refuses it from then on.
func (c *Controller) Revoke(ctx context.Context, id spiffeid.ID, reason string) (api.RevokeResponse, error) {
	var out api.RevokeResponse
	if err := c.post(ctx, api.PathRevoke, api.RevokeRequest{SPIFFEID: id.String(), Reason: reason}, &out); err != nil {
		return out, fmt.Errorf("agentsdk: revoke %s: %w", id, err)
	}
	return out, nil
}

// Suspend is the kill switch (admin only): the overlay drops the identity and its live connections, its open
// sessions close, and the controller, the relay, the gateways and every host refuse it until Resume. Unlike
// Revoke it keeps the identity's certificates, grants and memberships.
func (c *Controller) Suspend(ctx context.Context, id spiffeid.ID, reason string) (api.SuspendResponse, error) {
	var out api.SuspendResponse
	if err := c.post(ctx, api.PathSuspend, api.SuspendRequest{SPIFFEID: id.String(), Reason: reason}, &out); err != nil {
		return out, fmt.Errorf("agentsdk: suspend %s: %w", id, err)
	}
	return out, nil
}

// Resume lifts a suspension (admin only): the identity connects again with the identity file it holds.
func (c *Controller) Resume(ctx context.Context, id spiffeid.ID, reason string) (api.SuspendResponse, error) {
	var out api.SuspendResponse
	if err := c.post(ctx, api.PathResume, api.SuspendRequest{SPIFFEID: id.String(), Reason: reason}, &out); err != nil {
		return out, fmt.Errorf("agentsdk: resume %s: %w", id, err)
	}
	return out, nil
}

// Grant lets identities host (bind) or use (dial) a service (admin only), creating the service if needed.
func (c *Controller) Grant(ctx context.Context, req api.GrantRequest) error {
	if err := c.post(ctx, api.PathGrant, req, nil); err != nil {
		return fmt.Errorf("agentsdk: grant %s: %w", req.Service, err)
	}
	return nil
}

// CreateRouter registers an edge router (admin only) and returns its one-time enrollment token.
func (c *Controller) CreateRouter(ctx context.Context, name string) (string, error) {
	var out api.CreateRouterResponse
	if err := c.post(ctx, api.PathRouters, api.CreateRouterRequest{Name: name}, &out); err != nil {
		return "", fmt.Errorf("agentsdk: create router: %w", err)
	}
	return out.Token, nil
}

func (a *Agent) renewWithController(ctx context.Context, csr []byte) (Credentials, error) {
	var out Credentials
	err := a.Controller().post(ctx, api.PathRenew, api.RenewRequest{CSR: csr}, &out)
	return out, err
}

// SetPolicy sets an organisation policy (administrators; an organisation administrator of its own organisation
// only): forbid-only Cedar, evaluated from then on in every A2A decision that involves the organisation, on
// every controller. A policy of the same name is replaced. Invalid Cedar or a permit is refused with an
// *APIError naming what was wrong, and nothing stored changes.
func (c *Controller) SetPolicy(ctx context.Context, org, name, text string) (api.Policy, error) {
	var out api.Policy
	if err := c.send(ctx, http.MethodPut, policyPath(org, name), api.SetPolicyRequest{Text: text}, &out); err != nil {
		return out, fmt.Errorf("agentsdk: set policy %s of %s: %w", name, org, err)
	}
	return out, nil
}

// Policies lists organisation policies: org's, or with org "" the caller's organisation's (every
// organisation's for the platform administrator).
func (c *Controller) Policies(ctx context.Context, org string) ([]api.Policy, error) {
	var out api.Policies
	path := api.PathPolicies
	if org != "" {
		path += "?" + url.Values{"org": {org}}.Encode()
	}
	if err := c.get(ctx, path, &out); err != nil {
		return nil, fmt.Errorf("agentsdk: list policies: %w", err)
	}
	return out.Policies, nil
}

// RemovePolicy removes an organisation policy and returns it as it was.
func (c *Controller) RemovePolicy(ctx context.Context, org, name string) (api.Policy, error) {
	var out api.Policy
	if err := c.send(ctx, http.MethodDelete, policyPath(org, name), nil, &out); err != nil {
		return out, fmt.Errorf("agentsdk: remove policy %s of %s: %w", name, org, err)
	}
	return out, nil
}

func policyPath(org, name string) string {
	return api.PathPolicies + "/" + url.PathEscape(org) + "/" + url.PathEscape(name)
}

// send is a request with method and, unless in is nil, a JSON body.
func (c *Controller) send(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+api.ServiceName+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", api.ContentTypeJSON)
	}
	return doJSON(c.client, req, out)
}
