package envstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/jsbatch"
)

// Group commit: appends to different sessions that are ready at the same moment are published together, as one
// JetStream atomic batch. With the server fsyncing every write, the batch costs one fsync, shared by every
// envelope in it, where separate publishes pay one each. Each envelope keeps its own compare-and-set on its
// session (a batch never holds two envelopes of one session: a process's appends to a session are serialised),
// and JetStream stores the whole batch or none of it. A batch refused as a whole (one envelope's session moved,
// the stream is full) is published again envelope by envelope, so that each append learns its own answer; a
// batch whose answer is lost (a timeout) is reported to each of its appends as an error, exactly like a single
// publish whose answer is lost: the append does not know whether it was stored and re-reads the session.
//
// There is no goroutine of its own: the first append to find nothing being committed commits what is queued,
// until its own is answered, then hands on to the first append still queued, if any, and returns. Envelopes queue while
// a batch is on its way to the disk, so the batches grow with the load.

const (
	// maxCommitBatch and maxCommitBytes bound one batch; a larger envelope is published alone. Fewer than
	// minCommitBatch envelopes ready at once are published each on its own (pipelined): JetStream stages an atomic
	// batch of a one-replica stream in a file store of its own, which costs more than a few fsyncs.
	minCommitBatch = 8
	maxCommitBatch = 64
	maxCommitBytes = 1 << 20
	// commitTimeout bounds one publish (alone or a batch), whoever's context is waiting on it.
	commitTimeout = 10 * time.Second
	// republishAfter is how long a single publish waits for its answer before it is published again, and
	// republishPause how long it waits after an answer that no stream took it yet (publishEach).
	republishAfter = 2 * time.Second
	republishPause = 100 * time.Millisecond
	// errCodeDuplicateInProcess is JetStream's answer to a message id whose original is not stored yet
	// (JSStreamDuplicateMessageConflict).
	errCodeDuplicateInProcess jetstream.ErrorCode = 10158
)

// pendingPublish is one append waiting to be published.
type pendingPublish struct {
	msg   *nats.Msg
	msgID string        // JetStream de-duplication id, used when the envelope is published alone
	done  chan pubDone  // its result, exactly once
	lead  chan struct{} // closed when this append is to commit what is queued
}

type pubDone struct {
	seq uint64
	dup bool // JetStream answered it as a duplicate of its message id
	// republished: the answer is to a copy published again (publishEach), so a duplicate may be this very
	// publish's own original, stored while its answer was lost.
	republished bool
	err         error
}

// committer queues publishes and commits them in batches.
type committer struct {
	js     jetstream.JetStream
	stream string
	// atomic enables atomic batches; off for a single-replica stream, where JetStream stages each batch in a file
	// store created for it (far slower than the fsyncs it saves: audit.BenchmarkAppendBatch), so that publishes
	// are only pipelined.
	atomic bool
	// replicated publishes again what a stream leader did not answer (publishEach). A single server loses no
	// answer while it runs, answers that no stream took a message only when the stream is gone, which waiting
	// does not mend, and under load may answer later than republishAfter.
	replicated bool

	mu         sync.Mutex
	queue      []*pendingPublish
	committing bool

	// batches and batched count the atomic batches stored and the envelopes in them, refused the batches
	// JetStream refused as a whole (for tests).
	batches, batched, refused uint64
	// republished counts the publishes published again (publishEach), for tests.
	republished atomic.Uint64
}

// publish stores msg with the headers already set for its compare-and-set, and returns its stream sequence.
func (c *committer) publish(ctx context.Context, msg *nats.Msg, msgID string) (pubDone, error) {
	p := &pendingPublish{msg: msg, msgID: msgID, done: make(chan pubDone, 1), lead: make(chan struct{})}
	c.mu.Lock()
	c.queue = append(c.queue, p)
	leading := !c.committing
	if leading {
		c.committing = true
	}
	c.mu.Unlock()
	if !leading {
		// Wait for the result even if ctx ends: the envelope may be stored, and the caller must learn which.
		select {
		case r := <-p.done:
			return r, r.err
		case <-p.lead:
		}
	}
	// Commit batches from the head of the queue until this publish is answered (it may be behind a full batch),
	// then hand on.
	for {
		c.commitHead(ctx)
		select {
		case r := <-p.done:
			c.handOn()
			return r, r.err
		default:
		}
	}
}

// commitHead publishes the head of the queue as one batch.
func (c *committer) commitHead(ctx context.Context) {
	c.mu.Lock()
	// At most one envelope of a session per batch: JetStream checks each envelope's compare-and-set against the
	// stream as it was before the batch, so a second one of the same session would pass the same check.
	var batch, rest []*pendingPublish
	sessions := map[string]bool{}
	size := 0
	for i, p := range c.queue {
		if len(batch) == maxCommitBatch || len(batch) > 0 && size+len(p.msg.Data) > maxCommitBytes {
			rest = append(rest, c.queue[i:]...)
			break
		}
		key := p.msg.Header.Get(jetstream.ExpectedLastSubjSeqSubjHeader)
		if sessions[key] {
			rest = append(rest, p)
			continue
		}
		sessions[key] = true
		batch = append(batch, p)
		size += len(p.msg.Data)
	}
	c.queue = rest
	c.mu.Unlock()

	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	c.publishBatch(pctx, batch)
	cancel()
}

// handOn makes the first queued publish the committer, or stops committing when none is queued.
func (c *committer) handOn() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		c.committing = false
		return
	}
	close(c.queue[0].lead)
}

// publishBatch publishes batch and answers each of its publishes.
func (c *committer) publishBatch(ctx context.Context, batch []*pendingPublish) {
	if !c.atomic || len(batch) < minCommitBatch {
		c.publishEach(ctx, batch)
		return
	}
	last, err := c.publishAtomic(ctx, batch)
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
		c.batches++
		c.batched += uint64(len(batch))
		first := last - uint64(len(batch)) + 1
		for i, p := range batch {
			p.done <- pubDone{seq: first + uint64(i)}
		}
	case errors.As(err, &apiErr):
		// Refused as a whole, so none of it is stored: each learns its own answer alone.
		c.refused++
		for _, p := range batch {
			jsbatch.Strip(p.msg)
		}
		c.publishEach(ctx, batch)
	default:
		for _, p := range batch {
			p.done <- pubDone{err: fmt.Errorf("batch of %d envelopes: %w", len(batch), err)}
		}
	}
}

// publishEach publishes each of batch on its own, all at once, and answers each. A publish not answered within
// republishAfter, or answered that no stream took it, is published again, with the same message id and
// compare-and-set, until ctx ends. In a cluster that is what a lost stream leader looks like: the message went to a
// server that died, or no leader was elected yet to take it; the retry reaches the next leader as soon as there is
// one, where waiting out the whole commitTimeout would stall the session past the election. A retry never stores
// an envelope twice: JetStream answers a message id it holds as a duplicate with the original's sequence before it
// checks the compare-and-set, answers one whose original is still being replicated with a conflict (retried here
// in turn), and past its de-duplication window the compare-and-set refuses the copy, since the original moved the
// session (Append then finds the original).
func (c *committer) publishEach(ctx context.Context, batch []*pendingPublish) {
	for again := false; len(batch) > 0; again = true {
		batch = c.publishAttempt(ctx, batch, again)
		if len(batch) > 0 {
			c.republished.Add(uint64(len(batch)))
			t := time.NewTimer(republishPause)
			select {
			case <-ctx.Done():
				t.Stop()
				for _, p := range batch {
					p.done <- pubDone{err: fmt.Errorf("no acknowledgement: %w", ctx.Err()), republished: true}
				}
				return
			case <-t.C:
			}
		}
	}
}

// publishAttempt publishes batch once, answers each publish that has its answer, and returns those to publish
// again.
func (c *committer) publishAttempt(ctx context.Context, batch []*pendingPublish, republished bool) (again []*pendingPublish) {
	futures := make([]jetstream.PubAckFuture, len(batch))
	for i, p := range batch {
		f, err := c.js.PublishMsgAsync(p.msg, jetstream.WithMsgID(p.msgID))
		if err != nil {
			p.done <- pubDone{err: err, republished: republished}
			continue
		}
		futures[i] = f
	}
	actx, cancel := context.WithTimeout(ctx, republishAfter)
	defer cancel()
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case ack := <-f.Ok():
			batch[i].done <- pubDone{seq: ack.Sequence, dup: ack.Duplicate, republished: republished}
		case err := <-f.Err():
			if ctx.Err() == nil && c.replicated && republishable(err) {
				again = append(again, batch[i])
				continue
			}
			batch[i].done <- pubDone{err: err, republished: republished}
		case <-actx.Done():
			if ctx.Err() == nil && c.replicated {
				again = append(again, batch[i])
				continue
			}
			batch[i].done <- pubDone{err: fmt.Errorf("no acknowledgement: %w", ctx.Err())}
		}
	}
	return again
}

// republishable reports an answer that no stream stored the message yet: none took it (no leader), or the leader
// is still replicating its original.
func republishable(err error) bool {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeDuplicateInProcess
}

// publishAtomic sends batch as one atomic batch and returns the stream sequence of its last message. An error
// that is a *jetstream.APIError is JetStream's refusal of the whole batch: nothing of it is stored.
func (c *committer) publishAtomic(ctx context.Context, batch []*pendingPublish) (uint64, error) {
	msgs := make([]*nats.Msg, len(batch))
	for i, p := range batch {
		msgs[i] = p.msg
	}
	return jsbatch.Publish(ctx, c.js.Conn(), c.stream, msgs)
}
