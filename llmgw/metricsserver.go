package llmgw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/umbra-mesh/umbra/internal/metricsserve"
)

// MetricsHandler serves the gateway's metrics in the Prometheus text format, to whoever reaches it. Nil when
// Config.Registry is not also a prometheus.Gatherer.
func (g *Gateway) MetricsHandler() http.Handler {
	if g.gatherer == nil {
		return nil
	}
	return promhttp.HandlerFor(g.gatherer, promhttp.HandlerOpts{})
}

// ServeMetrics serves MetricsHandler at /metrics on Config.MetricsListen over plain HTTP until ctx ends. It
// returns once the address is bound, with the address, or with the reason it could not be. Without
// MetricsListen it does nothing and returns a nil address.
func (g *Gateway) ServeMetrics(ctx context.Context) (net.Addr, error) {
	addr := g.cfg.MetricsListen
	if addr == "" {
		return nil, nil
	}
	h := g.MetricsHandler()
	if h == nil {
		return nil, errors.New("llmgw: metrics listen address set, but the metrics registry cannot be read (Config.Registry is not a prometheus.Gatherer)")
	}
	a, _, err := metricsserve.Start(ctx, addr, h, g.log.With("server", "llmgw metrics"))
	if err != nil {
		return nil, fmt.Errorf("llmgw: %w", err)
	}
	return a, nil
}

// checkMetricsListen refuses an address that is not loopback unless remote metrics are allowed: the metrics
// name every caller, model and endpoint of the gateway.
func checkMetricsListen(addr string, allowRemote bool) error {
	return metricsserve.CheckAddr(addr, allowRemote, "metrics_allow_remote: true")
}
