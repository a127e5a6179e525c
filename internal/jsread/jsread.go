// Package jsread reads replicated JetStream streams through a change of leader. A read of a replicated stream
// (a message by sequence, the last message of a subject, the stream's state) is answered by the stream's leader.
// While its replicas elect a new one (4-9 s after the old one's death) nobody answers, and a read waited out its
// caller's whole deadline: the relay's id look-up and then its count of the session, 5 s each, stalled a session
// 10 s after a controller's death although the stream had a leader again after 5; an audit append that reloaded
// the trail's last record waited as long as its caller allowed. Replicated gives each read attempt readAttempt
// and asks again while there is no answer, so a read returns within about readAttempt of the new leader's
// election (or when its caller's context ends).
package jsread

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// readAttempt bounds one attempt of a read of a replicated stream; readPause is the pause after an attempt
// answered at once that no stream took it.
const (
	readAttempt = time.Second
	readPause   = 100 * time.Millisecond
	// errCodeTemporarilyUnavailable is JetStream's answer while its cluster has no leader to ask
	// (JSClusterNotAvailErr: "JetStream system temporarily unavailable").
	errCodeTemporarilyUnavailable jetstream.ErrorCode = 10008
)

// Replicated is stream, whose reads are asked again while a new leader is elected if it has more than one
// replica. A single server answers every read while it runs: there a read keeps its caller's whole deadline.
func Replicated(stream jetstream.Stream, replicas int) jetstream.Stream {
	if replicas > 1 {
		return electionReads{Stream: stream}
	}
	return stream
}

// electionReads is a replicated stream whose reads are asked again while unanswered.
type electionReads struct {
	jetstream.Stream
}

func (r electionReads) GetMsg(ctx context.Context, seq uint64, opts ...jetstream.GetMsgOpt) (*jetstream.RawStreamMsg, error) {
	return readAgain(ctx, func(ctx context.Context) (*jetstream.RawStreamMsg, error) { return r.Stream.GetMsg(ctx, seq, opts...) })
}

func (r electionReads) GetLastMsgForSubject(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error) {
	return readAgain(ctx, func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
		return r.Stream.GetLastMsgForSubject(ctx, subject)
	})
}

func (r electionReads) Info(ctx context.Context, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error) {
	return readAgain(ctx, func(ctx context.Context) (*jetstream.StreamInfo, error) { return r.Stream.Info(ctx, opts...) })
}

// readAgain calls read, each attempt within readAttempt, until it is answered or ctx ends.
func readAgain[T any](ctx context.Context, read func(context.Context) (T, error)) (T, error) {
	for {
		began := time.Now()
		actx, cancel := context.WithTimeout(ctx, readAttempt)
		v, err := read(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !unanswered(err) {
			return v, err
		}
		if pause := readPause - time.Since(began); pause > 0 {
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return v, err
			case <-t.C:
			}
		}
	}
}

// unanswered says whether a read got no answer, or an answer that nobody could give one yet: nothing was read,
// and asking again is all there is to do.
func unanswered(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.Code == 503 || apiErr.ErrorCode == errCodeTemporarilyUnavailable)
}
