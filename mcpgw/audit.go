package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/mcpgw/policy"
	"github.com/umbra-mesh/umbra/mcpgw/redact"
	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// Audit record kinds.
const (
	KindCall            = "mcp.call"             // a tool call allowed and forwarded, written before the backend sees it
	KindPrompt          = "mcp.prompt"           // a prompt get allowed and forwarded, written likewise
	KindRead            = "mcp.read"             // a resource read allowed and forwarded, written likewise
	KindOutcome         = "mcp.outcome"          // how a forwarded request ended: status, latency, result size
	KindDenied          = "mcp.denied"           // a request refused by the gateway
	KindApproval        = "mcp.approval"         // a sensitive call's approval: requested, decided, used, refused
	KindToolPinned      = "mcp.tool_pinned"      // a tool definition seen for the first time
	KindToolQuarantined = "mcp.tool_quarantined" // a tool definition changed after approval
	KindToolRestored    = "mcp.tool_restored"    // a backend went back to the approved definition
	KindToolDecided     = "mcp.tool_decided"     // an administrator approved or denied a tool version
	KindAdminRefused    = "mcp.admin_refused"    // an administration request refused: not an administrator here, out of scope, self-approval
	KindPolicyChanged   = "mcp.policy_changed"
)

// Result statuses of forwarded calls.
const (
	statusOK          = "ok"
	statusToolError   = "tool_error"  // the tool reported an error (isError)
	statusRPCError    = "rpc_error"   // the backend answered with a JSON-RPC error
	statusTimeout     = "timeout"     // the per-call timeout expired
	statusCancelled   = "cancelled"   // the caller cancelled
	statusUnavailable = "unavailable" // no session with the backend, or it failed during the call
	statusTooLarge    = "too_large"   // the result exceeded the response limit
)

// op is one request from a caller on its way through the gateway. A refused request ends in one KindDenied
// record; a forwarded one has its KindCall, KindPrompt or KindRead record written before it is forwarded and a
// KindOutcome record, with the same ref, after.
type op struct {
	g        *Gateway
	kind     string // "tool", "prompt", "resource"
	ref      string
	start    time.Time
	caller   spiffeid.ID
	session  string
	name     string // exposed name or URI
	backend  string
	original string
	digest   string          // arguments digest
	args     json.RawMessage // canonical arguments
	approval string
	version  string
	diag     *policy.Diagnostic
	size     int64         // bytes of the result as JSON, once known
	intent   *authz.Intent // declared in the request's _meta, if any
}

// forwardKinds are the record kinds of a forwarded request, by op kind.
var forwardKinds = map[string]string{"tool": KindCall, "prompt": KindPrompt, "resource": KindRead}

func (g *Gateway) newOp(kind string, c *caller, session, name string) *op {
	return &op{g: g, kind: kind, ref: newRef(), start: time.Now(), caller: c.id, session: session, name: name,
		version: g.engine().Version()}
}

func (o *op) data(extra map[string]any) json.RawMessage {
	d := map[string]any{"ref": o.ref, o.kind: o.name}
	if o.backend != "" {
		d["backend"] = o.backend
	}
	if o.original != "" && o.original != o.name {
		d["backend_name"] = o.original
	}
	if o.session != "" {
		d["mcp_session"] = o.session
	}
	if o.digest != "" {
		d["args_digest"] = o.digest
	}
	if o.g.cfg.AuditArguments && len(o.args) > 0 {
		d["args"] = json.RawMessage(redact.JSON(o.args))
	}
	if o.approval != "" {
		d["approval"] = o.approval
	}
	if o.intent != nil {
		d["intent"] = o.intent
	}
	for k, v := range extra {
		d[k] = v
	}
	b, _ := json.Marshal(d)
	return b
}

func diagJSON(d *policy.Diagnostic) json.RawMessage {
	if d == nil {
		return nil
	}
	b, _ := json.Marshal(d)
	return b
}

// refuse records a refusal and returns the error the caller sees.
func (o *op) refuse(ctx context.Context, metricReason, reason string, err error) error {
	traceRefused(ctx, o, metricReason, reason)
	o.g.metrics.denied.WithLabelValues(o.caller.String(), metricReason).Inc()
	o.g.record(ctx, audit.Record{Kind: KindDenied, Actor: o.caller.String(), Decision: audit.DecisionDeny,
		Reason: reason, PolicyVersion: o.version, Diagnostic: diagJSON(o.diag), Data: o.data(nil)})
	return err
}

// begin writes the record of an allowed request and waits until the audit trail holds it, before anything
// reaches the backend: a request whose record cannot be written within Config.AuditTimeout is refused and never
// forwarded. The error is what the caller sees.
func (o *op) begin(ctx context.Context) error {
	g := o.g
	if g.cfg.Auditor == nil {
		traceAllowed(ctx, o)
		return nil
	}
	r := audit.Record{Time: time.Now().UTC(), Kind: forwardKinds[o.kind], Actor: o.caller.String(),
		Decision: audit.DecisionAllow, PolicyVersion: o.version, Diagnostic: diagJSON(o.diag), Data: o.data(nil)}
	if err := g.appendAudit(ctx, r); err != nil {
		var be *audit.BudgetError
		if errors.As(err, &be) {
			return o.refuse(ctx, "audit_budget_exhausted", "audit_budget_exhausted: "+be.Message,
				rpcError(CodeAuditBudget, o.ref, "", "the call was refused: %s", be.Message))
		}
		g.log.Error("mcpgw: request refused: its audit record could not be written", "ref", o.ref, "kind", r.Kind,
			"caller", o.caller, "err", redact.String(err.Error()))
		return o.refuse(ctx, "audit_unavailable", "audit record could not be written",
			rpcError(CodeAuditUnavailable, o.ref, "", "the call was refused: its audit record could not be written; try again later"))
	}
	traceAllowed(ctx, o)
	return nil
}

// done records how a forwarded request ended. The request has happened, so a record that cannot be written
// is counted and logged, not returned.
func (o *op) done(ctx context.Context, status, detail string) {
	traceDone(ctx, o, status)
	o.g.metrics.call(o, status)
	d := map[string]any{"ref": o.ref, o.kind: o.name, "status": status,
		"latency_ms": float64(time.Since(o.start).Microseconds()) / 1000}
	if o.backend != "" {
		d["backend"] = o.backend
	}
	if o.session != "" {
		d["mcp_session"] = o.session
	}
	if o.size > 0 {
		d["result_bytes"] = o.size
	}
	if detail != "" {
		d["detail"] = redact.String(detail)
	}
	data, _ := json.Marshal(d)
	o.g.record(ctx, audit.Record{Kind: KindOutcome, Actor: o.caller.String(), PolicyVersion: o.version, Data: data})
}

// record writes r without holding the request up: it hands r to the audit worker, or appends it directly when
// the worker is not running or is behind. A failure is counted in audit_failures_total and logged. Only
// records of what was refused or has already happened go this way; begin writes the records that must be
// durable before a request is forwarded.
func (g *Gateway) record(ctx context.Context, r audit.Record) {
	if g.cfg.Auditor == nil {
		return
	}
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	g.auditMu.RLock()
	queued := false
	if g.auditOn {
		select {
		case g.audits <- r:
			queued = true
		default:
		}
	}
	g.auditMu.RUnlock()
	if queued {
		return
	}
	g.outbox.Append(ctx, r)
}

func (g *Gateway) lost(r audit.Record, err error) {
	g.log.Error("mcpgw: audit record lost", "kind", r.Kind, "actor", r.Actor, "err", redact.String(err.Error()))
}

// heldRecords bounds the records held (audit.Outbox); heldRetry is how often the worker tries them again.
const (
	heldRecords = 10000
	heldRetry   = 2 * time.Second
)

// appendAudit appends r and waits at most Config.AuditTimeout for the audit trail to confirm it, even if the
// Auditor ignores its context. The caller's cancellation does not cut the wait short, so that a record is
// not abandoned half-written because its caller left. A failure is counted in audit_failures_total.
func (g *Gateway) appendAudit(ctx context.Context, r audit.Record) error {
	return g.appendTimed(ctx, r.Kind, func(ctx context.Context) error { return g.cfg.Auditor.Append(ctx, r) })
}

func (g *Gateway) appendTimed(ctx context.Context, kind string, write func(context.Context) error) error {
	if err := audit.Within(ctx, g.cfg.AuditTimeout, write); err != nil {
		g.metrics.auditFails.Inc()
		return fmt.Errorf("append %s record: %w", kind, err)
	}
	return nil
}

// auditWorker appends queued records until ctx ends, then drains the queue. Every heldRetry it appends the records
// held because the controller could not be reached, and once more, within AuditTimeout, as it stops.
func (g *Gateway) auditWorker(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(heldRetry)
	defer tick.Stop()
	for {
		select {
		case r := <-g.audits:
			g.outbox.Queued(context.Background(), r)
		case <-tick.C:
			g.outbox.Retry(context.Background())
		case <-ctx.Done():
			g.auditMu.Lock()
			g.auditOn = false
			g.auditMu.Unlock()
			for {
				select {
				case r := <-g.audits:
					g.outbox.Queued(context.Background(), r)
				default:
					rctx, cancel := context.WithTimeout(context.Background(), g.cfg.AuditTimeout)
					g.outbox.Retry(rctx)
					cancel()
					g.outbox.Stopped()
					return
				}
			}
		}
	}
}
