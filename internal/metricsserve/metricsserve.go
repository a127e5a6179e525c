// Package metricsserve serves Prometheus metrics over plain HTTP on an address an operator chose: the
// controller's and both gateways'. Metrics name identities, models, tools and endpoints, so an address that is
// not loopback is refused unless remote metrics were allowed explicitly.
package metricsserve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// CheckAddr refuses an address that is not HOST:PORT, or not loopback while allowRemote is false. allowHint
// names the setting that allows remote metrics (e.g. "--metrics-allow-remote" or "metrics_allow_remote: true"),
// so the one-line error says what to do. An empty address (metrics off) is accepted.
func CheckAddr(addr string, allowRemote bool, allowHint string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("metrics listen address %q: want HOST:PORT, e.g. 127.0.0.1:9465", addr)
	}
	if allowRemote {
		return nil
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("metrics listen address %q is not a loopback address: use 127.0.0.1:PORT, or allow remote "+
			"metrics explicitly (%s) if anyone who can reach it may read them", addr, allowHint)
	}
	return nil
}

// Start binds addr and serves h at GET /metrics until ctx ends. It returns once the address is bound, with the
// bound address (its port resolved) and a channel closed once the server has stopped, or with the reason the
// address could not be bound.
func Start(ctx context.Context, addr string, h http.Handler, log *slog.Logger) (net.Addr, <-chan struct{}, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("metrics listen address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case err := <-served:
			if !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "addr", ln.Addr().String(), "err", err)
			}
			return
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-served
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return ln.Addr(), done, nil
}
