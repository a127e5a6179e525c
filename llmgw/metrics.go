package llmgw

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics follow the OpenTelemetry GenAI semantic conventions as Prometheus exports them (dots become
// underscores, durations get _seconds), plus gateway counters under umbra_llmgw_. Caller labels are SPIFFE IDs:
// their number is the number of workloads using the gateway.
type metrics struct {
	tokens        *prometheus.HistogramVec
	ttft          *prometheus.HistogramVec
	duration      *prometheus.HistogramVec
	requests      *prometheus.CounterVec
	errors        *prometheus.CounterVec
	cost          *prometheus.CounterVec
	findings      *prometheus.CounterVec
	attempts      *prometheus.CounterVec
	endpointUp    *prometheus.GaugeVec
	routes        *prometheus.CounterVec
	auditFailures prometheus.Counter
	refusals      *prometheus.CounterVec
}

// Label names from the GenAI conventions.
const (
	lOperation = "gen_ai_operation_name"
	lProvider  = "gen_ai_provider_name"
	lReqModel  = "gen_ai_request_model"
	lRespModel = "gen_ai_response_model"
	lTokenType = "gen_ai_token_type"
	lErrorType = "error_type"
	lCaller    = "caller"
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		tokens: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gen_ai_client_token_usage", Help: "Tokens used per call, by token type (input or output).",
			Buckets: []float64{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864},
		}, []string{lOperation, lProvider, lReqModel, lRespModel, lTokenType, lCaller}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gen_ai_server_time_to_first_token_seconds", Help: "Time from request to the first streamed token.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10},
		}, []string{lOperation, lProvider, lReqModel, lCaller}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gen_ai_server_request_duration_seconds", Help: "Duration of calls through the gateway; error_type is empty on success.",
			Buckets: []float64{0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92},
		}, []string{lOperation, lProvider, lReqModel, lCaller, lErrorType}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_llmgw_requests_total", Help: "Calls by outcome.",
		}, []string{lCaller, lReqModel, "outcome"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_llmgw_errors_total", Help: "Failed calls by error type.",
		}, []string{lCaller, lReqModel, lErrorType}),
		cost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_llmgw_cost_usd_total", Help: "Cost of calls in US dollars, from the price table.",
		}, []string{lCaller, lRespModel}),
		findings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_llmgw_guardrail_findings_total", Help: "Guardrail findings by direction, field, category, detector and mode.",
		}, []string{"direction", "field", "category", "detector", "mode"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_llmgw_upstream_attempts_total", Help: "Attempts on upstream endpoints by outcome.",
		}, []string{lRespModel, lProvider, "endpoint", "outcome"}),
		endpointUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "umbra_llmgw_endpoint_up", Help: "1 when an endpoint is taking first attempts, 0 while it is tried last.",
		}, []string{lRespModel, "endpoint"}),
		routes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_llmgw_route_decisions_total", Help: "Routing-model decisions by deciding layer.",
		}, []string{"layer", lRespModel}),
		auditFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "umbra_llmgw_audit_failures_total", Help: "Audit records that could not be appended.",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_llmgw_budget_refusals_total",
			Help: "Calls and router calls refused by a budget or rate limit, by limit and subject (identity or org).",
		}, []string{"limit", "subject"}),
	}
	for _, c := range []prometheus.Collector{m.tokens, m.ttft, m.duration, m.requests, m.errors, m.cost,
		m.findings, m.attempts, m.endpointUp, m.routes, m.auditFailures, m.refusals} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
