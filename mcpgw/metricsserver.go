package mcpgw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// ServeMetrics serves MetricsHandler at /metrics on Config.MetricsListen over plain HTTP until ctx ends. It
// returns once the address is bound, with the address, or with the reason it could not be. Without
// MetricsListen it does nothing and returns a nil address.
func (g *Gateway) ServeMetrics(ctx context.Context) (net.Addr, error) {
	addr := g.cfg.MetricsListen
	if addr == "" {
		return nil, nil
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("mcpgw: metrics listen address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", g.MetricsHandler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("mcpgw: metrics server stopped", "addr", addr, "err", err)
		}
	}()
	g.log.Info("mcpgw: serving metrics", "addr", ln.Addr().String())
	return ln.Addr(), nil
}

// checkMetricsListen refuses an address that is not loopback unless remote metrics are allowed: the metrics
// name every caller, backend and tool of the gateway.
func checkMetricsListen(addr string, allowRemote bool) error {
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
			"metrics explicitly (metrics_allow_remote: true) if anyone who can reach it may read them", addr)
	}
	return nil
}
