package audit

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Outbox writes the records of what already happened that nobody waits for (a gateway's outcomes, refusals and
// pins), so that none is lost or stored twice for want of an answer. Through a OnceAppender each goes under an ID
// of its own; one that was not sent, or whose answer was lost and can be asked after (HeldFinder), is held in
// Held under that ID, and Retry appends, or asks after, the held records. While any held record was never sent, a
// record handed to Queued is held behind them untried: the writer is then known not to answer, and order is kept.
type Outbox struct {
	Held   *Held
	Writer Appender
	// Bounded runs one append of a record of kind as its user bounds and counts appends (a timeout that the
	// caller's cancellation does not cut short, a failure metric).
	Bounded func(ctx context.Context, kind string, write func(context.Context) error) error
	Timeout time.Duration // bounds a question about a held record (HeldFinder)
	Log     *slog.Logger
	Name    string              // the user's name, first in its log lines ("mcpgw")
	Lost    func(Record, error) // logs a record given up
}

// Append appends r, and holds it if it is to be held (Keep).
func (o *Outbox) Append(ctx context.Context, r Record) {
	a, err := o.appendOnce(ctx, r)
	if err != nil {
		o.Keep(ctx, r, a, err)
	}
}

// appendOnce appends r under an ID of its own when the Writer takes one (a OnceAppender); a is nil otherwise.
func (o *Outbox) appendOnce(ctx context.Context, r Record) (a *Attempt, err error) {
	w, ok := o.Writer.(OnceAppender)
	if !ok {
		return nil, o.Bounded(ctx, r.Kind, func(ctx context.Context) error { return o.Writer.Append(ctx, r) })
	}
	if a, err = NewAttempt(r); err != nil {
		return nil, err
	}
	return a, o.Bounded(ctx, r.Kind, func(ctx context.Context) error { return w.AppendOnce(ctx, a.Record()) })
}

// Queued is Append for records that wait in a queue: while records are held that no try has sent to the trail, r
// is held behind them without a try of its own, so that a writer that cannot be reached costs one try per Retry,
// not one per record, and records reach the trail in the order they happened. Records held only because their
// answer was lost (Held.AnyUnsent) do not hold r back: they say nothing of the writer now, and wait minutes for an
// answer that is certain.
func (o *Outbox) Queued(ctx context.Context, r Record) {
	if !o.Held.AnyUnsent() {
		o.Append(ctx, r)
		return
	}
	o.Keep(ctx, r, nil, fmt.Errorf("not tried: held behind records the trail has not received yet: %w", ErrNotSent))
}

// Keep holds r, whose append (a, if it had an ID of its own) failed with err, if it is to be (Held.HoldFailed);
// otherwise, or beyond Held's bound, it is lost.
func (o *Outbox) Keep(ctx context.Context, r Record, a *Attempt, err error) {
	_, canFind := o.Writer.(HeldFinder)
	held, herr := o.Held.HoldFailed(ctx, r, a, err, canFind)
	if herr != nil {
		o.Log.Warn(o.Name+": the gateway's state store failed to keep a held audit record; it is held in memory only", "err", herr)
	}
	if !held {
		o.Lost(r, err)
		return
	}
	o.Log.Warn(o.Name+": audit record held until the controller is reached", "kind", r.Kind, "held", o.Held.Len(), "err", err)
}

// Retry appends, or asks after, the held records while the writer can be reached (Held.Retry).
func (o *Outbox) Retry(ctx context.Context) {
	if o.Held.Len() == 0 {
		return
	}
	n, err := o.Held.Retry(ctx, func(ctx context.Context, e HeldRecord) error {
		return o.Bounded(ctx, e.Record.Kind, func(ctx context.Context) error { return AppendHeld(ctx, o.Writer, e) })
	}, FindHeldWithin(o.Writer, o.Timeout), o.Lost)
	if n > 0 {
		o.Log.Info(o.Name+": held audit records appended", "records", n, "still_held", o.Held.Len())
	}
	if err != nil {
		o.Log.Warn(o.Name+": held audit records: the gateway's state store failed", "err", err)
	}
}

// Stopped logs what the held records come to as their user stops: those in memory only are lost, those in the
// bucket kept for the next run.
func (o *Outbox) Stopped() {
	if n := o.Held.Unkept(); n > 0 {
		o.Log.Error(o.Name+": audit records lost: shutting down while the controller cannot be reached", "records", n)
	}
	if n := o.Held.Len() - o.Held.Unkept(); n > 0 {
		o.Log.Warn(o.Name+": audit records kept in the state store for the next run: the controller cannot be reached", "records", n)
	}
}
