package mcpgw

import (
	"context"
	"encoding/json"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/mcpgw/policy"
	"github.com/umbra-mesh/umbra/mcpgw/redact"
)

// Audit record kinds.
const (
	KindCall            = "mcp.call"             // a tool call that reached a backend
	KindPrompt          = "mcp.prompt"           // a prompt get that reached a backend
	KindRead            = "mcp.read"             // a resource read that reached a backend
	KindDenied          = "mcp.denied"           // a request refused by the gateway
	KindApproval        = "mcp.approval"         // a sensitive call's approval: requested, decided, used, refused
	KindToolPinned      = "mcp.tool_pinned"      // a tool definition seen for the first time
	KindToolQuarantined = "mcp.tool_quarantined" // a tool definition changed after approval
	KindToolRestored    = "mcp.tool_restored"    // a backend went back to the approved definition
	KindToolDecided     = "mcp.tool_decided"     // an administrator approved or denied a tool version
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

// op is one request from a caller on its way through the gateway; it ends in exactly one audit record.
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
}

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
	o.g.metrics.denied.WithLabelValues(o.caller.String(), metricReason).Inc()
	o.g.record(ctx, audit.Record{Kind: KindDenied, Actor: o.caller.String(), Decision: audit.DecisionDeny,
		Reason: reason, PolicyVersion: o.version, Diagnostic: diagJSON(o.diag), Data: o.data(nil)})
	return err
}

// done records a request that reached a backend.
func (o *op) done(ctx context.Context, status, detail string) {
	o.g.metrics.call(o, status)
	kind := map[string]string{"tool": KindCall, "prompt": KindPrompt, "resource": KindRead}[o.kind]
	extra := map[string]any{"status": status, "latency_ms": float64(time.Since(o.start).Microseconds()) / 1000}
	if detail != "" {
		extra["detail"] = redact.String(detail)
	}
	o.g.record(ctx, audit.Record{Kind: kind, Actor: o.caller.String(), Decision: audit.DecisionAllow,
		PolicyVersion: o.version, Diagnostic: diagJSON(o.diag), Data: o.data(extra)})
}

// record hands r to the audit worker, or appends it directly when the worker is not running or is behind.
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
	g.appendAudit(context.WithoutCancel(ctx), r)
}

func (g *Gateway) appendAudit(ctx context.Context, r audit.Record) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := g.cfg.Auditor.Append(ctx, r); err != nil {
		g.metrics.auditFails.Inc()
		g.log.Error("mcpgw: audit record lost", "kind", r.Kind, "actor", r.Actor, "err", redact.String(err.Error()))
	}
}

// auditWorker appends queued records until ctx ends, then drains the queue.
func (g *Gateway) auditWorker(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case r := <-g.audits:
			g.appendAudit(context.Background(), r)
		case <-ctx.Done():
			g.auditMu.Lock()
			g.auditOn = false
			g.auditMu.Unlock()
			for {
				select {
				case r := <-g.audits:
					g.appendAudit(context.Background(), r)
				default:
					return
				}
			}
		}
	}
}
