package mcpgw

import (
	"context"
	"fmt"
	"net"

	"github.com/umbra-mesh/umbra/internal/metricsserve"
)

// ServeMetrics serves MetricsHandler at /metrics on Config.MetricsListen over plain HTTP until ctx ends. It
// returns once the address is bound, with the address, or with the reason it could not be. Without
// MetricsListen it does nothing and returns a nil address.
func (g *Gateway) ServeMetrics(ctx context.Context) (net.Addr, error) {
	addr := g.cfg.MetricsListen
	if addr == "" {
		return nil, nil
	}
	a, _, err := metricsserve.Start(ctx, addr, g.MetricsHandler(), g.log.With("server", "mcpgw metrics"))
	if err != nil {
		return nil, fmt.Errorf("mcpgw: %w", err)
	}
	return a, nil
}

// checkMetricsListen refuses an address that is not loopback unless remote metrics are allowed: the metrics
// name every caller, backend and tool of the gateway.
func checkMetricsListen(addr string, allowRemote bool) error {
	return metricsserve.CheckAddr(addr, allowRemote, "metrics_allow_remote: true")
}
