// Package jsfollow reads a JetStream stream in order, from a given point and then as messages are stored, through
// a consumer the reader creates and owns, and gives up at once when that consumer is lost.
//
// The client's ordered consumers do the same but mend a lost consumer themselves: they notice it by missed
// heartbeats and create another, waiting a fixed 10 s for each creation. In a cluster only the meta leader answers
// a creation, and a consumer's stream answers only once it has a leader, so after a server's death a creation sent
// during the elections (4-9 s) waits out those 10 s, sometimes twice: a controller's follower of the audit trail
// stood still for 22 s after a member's death, and with it every acknowledgement of the cluster. A Reader instead
// returns an error as soon as its consumer is lost or cannot be created within a second or two, and its owner
// opens another from where it was, as often as it likes.
package jsfollow

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

const (
	// checkTimeout bounds the question whether JetStream's API answers at all (the meta leader's, in a cluster).
	checkTimeout = time.Second
	// createTimeout bounds a consumer's creation.
	createTimeout = 2 * time.Second
	// deleteTimeout bounds the removal of a consumer by Stop.
	deleteTimeout = 2 * time.Second
	// inactiveThreshold removes from the server a consumer whose reader died without removing it.
	inactiveThreshold = 15 * time.Second
	// renewPulls bounds how often in a row Next sends its pull again to a consumer that answers but sent no
	// heartbeat.
	renewPulls = 2
)

// Config says where a Reader starts and what it reads.
type Config struct {
	// StartSeq is the first stream sequence to read; with StartTime the first message stored at or after it;
	// with neither, the stream's first message.
	StartSeq  uint64
	StartTime *time.Time
	// FilterSubjects, if set, limits the reading to these subjects.
	FilterSubjects []string
	// Heartbeat is the idle heartbeat asked of the server; two missed end the reading. Default 1 s.
	Heartbeat time.Duration
}

// Reader reads one stream in order. It is not safe for concurrent use.
type Reader struct {
	stream  jetstream.Stream
	cons    jetstream.Consumer
	it      jetstream.MessagesContext
	name    string
	opts    []jetstream.PullMessagesOpt
	nextSeq uint64 // the consumer sequence of the next message: one more than the last read
}

// Open checks that js answers, creates a consumer of stream as cfg says, and starts reading it.
func Open(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, cfg Config) (*Reader, error) {
	if err := Check(ctx, js); err != nil {
		return nil, err
	}
	hb := cfg.Heartbeat
	if hb <= 0 {
		hb = time.Second
	}
	cc := jetstream.ConsumerConfig{Name: "f" + rand.Text(), AckPolicy: jetstream.AckNonePolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		InactiveThreshold: inactiveThreshold, MemoryStorage: true, Replicas: 1, FilterSubjects: cfg.FilterSubjects}
	switch {
	case cfg.StartSeq > 0:
		cc.DeliverPolicy, cc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, cfg.StartSeq
	case cfg.StartTime != nil:
		cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, cfg.StartTime
	}
	cctx, cancel := context.WithTimeout(ctx, createTimeout)
	cons, err := stream.CreateOrUpdateConsumer(cctx, cc)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("create a consumer: %w", err)
	}
	r := &Reader{stream: stream, cons: cons, name: cc.Name, nextSeq: 1,
		opts: []jetstream.PullMessagesOpt{jetstream.PullHeartbeat(hb), jetstream.WithMessagesErrOnMissingHeartbeat(true)}}
	if r.it, err = cons.Messages(r.opts...); err != nil {
		r.remove(ctx)
		return nil, fmt.Errorf("read the consumer: %w", err)
	}
	return r, nil
}

// ErrGap is a message delivered out of order: one before it was lost on its way.
var ErrGap = errors.New("jsfollow: a message was skipped")

// Next returns the next message, waiting for one until ctx ends. An error ends the reading (a lost consumer
// reports jetstream.ErrNoHeartbeat; a skipped message ErrGap): Stop the Reader and open another from after the
// last message read.
//
// Missed heartbeats do not always mean a lost consumer: a pull request sent before the consumer's interest has
// reached the reader's server is dropped, and the consumer, alive, never hears of it (seen in a cluster just after
// a member's death, the consumer on a live server). So on missed heartbeats Next asks for the consumer's info,
// which only the server holding it gives (for one on a dead server the answer is an error, or none within a
// second); if it is given, the pull is sent again, at most renewPulls times in a row.
func (r *Reader) Next(ctx context.Context) (jetstream.Msg, error) {
	msg, err := r.it.Next(jetstream.NextContext(ctx))
	for renewed := 0; errors.Is(err, jetstream.ErrNoHeartbeat) && renewed < renewPulls; renewed++ {
		ictx, cancel := context.WithTimeout(ctx, checkTimeout)
		_, ierr := r.cons.Info(ictx)
		cancel()
		if ierr != nil {
			break // lost, or on a server that is gone: the heartbeats' error stands
		}
		it, merr := r.cons.Messages(r.opts...)
		if merr != nil {
			return nil, fmt.Errorf("read the consumer again: %w", merr) // r.it stays, for Stop
		}
		r.it.Stop()
		r.it = it
		msg, err = r.it.Next(jetstream.NextContext(ctx))
	}
	if err != nil {
		return nil, err
	}
	md, err := msg.Metadata()
	if err != nil {
		return nil, err
	}
	if md.Sequence.Consumer != r.nextSeq {
		return nil, fmt.Errorf("%w: delivery %d, want %d", ErrGap, md.Sequence.Consumer, r.nextSeq)
	}
	r.nextSeq++
	return msg, nil
}

// Stop ends the reading and removes the consumer from the server (best effort: one left behind is removed once
// inactive).
func (r *Reader) Stop(ctx context.Context) {
	r.it.Stop()
	r.remove(ctx)
}

func (r *Reader) remove(ctx context.Context) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
	defer cancel()
	_ = r.stream.DeleteConsumer(dctx, r.name)
}

// Check returns nil if js's API answers within a second (the meta leader's, in a cluster), and an error saying it
// does not otherwise: nobody answers while a cluster elects its meta leader.
func Check(ctx context.Context, js jetstream.JetStream) error {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("JetStream API not answering (a cluster electing its meta leader?): %w", err)
	}
	return nil
}
