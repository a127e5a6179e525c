package envstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Scan calls fn for every envelope stored at stream sequences up to through, in stream order, and returns once
// it has seen the last one (or the stream's last message, if that comes first). It reads through an ordered
// consumer, removed when Scan returns. fn's error ends the scan and is returned, wrapped.
func (s *Store) Scan(ctx context.Context, through uint64, fn func(Msg) error) error {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("envstore: scan: %w", err)
	}
	last := min(through, info.State.LastSeq)
	if info.State.Msgs == 0 || last < info.State.FirstSeq {
		return nil
	}
	it, stop, err := s.ordered(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return fmt.Errorf("envstore: scan: %w", err)
	}
	defer stop()
	for {
		jm, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return fmt.Errorf("envstore: scan: %w", err)
		}
		md, err := jm.Metadata()
		if err != nil {
			return fmt.Errorf("envstore: scan: %w", err)
		}
		if md.Sequence.Stream > last {
			return nil
		}
		if session, ok := s.sessionOf(jm.Subject()); ok {
			m := Msg{Envelope: envelope(session, jm.Headers(), jm.Data()), StreamSeq: md.Sequence.Stream, Delivered: 1}
			if err := fn(m); err != nil {
				return fmt.Errorf("envstore: scan: at stream sequence %d: %w", m.StreamSeq, err)
			}
		}
		if md.Sequence.Stream >= last || md.NumPending == 0 {
			return nil
		}
	}
}

// PurgeSession removes every envelope of the session from the stream, and what the Store remembers of it. It is
// for sessions that are over and will never be appended to again (their envelopes exported first): an id
// appended after the purge would not be found as a duplicate. Purging a session with no envelopes does nothing.
func (s *Store) PurgeSession(ctx context.Context, session string) error {
	if !validName(session, maxSessionLen) {
		return badSession(session)
	}
	for _, subj := range []string{s.sessionWildcard(session), s.sessionSubject(session)} {
		if err := s.stream.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("envstore: purge session %s: %w", session, err)
		}
	}
	s.Forget(session)
	return nil
}
