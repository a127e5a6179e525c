package llmgw

import (
	"context"
	"time"

	"github.com/umbra-mesh/umbra/internal/audit"
)

// A call's llm.call record is written, and confirmed, before the call goes upstream: that is what makes the
// gateway fail closed. The record of how it ended (llm.outcome, or the refusal of a call that never went
// upstream) describes what has already happened and cannot be refused any more, so it does not hold the caller
// up: while Run runs, it is handed to a worker, and the handler returns at once (the caller's connection is free
// for its next request instead of waiting for the audit trail, a controller round trip under umbra llm gateway).
// When the queue is full, or Run is not running, the handler appends it itself. Run drains the queue when its
// context ends.

// auditQueueLen bounds the records waiting for the worker; beyond it handlers write their own.
const auditQueueLen = 1024

// record writes r without holding the request up when the worker runs (see above). A failure is counted in
// audit_failures_total and logged.
func (g *Gateway) record(ctx context.Context, r audit.Record) {
	if r.Time.IsZero() {
		r.Time = time.Now().UTC() // when it happened, not when the worker gets to it
	}
	g.auditMu.RLock()
	queued := false
	if g.auditOn {
		select {
		case g.audits <- queuedRecord{ctx: context.WithoutCancel(ctx), r: r}:
			queued = true
		default:
		}
	}
	g.auditMu.RUnlock()
	if !queued {
		g.appendLogged(ctx, r)
	}
}

type queuedRecord struct {
	ctx context.Context // the request's values (trace), not its cancellation
	r   audit.Record
}

func (g *Gateway) appendLogged(ctx context.Context, r audit.Record) {
	if err := g.appendAudit(ctx, r); err != nil {
		g.log.Error("llmgw: audit record lost", "kind", r.Kind, "actor", r.Actor, "err", err)
	}
}

// auditWorker appends queued records until ctx ends, then stops the queue and drains it.
func (g *Gateway) auditWorker(ctx context.Context) {
	g.auditMu.Lock()
	g.auditOn = true
	g.auditMu.Unlock()
	for {
		select {
		case q := <-g.audits:
			g.appendLogged(q.ctx, q.r)
		case <-ctx.Done():
			g.auditMu.Lock()
			g.auditOn = false
			g.auditMu.Unlock()
			// The drain is bounded: with the audit trail unreachable, a full queue must not hold the
			// shutdown for one AuditTimeout per record.
			deadline := time.Now().Add(g.cfg.AuditTimeout)
			for {
				select {
				case q := <-g.audits:
					if time.Now().After(deadline) {
						g.metrics.auditFailures.Inc()
						g.log.Error("llmgw: audit record lost: shutting down", "kind", q.r.Kind, "actor", q.r.Actor)
						continue
					}
					g.appendLogged(q.ctx, q.r)
				default:
					return
				}
			}
		}
	}
}
