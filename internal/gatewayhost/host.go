// Package gatewayhost runs a gateway (MCP or LLM) as a dark overlay service: it connects the gateway's identity,
// keeps the gateway's own state in an embedded JetStream in its data directory, sends the gateway's audit
// records to the controller's one audit stream, and looks callers up in the controller's directory.
package gatewayhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
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

	mu    sync.Mutex
	cache map[spiffeid.ID]cached
}

type cached struct {
	info api.IdentityInfo
	at   time.Time
}

// lookupTTL bounds how long a revoked caller or a membership change can go unnoticed by the gateway.
const lookupTTL = 5 * time.Second

// Start connects the identity in identityFile and opens the state store under dataDir.
func Start(ctx context.Context, identityFile, dataDir string, log *slog.Logger) (*Host, error) {
	id, err := agentsdk.LoadIdentity(identityFile)
	if err != nil {
		return nil, err
	}
	a, err := agentsdk.Connect(ctx, id, agentsdk.WithLogger(log), agentsdk.WithIdentityFile(identityFile))
	if err != nil {
		return nil, err
	}
	ns, err := natsd.Start(natsd.Config{StoreDir: filepath.Join(dataDir, "jetstream"), SyncAlways: true})
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("gatewayhost: %w", err)
	}
	nc, err := ns.Connect("umbra-gateway")
	if err != nil {
		a.Close()
		ns.Shutdown()
		return nil, fmt.Errorf("gatewayhost: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		a.Close()
		nc.Close()
		ns.Shutdown()
		return nil, fmt.Errorf("gatewayhost: %w", err)
	}
	return &Host{Agent: a, JS: js, log: log, ns: ns, nc: nc, cache: map[spiffeid.ID]cached{}}, nil
}

// Serve hosts handler on the overlay service until ctx ends. Requests arrive inside mutual TLS: r.TLS carries
// the caller's SVID.
func (h *Host) Serve(ctx context.Context, service string, handler http.Handler) error {
	ln, err := h.Agent.Listen(service)
	if err != nil {
		return err
	}
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
func (h *Host) Append(ctx context.Context, r audit.Record) error {
	return h.Agent.Controller().AppendAudit(ctx, r)
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
	h.mu.Lock()
	if len(h.cache) > 10000 {
		h.cache = map[spiffeid.ID]cached{}
	}
	h.cache[id] = cached{info: info, at: time.Now()}
	h.mu.Unlock()
	return info, nil
}

// Close disconnects and stops the state store.
func (h *Host) Close() {
	h.Agent.Close()
	h.nc.Close()
	h.ns.Shutdown()
}
