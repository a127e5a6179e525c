// Package gatewayhost runs a gateway (MCP or LLM) as a dark overlay service: it connects the gateway's identity
// (which must be of kind gateway), keeps the gateway's own state in an embedded JetStream in its data directory
// (locked: one gateway per directory), sends the gateway's audit records to the controller's one audit stream,
// and looks callers up in the controller's directory.
package gatewayhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/natsd"
)

// Host is a connected gateway identity with its state store.
type Host struct {
	Agent *agentsdk.Agent
	JS    jetstream.JetStream
	log   *slog.Logger
	ns    *natsd.Server
	nc    *nats.Conn
	lock  *dirLock

	mu    sync.Mutex
	cache map[spiffeid.ID]cached
}

type cached struct {
	info api.IdentityInfo
	at   time.Time
}

// lookupTTL bounds how long a revoked caller or a membership change can go unnoticed by the gateway.
const lookupTTL = 5 * time.Second

// Start connects the identity in identityFile and opens the state store under dataDir. It refuses, before
// connecting anything, an identity that is not of kind gateway and a data directory another gateway holds.
func Start(ctx context.Context, identityFile, dataDir string, log *slog.Logger) (*Host, error) {
	id, err := agentsdk.LoadIdentity(identityFile)
	if err != nil {
		return nil, err
	}
	if err := CheckKind(id.SPIFFEID()); err != nil {
		return nil, fmt.Errorf("%s: %w", identityFile, err)
	}
	lock, err := lockDir(dataDir, id.SPIFFEID().String())
	if err != nil {
		return nil, err
	}
	a, err := agentsdk.Connect(ctx, id, agentsdk.WithLogger(log), agentsdk.WithIdentityFile(identityFile))
	if err != nil {
		lock.release()
		return nil, err
	}
	ns, err := natsd.Start(natsd.Config{StoreDir: filepath.Join(dataDir, "jetstream"), SyncAlways: true, Log: log.With("source", "nats")})
	if err != nil {
		a.Close()
		lock.release()
		return nil, fmt.Errorf("gatewayhost: %w", err)
	}
	nc, err := ns.Connect("umbra-gateway")
	if err != nil {
		a.Close()
		ns.Shutdown()
		lock.release()
		return nil, fmt.Errorf("gatewayhost: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		a.Close()
		nc.Close()
		ns.Shutdown()
		lock.release()
		return nil, fmt.Errorf("gatewayhost: %w", err)
	}
	return &Host{Agent: a, JS: js, log: log, ns: ns, nc: nc, lock: lock, cache: map[spiffeid.ID]cached{}}, nil
}

// CheckKind refuses an identity that is not of kind gateway (spiffe://<domain>/<org>/gateway/<name>): only
// gateway identities may write the controller's audit stream and look callers up, so any other would start
// and then fail at its first caller.
func CheckKind(id spiffeid.ID) error {
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) != 3 || segs[1] != api.GatewayKind {
		return fmt.Errorf("identity %s is not of kind %q: create one with umbra identity create --kind %s", id, api.GatewayKind, api.GatewayKind)
	}
	return nil
}

// bindTimeout bounds how long Listen waits for the overlay to answer its first bind.
const bindTimeout = time.Minute

// Listen hosts service on the overlay and returns once a router hosts it, or with the reason it cannot be (no
// Bind grant, no such service, no answer from the overlay in time). Serve the listener with ServeListener.
func (h *Host) Listen(ctx context.Context, service string) (net.Listener, error) {
	bctx, cancel := context.WithTimeout(ctx, bindTimeout)
	ln, err := h.Agent.ListenContext(bctx, service)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("host overlay service %s: %w", service, err)
	}
	// ListenContext returns before a router hosts the service when none could yet (the SDK logs why), and hosts
	// it as soon as one can: a gateway started before its routers waits for them, until ctx ends.
	if err := agentsdk.WaitHosted(ctx, ln); err != nil {
		ln.Close()
		return nil, fmt.Errorf("host overlay service %s: %w", service, err)
	}
	return ln, nil
}

// Serve hosts handler on the overlay service until ctx ends. Requests arrive inside mutual TLS: r.TLS carries
// the caller's SVID.
func (h *Host) Serve(ctx context.Context, service string, handler http.Handler) error {
	ln, err := h.Listen(ctx, service)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	return h.ServeListener(ctx, ln, handler)
}

// ServeListener serves handler on ln (from Listen) until ctx ends, and closes ln.
func (h *Host) ServeListener(ctx context.Context, ln net.Listener, handler http.Handler) error {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(h.log.Handler(), slog.LevelDebug)}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(c)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	// Serve returns as soon as Shutdown begins; wait until it has finished before the host is closed.
	<-stopped
	return nil
}

// Append writes r into the controller's audit stream.
// A refusal because the actor spent its day's audit budget is an *audit.BudgetError, which the gateways turn into
// a refusal of the call that says so; an append that never reached the controller matches audit.ErrNotSent.
func (h *Host) Append(ctx context.Context, r audit.Record) error {
	return appendError(h.Agent.Controller().AppendAudit(ctx, r))
}

// AppendOnce is Append for a record held for later (audit.Held): e.Record is appended under e.ID as first tried
// at e.Sent, so that it is stored once however often it is sent within the controller's retry window, and
// e.Sending marks it as maybe stored just before a try that reached the controller writes it.
func (h *Host) AppendOnce(ctx context.Context, e audit.HeldRecord) error {
	return appendError(h.Agent.Controller().AppendAuditOnce(ctx, e.Record, e.ID, e.Sent, e.Sending))
}

// FindHeld asks the controller whether a held record whose try may have been stored, at e.Sent, was stored
// (audit.HeldFinder).
func (h *Host) FindHeld(ctx context.Context, e audit.HeldRecord) (bool, error) {
	found, err := h.Agent.Controller().FindAuditRecord(ctx, e.ID, e.Sent)
	var ae *agentsdk.APIError
	if errors.As(err, &ae) && ae.Code == api.CodeAskLater {
		return false, fmt.Errorf("%w: %w", audit.ErrAskLater, err)
	}
	return found.Found, appendError(err)
}

// appendError maps the controller's answer to an append to what the gateways act on.
func appendError(err error) error {
	var ae *agentsdk.APIError
	switch {
	case errors.As(err, &ae) && ae.Code == api.CodeAuditBudgetExhausted:
		return fmt.Errorf("%w: %w", audit.ErrRefused, &audit.BudgetError{Message: ae.Message, RetryAfter: ae.RetryAfter})
	case errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 && ae.Code != api.CodeRetryTooLate:
		return fmt.Errorf("%w: %w", audit.ErrRefused, err) // answered, and not stored
	case errors.Is(err, agentsdk.ErrNotSent):
		return fmt.Errorf("%w: %w", audit.ErrNotSent, err)
	}
	return err
}

// Lookup returns the controller's view of a caller, cached briefly.
func (h *Host) Lookup(ctx context.Context, id spiffeid.ID) (api.IdentityInfo, error) {
	h.mu.Lock()
	c, ok := h.cache[id]
	h.mu.Unlock()
	if ok && time.Since(c.at) < lookupTTL {
		return c.info, nil
	}
	info, err := h.Agent.Controller().Lookup(ctx, id)
	if err != nil {
		return api.IdentityInfo{}, err
	}
	if info.Revoked {
		return api.IdentityInfo{}, fmt.Errorf("%s has been revoked", id)
	}
	if info.Suspended {
		return api.IdentityInfo{}, fmt.Errorf("%s is suspended", id)
	}
	h.mu.Lock()
	if len(h.cache) > 10000 {
		h.cache = map[spiffeid.ID]cached{}
	}
	h.cache[id] = cached{info: info, at: time.Now()}
	h.mu.Unlock()
	return info, nil
}

// Close disconnects, stops the state store and gives the data directory up.
func (h *Host) Close() {
	h.Agent.Close()
	h.nc.Close()
	h.ns.Shutdown()
	h.lock.release()
}
