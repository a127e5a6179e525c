package llmgw

import (
	"cmp"
	"context"
	"fmt"
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
		g.outbox.Append(ctx, r)
	}
}

type queuedRecord struct {
	ctx context.Context // the request's values (trace), not its cancellation
	r   audit.Record
}

func (g *Gateway) lost(r audit.Record, err error) {
	g.log.Error("llmgw: audit record lost", "kind", r.Kind, "actor", r.Actor, "err", err)
}

// heldRecords bounds the records held (audit.Outbox); heldRetry is how often the worker tries them again.
const (
	heldRecords = 10000
	heldRetry   = 2 * time.Second
)

// openHeld keeps held records in cfg.HeldBucket, and takes those an earlier run left there.
func (g *Gateway) openHeld(ctx context.Context) error {
	b, err := audit.OpenHeldBucket(ctx, g.cfg.State, cmp.Or(g.cfg.HeldBucket, "llmgw_audit_held"))
	if err != nil {
		return err
	}
	n, err := g.held.Open(ctx, b)
	if n > 0 {
		g.log.Warn("llmgw: audit records held by an earlier run; appending them once the controller is reached", "records", n)
	}
	if err != nil {
		g.log.Error("llmgw: held audit records left unread", "err", err)
	}
	return nil
}

// auditWorker appends queued records until ctx ends, then stops the queue and drains it. Every heldRetry it
// appends the records held because the controller could not be reached, and once more as it stops.
func (g *Gateway) auditWorker(ctx context.Context) {
	g.auditMu.Lock()
	g.auditOn = true
	g.auditMu.Unlock()
	tick := time.NewTicker(heldRetry)
	defer tick.Stop()
	for {
		select {
		case q := <-g.audits:
			g.outbox.Queued(q.ctx, q.r)
		case <-tick.C:
			g.outbox.Retry(context.Background())
		case <-ctx.Done():
			g.auditMu.Lock()
			g.auditOn = false
			g.auditMu.Unlock()
			// The drain is bounded: a full queue must not hold the shutdown for one AuditTimeout per record.
			// What is left past the deadline is held, untried: kept for the next run with a state store.
			deadline := time.Now().Add(g.cfg.AuditTimeout)
			for {
				select {
				case q := <-g.audits:
					if time.Now().After(deadline) {
						g.outbox.Keep(q.ctx, q.r, nil, fmt.Errorf("not tried: shutting down: %w", audit.ErrNotSent))
						continue
					}
					g.outbox.Queued(q.ctx, q.r)
				default:
					rctx, cancel := context.WithDeadline(context.Background(), deadline)
					g.outbox.Retry(rctx)
					cancel()
					g.outbox.Stopped()
					return
				}
			}
		}
	}
}
