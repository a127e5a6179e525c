package envstore

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/jsfollow"
)

// Follow calls fn for every envelope of every session stored after stream sequence after, in stream order, and
// then for each one appended later, as it is appended. It returns when ctx ends (ctx's error, wrapped), when fn
// returns an error (that error, wrapped), or when the consumer it reads through is lost and cannot be created
// again at once (as while the stream elects a leader). fn runs on Follow's goroutine, one envelope at a time.
// Follow keeps no state: it reads through a consumer of its own, in order (a skipped delivery ends it, so that no
// envelope is skipped or repeated), which it removes from the server when it returns. Msg.Delivered is 1.
func (s *Store) Follow(ctx context.Context, after uint64, fn func(Msg) error) error {
	// A consumer of its own, given up at once when lost (jsfollow), not the client's ordered consumer, which
	// mends a lost one in silence, waiting 10 s for each creation during a cluster's elections: a failure ends
	// Follow, and the recorder follows again at once.
	rd, err := jsfollow.Open(ctx, s.js, s.stream, jsfollow.Config{StartSeq: after + 1, Heartbeat: orderedHeartbeat})
	if err != nil {
		return fmt.Errorf("envstore: follow: %w", err)
	}
	defer rd.Stop(ctx)
	for {
		jm, err := rd.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("envstore: follow: %w", ctx.Err())
			}
			return fmt.Errorf("envstore: follow: %w", err)
		}
		md, err := jm.Metadata()
		if err != nil {
			return fmt.Errorf("envstore: follow: %w", err)
		}
		session, ok := s.sessionOf(jm.Subject())
		if !ok {
			continue
		}
		m := Msg{Envelope: envelope(session, jm.Headers(), jm.Data()), StreamSeq: md.Sequence.Stream, Delivered: 1}
		if err := fn(m); err != nil {
			return fmt.Errorf("envstore: follow: at stream sequence %d: %w", m.StreamSeq, err)
		}
	}
}

// ordered starts reading through an ordered consumer. stop ends the reading and removes the consumer from the
// server at once, rather than leaving it there until its inactivity threshold (5 minutes) passes.
func (s *Store) ordered(ctx context.Context, cfg jetstream.OrderedConsumerConfig) (it jetstream.MessagesContext, stop func(), err error) {
	cons, err := s.stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	if it, err = cons.Messages(jetstream.PullHeartbeat(orderedHeartbeat)); err != nil {
		return nil, nil, err
	}
	return it, func() {
		it.Stop()
		if info := cons.CachedInfo(); info != nil {
			// Best effort: a consumer left behind is removed by the server once inactive.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
			_ = s.stream.DeleteConsumer(dctx, info.Name)
			cancel()
		}
	}, nil
}
