package audit

import (
	"context"
	"time"
)

// Within runs write, an append to the trail, and waits at most timeout for it, even if write ignores its context.
// ctx's cancellation does not cut the wait short (its values are kept), so that a record is not abandoned
// half-written because its caller left.
func Within(ctx context.Context, timeout time.Duration, write func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- write(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		select {
		case err := <-done: // it answered as the deadline passed
			return err
		default:
			return ctx.Err()
		}
	}
}

// Appender appends records to the trail.
type Appender interface {
	Append(ctx context.Context, r Record) error
}

// AppendHeld appends the held record e with w: under e's ID when w is a OnceAppender, else as a new record.
func AppendHeld(ctx context.Context, w Appender, e HeldRecord) error {
	if o, ok := w.(OnceAppender); ok {
		return o.AppendOnce(ctx, e)
	}
	return w.Append(ctx, e.Record)
}

// FindHeldWithin is w's FindHeld (HeldFinder) answered within timeout, or nil when w cannot be asked.
func FindHeldWithin(w Appender, timeout time.Duration) func(context.Context, HeldRecord) (bool, error) {
	f, ok := w.(HeldFinder)
	if !ok {
		return nil
	}
	return func(ctx context.Context, e HeldRecord) (bool, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return f.FindHeld(ctx, e)
	}
}
