package llmgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/llmgw/budget"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
	"github.com/umbra-mesh/umbra/llmgw/route"
	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// Audit record kinds.
const (
	KindCall           = "llm.call"            // a call allowed and forwarded, written before any model sees it
	KindOutcome        = "llm.outcome"         // how a forwarded call ended: status, tokens, cost, upstream error
	KindUnavailable    = "llm.unavailable"     // refused because usage accounting or the audit trail was unavailable
	KindDenied         = "llm.denied"          // refused by policy or an unknown identity
	KindBudgetExceeded = "llm.budget_exceeded" // refused by a daily or monthly budget
	KindRateLimited    = "llm.rate_limited"    // refused by a rate or concurrency limit
	KindGuardrail      = "llm.guardrail"       // refused by a guardrail
	KindInvalid        = "llm.invalid"         // a malformed request, an unknown model, no route
	KindUsageRead      = "llm.usage_read"      // an administrator read someone else's usage
)

// maxLoggedPrompt bounds the prompt and completion text put in an audit record.
const maxLoggedPrompt = 64 << 10

// auditRetryAfter is what a caller refused for want of an audit record is told to wait.
const auditRetryAfter = 5 * time.Second

// call follows one request for its audit record and metrics.
type call struct {
	id        string
	operation string // "chat" or "embeddings"
	ingress   string // "openai" or "anthropic"
	start     time.Time
	principal Principal
	known     bool          // principal identified
	intent    *authz.Intent // declared in the request's Umbra-Intent headers, if any
	begun     bool          // its KindCall record is written: it may go upstream, and its end is a KindOutcome record

	kind       string
	status     int
	errCode    string
	message    string
	requested  string
	model      string
	provider   string
	upstream   string
	endpoint   string
	stream     bool
	attempts   int
	route      *route.Decision
	findings   []finding
	decision   *decision
	limit      *budget.Exceeded
	usage      chat.Usage
	costNanos  int64
	ttft       time.Duration
	prompt     json.RawMessage
	completion string

	upstreamStatus int
	routerUsage    *routerUsage // the routing model's own calls, billed to the caller
	upstreamSpan   trace.Span   // the llm.upstream span of a stream that answered, ended by finish
}

// routerUsage is what the routing model's embedding and classifier calls for one request used.
type routerUsage struct {
	InputTokens  int64   `json:"input_tokens"`
	OutputTokens int64   `json:"output_tokens"`
	CostUSD      float64 `json:"cost_usd"`
}

// finding counts guardrail findings of one kind in one direction; a record never holds the text found.
type finding struct {
	Direction string         `json:"direction"` // request or response
	Field     string         `json:"field"`     // content, tool_calls.name, tool_calls.arguments, tools, refusal, logprobs, other
	Category  guard.Category `json:"category"`
	Detector  string         `json:"detector"`
	Mode      guard.Mode     `json:"mode"`
	Count     int            `json:"count"`
}

func newCall(operation, ingress string) *call {
	return &call{id: newRequestID(), operation: operation, ingress: ingress, start: time.Now(), kind: KindCall}
}

// fail records a refusal or failure on the call.
func (c *call) fail(kind string, e *apiError) {
	c.kind, c.status, c.errCode, c.message = kind, e.Status, e.Code, e.Message
}

func (c *call) addFindings(direction, field string, fs []guard.Finding) {
next:
	for _, f := range fs {
		for i := range c.findings {
			if g := &c.findings[i]; g.Direction == direction && g.Field == field && g.Detector == f.Detector && g.Mode == f.Mode {
				g.Count++
				continue next
			}
		}
		c.findings = append(c.findings, finding{Direction: direction, Field: field, Category: f.Category,
			Detector: f.Detector, Mode: f.Mode, Count: 1})
	}
}

// startData is the Data of a KindCall record: what was decided before the call went upstream.
type startData struct {
	RequestID      string          `json:"request_id"`
	Operation      string          `json:"operation"`
	Ingress        string          `json:"ingress"`
	ModelRequested string          `json:"model_requested,omitempty"`
	Model          string          `json:"model,omitempty"`
	Stream         bool            `json:"stream,omitempty"`
	Route          *route.Decision `json:"route,omitempty"`
	Guardrails     []finding       `json:"guardrails,omitempty"` // in the request
	Prompt         json.RawMessage `json:"prompt,omitempty"`
	PromptOmitted  bool            `json:"prompt_omitted,omitempty"` // longer than the audit record allows
	Intent         *authz.Intent   `json:"intent,omitempty"`         // as the caller declared it
	// Routing: written before the routing model's own model calls, so model and route are not chosen yet
	// (they are in the llm.outcome record).
	Routing bool `json:"routing,omitempty"`
}

// callData is the Data of a KindOutcome record and of a refusal.
type callData struct {
	RequestID      string          `json:"request_id"`
	Operation      string          `json:"operation"`
	Ingress        string          `json:"ingress"`
	Status         int             `json:"status"`
	Error          string          `json:"error,omitempty"`
	ModelRequested string          `json:"model_requested,omitempty"`
	Model          string          `json:"model,omitempty"`
	Provider       string          `json:"provider,omitempty"`
	UpstreamModel  string          `json:"upstream_model,omitempty"`
	Endpoint       string          `json:"endpoint,omitempty"`
	Stream         bool            `json:"stream,omitempty"`
	Attempts       int             `json:"attempts,omitempty"`
	InputTokens    int64           `json:"input_tokens"`
	OutputTokens   int64           `json:"output_tokens"`
	CostUSD        float64         `json:"cost_usd"`
	LatencyMS      float64         `json:"latency_ms"`
	TTFTMS         float64         `json:"ttft_ms,omitempty"`
	Route          *route.Decision `json:"route,omitempty"`
	Guardrails     []finding       `json:"guardrails,omitempty"`
	Limit          *limitData      `json:"limit,omitempty"`
	Prompt         json.RawMessage `json:"prompt,omitempty"`         // of a refusal; a forwarded call's is in its KindCall record
	PromptOmitted  bool            `json:"prompt_omitted,omitempty"` // longer than the audit record allows
	Completion     string          `json:"completion,omitempty"`
	UpstreamStatus int             `json:"upstream_status,omitempty"` // of the last failed attempt
	RouterUsage    *routerUsage    `json:"router_usage,omitempty"`    // billed to the caller on top of the call's own
	Intent         *authz.Intent   `json:"intent,omitempty"`          // as the caller declared it
}

type limitData struct {
	Subject string `json:"subject"`
	Limit   string `json:"limit"`
}

// begin writes the call's KindCall record and waits until the audit trail holds it, before anything goes
// upstream: a call whose record cannot be written within Config.AuditTimeout is refused, and the error is what
// the caller is told (503 audit_unavailable with Retry-After).
//
// A call routed by the routing model is begun before the routing model's own embedding or classifier call, if
// it makes one: its llm.call record then says routing, and the model and route chosen are in its llm.outcome.
func (g *Gateway) begin(ctx context.Context, c *call) *apiError {
	if c.begun {
		return nil
	}
	if g.cfg.Auditor == nil {
		c.begun = true
		return nil
	}
	data := startData{RequestID: c.id, Operation: c.operation, Ingress: c.ingress, ModelRequested: c.requested,
		Model: c.model, Stream: c.stream, Route: c.route, Guardrails: c.findings, Intent: c.intent,
		Routing: c.model == "" && c.requested == g.cfg.Router.Name}
	if g.cfg.LogPrompts {
		if len(c.prompt) <= maxLoggedPrompt {
			data.Prompt = c.prompt
		} else {
			data.PromptOmitted = true
		}
	}
	rec := audit.Record{Time: time.Now().UTC(), Kind: KindCall, Actor: c.principal.ID.String(),
		Decision: audit.DecisionAllow, PolicyVersion: g.authz.version}
	if c.decision != nil {
		rec.Diagnostic = c.decision.JSON()
	}
	rec.Data, _ = json.Marshal(data)
	if err := g.appendAudit(ctx, rec); err != nil {
		var be *audit.BudgetError
		if errors.As(err, &be) {
			e := errorf(http.StatusTooManyRequests, "rate_limit_error", codeAuditBudget, "the call was refused: %s", be.Message)
			e.RetryAfter = be.RetryAfter
			c.fail(KindDenied, e)
			return e
		}
		g.log.Error("llmgw: call refused: its audit record could not be written", "request_id", c.id, "err", err)
		e := errorf(http.StatusServiceUnavailable, "server_error", codeAuditUnavailable,
			"the call was refused: its audit record could not be written; try again later")
		e.RetryAfter = auditRetryAfter
		c.fail(KindUnavailable, e)
		return e
	}
	c.begun = true
	return nil
}

// appendAudit appends r and waits at most Config.AuditTimeout for the audit trail to confirm it, even if the
// Auditor ignores its context. The caller's cancellation does not cut the wait short, so that a record is not
// abandoned half-written because its caller left. A failure is counted in audit_failures_total.
func (g *Gateway) appendAudit(ctx context.Context, r audit.Record) error {
	return g.appendTimed(ctx, r.Kind, func(ctx context.Context) error { return g.cfg.Auditor.Append(ctx, r) })
}

func (g *Gateway) appendTimed(ctx context.Context, kind string, write func(context.Context) error) error {
	if err := audit.Within(ctx, g.cfg.AuditTimeout, write); err != nil {
		g.metrics.auditFailures.Inc()
		return fmt.Errorf("append %s record: %w", kind, err)
	}
	return nil
}

// finish writes the call's metrics and hands its audit record to record (auditq.go).
func (g *Gateway) finish(ctx context.Context, c *call) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	if c.upstreamSpan != nil {
		outcome := "ok"
		if c.errCode != "" {
			outcome = c.errCode // the stream broke off, or the caller left
			c.upstreamSpan.SetStatus(codes.Error, c.message)
		}
		c.upstreamSpan.SetAttributes(attribute.String("umbra.outcome", outcome))
		c.upstreamSpan.End()
	}
	traceCall(ctx, c)
	elapsed := time.Since(c.start)
	caller := "unauthenticated"
	if c.known {
		caller = c.principal.ID.String()
	}
	reqModel := c.requested
	outcome := "ok"
	if c.errCode != "" {
		outcome = c.errCode
		g.metrics.errors.WithLabelValues(caller, reqModel, c.errCode).Inc()
	}
	g.metrics.requests.WithLabelValues(caller, reqModel, outcome).Inc()
	g.metrics.duration.WithLabelValues(c.operation, c.provider, reqModel, caller, c.errCode).Observe(elapsed.Seconds())
	if c.model != "" && c.usage != (chat.Usage{}) {
		g.metrics.tokens.WithLabelValues(c.operation, c.provider, reqModel, c.model, "input", caller).Observe(float64(c.usage.Input))
		if c.operation == "chat" {
			g.metrics.tokens.WithLabelValues(c.operation, c.provider, reqModel, c.model, "output", caller).Observe(float64(c.usage.Output))
		}
		g.metrics.cost.WithLabelValues(caller, c.model).Add(float64(c.costNanos) / 1e9)
	}
	if c.stream && c.ttft > 0 {
		g.metrics.ttft.WithLabelValues(c.operation, c.provider, reqModel, caller).Observe(c.ttft.Seconds())
	}
	for _, f := range c.findings {
		g.metrics.findings.WithLabelValues(f.Direction, f.Field, string(f.Category), f.Detector, string(f.Mode)).Add(float64(f.Count))
	}
	if !c.known || g.cfg.Auditor == nil {
		return
	}
	data := callData{
		RequestID: c.id, Operation: c.operation, Ingress: c.ingress, Status: c.status, Error: c.errCode,
		ModelRequested: c.requested, Model: c.model, Provider: c.provider, UpstreamModel: c.upstream,
		Endpoint: c.endpoint, Stream: c.stream, Attempts: c.attempts,
		InputTokens: c.usage.Input, OutputTokens: c.usage.Output, CostUSD: float64(c.costNanos) / 1e9,
		LatencyMS: float64(elapsed.Microseconds()) / 1000, TTFTMS: float64(c.ttft.Microseconds()) / 1000,
		Route: c.route, Guardrails: c.findings, UpstreamStatus: c.upstreamStatus, RouterUsage: c.routerUsage,
		Intent: c.intent,
	}
	if c.limit != nil {
		data.Limit = &limitData{Subject: c.limit.Subject, Limit: c.limit.Limit}
	}
	if g.cfg.LogPrompts {
		if !c.begun { // a forwarded call's prompt is in its KindCall record
			if len(c.prompt) <= maxLoggedPrompt {
				data.Prompt = c.prompt
			} else {
				data.PromptOmitted = true
			}
		}
		data.Completion = c.completion
		if len(data.Completion) > maxLoggedPrompt {
			data.Completion = data.Completion[:maxLoggedPrompt]
		}
	}
	rec := audit.Record{
		Actor:         c.principal.ID.String(),
		Reason:        c.message,
		PolicyVersion: g.authz.version,
	}
	if c.begun {
		// The call has happened: its outcome cannot be refused any more, only counted and logged if lost.
		rec.Kind = KindOutcome
	} else {
		rec.Kind, rec.Decision = c.kind, audit.DecisionDeny
		if c.decision != nil {
			rec.Diagnostic = c.decision.JSON()
		}
	}
	rec.Data, _ = json.Marshal(data)
	g.record(ctx, rec)
}
