package envstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotPending means Ack was given an envelope that is not the Receiver's unacknowledged one.
var ErrNotPending = errors.New("envstore: envelope is not the one awaiting acknowledgement")

const (
	// ackTimeout bounds how long Ack waits for JetStream to confirm.
	ackTimeout = 10 * time.Second
	// receiverIdle is how long a cursor may go unread before the server removes it.
	receiverIdle = 24 * time.Hour
	// pullBatch is how many envelopes a Receiver asks for at once.
	pullBatch = 8
	// pullHeartbeat is how often the server tells an idle Receiver's pull that it still holds it (Receiver).
	pullHeartbeat = 2 * time.Second
	// orderedHeartbeat is the idle heartbeat of every ordered read (Follow, scans). An ordered consumer lives on
	// one server of a cluster; when that server dies only the missing heartbeats say so, and the client creates
	// the consumer again from where it was after two are missed. With the client's default for ordered
	// consumers, 5 s, the recorder's follow of the stream (and every acknowledgement waiting on it) stalled 10 s.
	orderedHeartbeat = time.Second
)

// Msg is a stored envelope as read back.
type Msg struct {
	Envelope
	StreamSeq uint64 // stream sequence
	Delivered uint64 // delivery attempt to this cursor, 1 on first delivery
}

// Receiver is a durable cursor over one session's envelopes addressed to one recipient, in stream order. It
// resumes after the last acknowledged envelope, across Store re-opens and server restarts. Use one Receiver per
// (session, recipient) at a time, from one goroutine.
type Receiver struct {
	session, to string
	name        string
	stream      jetstream.Stream
	it          jetstream.MessagesContext

	mu      sync.Mutex
	pending jetstream.Msg // yielded by Next, not yet acknowledged
	pendSeq uint64
	acked   uint64 // stream sequence of the last envelope acknowledged through this Receiver
	closed  bool
}

// receiverName is the durable consumer name for (session, to): a hash, as recipient keys are not valid names.
func receiverName(session, to string) string {
	h := sha256.Sum256([]byte(session + "\x00" + to))
	return "umbra_rx_" + hex.EncodeToString(h[:20])
}

// Receiver opens the durable cursor of recipient to in session, creating it on first use at the session's
// first envelope.
func (s *Store) Receiver(ctx context.Context, session, to string) (*Receiver, error) {
	if !validName(session, maxSessionLen) {
		return nil, badSession(session)
	}
	if !validToken(to, maxToLen) {
		return nil, fmt.Errorf("%w: recipient: want 1-%d printable ASCII characters without spaces", ErrInvalid, maxToLen)
	}
	name := receiverName(session, to)
	cfg := jetstream.ConsumerConfig{
		Durable:     name,
		Description: "Umbra envelope cursor",
		// Both where envelopes are stored and where an earlier version stored them: a cursor created on the
		// session subject alone is widened in place and keeps its position.
		FilterSubjects: []string{s.sessionSubject(session), s.sessionWildcard(session)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        s.opts.AckWait,
		// One envelope in flight: JetStream cannot deliver N+1 before N is acknowledged, and a redelivered N
		// cannot be overtaken. Redelivery never gives up.
		MaxAckPending: 1,
		MaxDeliver:    -1,
		// A cursor nobody has read for a day is removed by the server, so closed sessions do not keep theirs
		// for ever; a recipient that comes back later starts again from the session's first envelope.
		InactiveThreshold: receiverIdle,
		Replicas:          s.opts.Replicas,
		Metadata:          map[string]string{"umbra_session": session, "umbra_to": to},
	}
	cons, err := s.stream.CreateOrUpdateConsumer(ctx, cfg)
	if errors.Is(err, jetstream.ErrConsumerMultipleFilterSubjectsNotSupported) {
		// The first answer about a cursor recovered from disk describes it as recovered (nats-server 2.15), so
		// the client misreads the widened filter as unsupported. The update was applied; asking again shows it.
		cons, err = s.stream.CreateOrUpdateConsumer(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("envstore: receiver for session %s: %w", session, err)
	}
	// With MaxAckPending 1 the server never has more than one envelope out, however many are asked for; asking
	// for a few keeps a pull request open at the server between envelopes. With a batch of 1 the client can miss
	// re-pulling when an envelope arrives while its own request is still being sent, and would then sit idle
	// until its missed-heartbeat check fires (one pull expiry, 30 s by default).
	// The server sends an idle heartbeat every pullHeartbeat: two missed (the pull request was parked at a
	// cursor leader that died, in a cluster) and the client asks again, reaching the cursor's next leader, where
	// by default it would wait 30 s. Missed heartbeats are not errors: the iterator simply pulls again.
	it, err := cons.Messages(jetstream.PullMaxMessages(pullBatch), jetstream.PullHeartbeat(pullHeartbeat),
		jetstream.WithMessagesErrOnMissingHeartbeat(false))
	if err != nil {
		return nil, fmt.Errorf("envstore: receiver for session %s: %w", session, err)
	}
	return &Receiver{session: session, to: to, name: name, stream: s.stream, it: it}, nil
}

// DeleteReceiver removes the durable cursor of recipient to in session, e.g. once the session is closed.
func (s *Store) DeleteReceiver(ctx context.Context, session, to string) error {
	err := s.stream.DeleteConsumer(ctx, receiverName(session, to))
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("envstore: delete receiver: %w", err)
	}
	return nil
}

// Next blocks until the next envelope for the recipient is available or ctx ends. Envelopes in the session for
// other recipients are acknowledged for this cursor and skipped. If the previous envelope was not acknowledged,
// it is handed back to JetStream first and so comes again. When ctx ends, nothing is lost and Next may be called
// again; any other error (connection closed, cursor deleted) leaves the Receiver unusable: close it and open
// another.
func (r *Receiver) Next(ctx context.Context) (Msg, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return Msg{}, errors.New("envstore: receiver closed")
	}
	if r.pending != nil {
		if err := r.pending.Nak(); err != nil {
			return Msg{}, fmt.Errorf("envstore: redeliver: %w", err)
		}
		r.pending = nil
	}
	for {
		jm, err := r.it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return Msg{}, fmt.Errorf("envstore: receive: %w", err)
		}
		md, err := jm.Metadata()
		if err != nil {
			return Msg{}, fmt.Errorf("envstore: receive: %w", err)
		}
		h := jm.Headers()
		if h.Get(hdrTo) != r.to {
			if err := jm.Ack(); err != nil {
				return Msg{}, fmt.Errorf("envstore: skip: %w", err)
			}
			continue
		}
		r.pending, r.pendSeq = jm, md.Sequence.Stream
		return Msg{
			Envelope:  envelope(r.session, h, jm.Data()),
			StreamSeq: md.Sequence.Stream,
			Delivered: md.NumDelivered,
		}, nil
	}
}

// Ack acknowledges m, the envelope last returned by Next, and returns once JetStream has recorded it: the cursor
// then resumes after m, whatever happens next. Acknowledging an envelope that was already acknowledged is a no-op.
func (r *Receiver) Ack(m Msg) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending == nil || m.StreamSeq != r.pendSeq {
		if m.StreamSeq != 0 && m.StreamSeq <= r.acked {
			return nil
		}
		return ErrNotPending
	}
	ctx, cancel := context.WithTimeout(context.Background(), ackTimeout)
	defer cancel()
	if err := r.pending.DoubleAck(ctx); err != nil {
		// Unknown whether it was recorded: keep it pending, so it is redelivered rather than lost.
		return fmt.Errorf("envstore: ack: %w", err)
	}
	r.pending, r.acked = nil, r.pendSeq
	return nil
}

// InProgress tells JetStream that m, the envelope last returned by Next, is still being worked on (its recipient
// has not confirmed it yet), which restarts its AckWait: call it more often than AckWait while waiting, so that
// JetStream redelivers it only if this Receiver is gone. An envelope no longer pending is not an error.
func (r *Receiver) InProgress(m Msg) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending == nil || m.StreamSeq != r.pendSeq {
		return nil
	}
	if err := r.pending.InProgress(); err != nil {
		return fmt.Errorf("envstore: in progress: %w", err)
	}
	return nil
}

// Close stops the Receiver. An envelope it yielded but that was not acknowledged, or that JetStream had
// already sent it, is handed back for immediate redelivery to the next Receiver on the cursor. The durable
// cursor itself stays (see Store.DeleteReceiver).
func (r *Receiver) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	var errs []error
	if r.pending != nil {
		errs = append(errs, r.pending.Nak())
		r.pending = nil
	}
	// Drain keeps what already arrived readable; hand it back too instead of letting it wait out AckWait.
	r.it.Drain()
	for {
		jm, err := r.it.Next(jetstream.NextMaxWait(time.Second))
		if err != nil {
			break
		}
		errs = append(errs, jm.Nak())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("envstore: close receiver: %w", err)
	}
	return nil
}

// All returns every envelope of the session, in stream order, as stored when the call began.
func (s *Store) All(ctx context.Context, session string) ([]Msg, error) {
	if !validName(session, maxSessionLen) {
		return nil, badSession(session)
	}
	subjects := []string{s.sessionSubject(session), s.sessionWildcard(session)}
	var last uint64
	for _, subj := range subjects {
		raw, err := s.stream.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("envstore: read session %s: %w", session, err)
		}
		last = max(last, raw.Sequence)
	}
	if last == 0 {
		return nil, nil
	}
	it, stop, err := s.ordered(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: subjects,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("envstore: read session %s: %w", session, err)
	}
	defer stop()

	var out []Msg
	for {
		jm, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("envstore: read session %s: %w", session, err)
		}
		md, err := jm.Metadata()
		if err != nil {
			return nil, fmt.Errorf("envstore: read session %s: %w", session, err)
		}
		out = append(out, Msg{
			Envelope:  envelope(session, jm.Headers(), jm.Data()),
			StreamSeq: md.Sequence.Stream,
			Delivered: md.NumDelivered,
		})
		if md.Sequence.Stream >= last || md.NumPending == 0 {
			return out, nil
		}
	}
}

// Get returns the envelope stored at a stream sequence (as reported by Append), e.g. to answer a retry with
// the original envelope's position.
func (s *Store) Get(ctx context.Context, streamSeq uint64) (Msg, error) {
	raw, err := s.stream.GetMsg(ctx, streamSeq)
	if err != nil {
		return Msg{}, fmt.Errorf("envstore: get %d: %w", streamSeq, err)
	}
	session, ok := s.sessionOf(raw.Subject)
	if !ok {
		return Msg{}, fmt.Errorf("envstore: get %d: not an envelope", streamSeq)
	}
	return Msg{Envelope: envelope(session, raw.Header, raw.Data), StreamSeq: raw.Sequence}, nil
}
