package mcpgw

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus series. Callers are labelled by SPIFFE ID: their number is bounded by
// the identities an organisation issues.
type metrics struct {
	calls      *prometheus.CounterVec   // kind, backend, tool, caller, status
	errors     *prometheus.CounterVec   // kind, backend, tool, caller, status (every status but ok)
	latency    *prometheus.HistogramVec // kind, backend, tool, caller
	denied     *prometheus.CounterVec   // caller, reason
	backendUp  *prometheus.GaugeVec     // backend
	reconnects *prometheus.CounterVec   // backend
	tools      *prometheus.GaugeVec     // state
	auditFails prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "umbra", Subsystem: "mcpgw", Name: "calls_total",
			Help: "Forwarded tool calls, prompt gets and resource reads, by result status."},
			[]string{"kind", "backend", "tool", "caller", "status"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "umbra", Subsystem: "mcpgw", Name: "call_errors_total",
			Help: "Forwarded calls that did not succeed, by status."},
			[]string{"kind", "backend", "tool", "caller", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "umbra", Subsystem: "mcpgw", Name: "call_duration_seconds",
			Help: "Latency of forwarded calls, including any wait for approval.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)},
			[]string{"kind", "backend", "tool", "caller"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "umbra", Subsystem: "mcpgw", Name: "denied_total",
			Help: "Requests refused before reaching a backend, by reason."}, []string{"caller", "reason"}),
		backendUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "umbra", Subsystem: "mcpgw", Name: "backend_up",
			Help: "1 while the gateway holds a session with the backend."}, []string{"backend"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "umbra", Subsystem: "mcpgw", Name: "backend_connects_total",
			Help: "Connection attempts to backends, by outcome."}, []string{"backend", "outcome"}),
		tools: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "umbra", Subsystem: "mcpgw", Name: "tools",
			Help: "Tools served by backends, by pin state."}, []string{"state"}),
		auditFails: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "umbra", Subsystem: "mcpgw", Name: "audit_failures_total",
			Help: "Audit records that could not be appended."}),
	}
	for _, c := range []prometheus.Collector{m.calls, m.errors, m.latency, m.denied, m.backendUp, m.reconnects, m.tools, m.auditFails} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("metrics already registered (one gateway per registry): %w", err)
			}
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) call(o *op, status string) {
	m.calls.WithLabelValues(o.kind, o.backend, o.name, o.caller.String(), status).Inc()
	if status != statusOK {
		m.errors.WithLabelValues(o.kind, o.backend, o.name, o.caller.String(), status).Inc()
	}
	m.latency.WithLabelValues(o.kind, o.backend, o.name, o.caller.String()).Observe(time.Since(o.start).Seconds())
}
