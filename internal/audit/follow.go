package audit

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/jsready"
)

// Follow calls fn for every record after sequence after, in stream order, as the records are stored, until ctx
// ends (it then returns ctx's error) or fn or the reading fails (also when the consumer it reads through is lost
// and cannot be created again at once, as while the stream elects a leader: follow again from the last record). With after 0 and since set, it starts at the
// first record stored at or after since instead; with both zero, at the beginning. Each record is checked on
// its own, as Scan checks it; a record that does not check stops the follow with an error wrapping ErrBroken.
func (l *Log) Follow(ctx context.Context, after uint64, since time.Time, fn func(Record) error) error {
	// One attempt at re-creating a consumer that was lost (its server died): the client's own retries back off to
	// 10 s between attempts of up to 10 s each, in silence, while every relay waiting for a record this follower
	// should read waits too. A failed attempt ends Follow with its error; callers follow again at once.
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, InactiveThreshold: 15 * time.Second,
		MaxResetAttempts: 1}
	switch {
	case after > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after+1
	case !since.IsZero():
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	// The consumer's creation waits 10 s for an answer, which nobody gives while a cluster elects its meta leader.
	if err := jsready.Check(ctx, l.js); err != nil {
		return fmt.Errorf("audit: follow stream: %w", err)
	}
	cons, err := l.stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("audit: follow stream: %w", err)
	}
	it, err := cons.Messages(jetstream.PullHeartbeat(readHeartbeat))
	if err != nil {
		return fmt.Errorf("audit: follow stream: %w", err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("audit: follow stream: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("audit: follow stream: %w", err)
		}
		r, err := l.check(meta.Sequence.Stream, msg.Subject(), msg.Data())
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
}
