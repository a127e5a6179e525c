package audit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/jsbatch"
)

// MaxBatch is the most records AppendBatch takes at once.
const MaxBatch = 256

// Headers of JetStream's atomic batch publish: every message of a batch names it and its place in it, and the
// last one commits it. The server stores all of the batch's messages, in order and contiguous, or none.
const (
	hdrBatchID     = "Nats-Batch-Id"
	hdrBatchSeq    = "Nats-Batch-Sequence"
	hdrBatchCommit = "Nats-Batch-Commit"
)

// AppendBatch appends rs, in order, as one atomic write: the records are linked one to the next after the last
// record of the stream and stored together, or none is. With the server fsyncing every write this is one group
// commit: concurrent work that would have paid one fsync per record pays one per batch. It returns the stored
// records. Like Append, it retries when another writer got in first; an error after the batch was sent leaves
// it unknown whether it was stored, and the chain intact either way.
func (l *Log) AppendBatch(ctx context.Context, rs []Record) ([]Record, error) {
	out, err := prepare(rs)
	if err != nil || len(out) == 0 {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.retrying(ctx, "batch", func() ([]Record, error) { return l.batchOnce(ctx, out) })
}

// batchOnce is one attempt of AppendBatch: out (prepared) linked after the tail and published as one atomic
// batch expecting the tail as the stream's last record. The caller holds l.mu.
func (l *Log) batchOnce(ctx context.Context, out []Record) ([]Record, error) {
	msgs, err := l.link(out)
	if err != nil {
		return nil, err
	}
	last, err := l.publishBatch(ctx, msgs, l.lastSeq)
	if err != nil {
		return nil, err
	}
	first := last - uint64(len(out)) + 1
	for i := range out {
		out[i].Seq = first + uint64(i)
		l.advanceTail(ctx, out[i], msgs[i])
	}
	return out, nil
}

// AppendRecords appends rs in order, each linked to the one before, in the cheapest durable way the stream
// allows: on a replicated stream as one atomic batch (AppendBatch: JetStream stages it in memory and stores it
// with one sync); on a single-replica stream pipelined (appendPipelined), because there JetStream stages an
// atomic batch in a file store created for it, which costs far more than an fsync per record
// (BenchmarkAppendBatch: about 22 ms a batch of 1 to 64 records against 0.2 to 0.5 ms a record). Pipelined, a
// failure part-way leaves the records before it stored; the records returned are those stored, with the error.
func (l *Log) AppendRecords(ctx context.Context, rs []Record) ([]Record, error) {
	if l.replicas > 1 {
		return l.AppendBatch(ctx, rs)
	}
	return l.appendPipelined(ctx, rs)
}

// appendPipelined sends the records linked one to the next without waiting for one acknowledgement before
// sending the next: the batch costs one round trip to the server instead of one per record, and the server
// still stores (and fsyncs) each record before acknowledging it.
//
// Only a prefix of the records can be stored, whatever happens to the others: the first expects the stream's
// last sequence to be the record it links to, and each later one expects the stream's last message to be the
// record before it in the batch (its de-duplication ID, the record's hash, as Nats-Expected-Last-Msg-Id). A
// record that is refused (another writer got in first, the stream is full) therefore fails every record after
// it, and no record is ever stored after a gap in its own chain.
func (l *Log) appendPipelined(ctx context.Context, rs []Record) ([]Record, error) {
	out, err := prepare(rs)
	if err != nil || len(out) == 0 {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.retrying(ctx, "pipelined append", func() ([]Record, error) { return l.pipelineOnce(ctx, out) })
}

// pipelineOnce is one attempt of appendPipelined. The caller holds l.mu.
func (l *Log) pipelineOnce(ctx context.Context, out []Record) ([]Record, error) {
	msgs, err := l.link(out)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, pipelineAckWait)
	defer cancel()
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for i, m := range msgs {
		opts := []jetstream.PublishOpt{jetstream.WithExpectStream(l.name), jetstream.WithMsgID(pipelineID(out[i]))}
		if i == 0 {
			opts = append(opts, jetstream.WithExpectLastSequence(l.lastSeq))
		} else {
			opts = append(opts, jetstream.WithExpectLastMsgID(pipelineID(out[i-1])))
		}
		f, err := l.js.PublishMsgAsync(m, opts...)
		if err != nil {
			break // the records sent so far are awaited; the rest are not stored
		}
		futures = append(futures, f)
	}
	done := 0
	var failed error
await:
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			out[i].Seq = ack.Sequence
			l.advanceTail(ctx, out[i], msgs[i])
			done++
		case err := <-f.Err():
			failed = err
			break await
		case <-actx.Done():
			failed = fmt.Errorf("no acknowledgement: %w", actx.Err())
			break await
		}
	}
	switch {
	case failed == nil && done == len(out):
		return out, nil
	case failed == nil:
		failed = fmt.Errorf("sent %d of %d records", len(futures), len(out))
	}
	if done > 0 {
		// Part of the batch is stored: report it; the caller appends the rest again if it wants to.
		return out[:done], &partialError{err: failed}
	}
	return nil, failed
}

// AppendAfter appends records that depend on what the trail holds: next is called under the append lock with the
// sequence of the stream's last record, and returns the records to link after it (none: nothing is appended).
// They are stored only if no other record was stored after that one meanwhile; when another writer (in another
// process) got in first, the tail is read again and next is called again with the new last sequence, so that it
// can look at what was stored in between and say what still needs writing. A writer that derives records from
// the trail this way never writes one that another writer's record already stands for, whatever the number of
// writers.
//
// The records are written as AppendRecords writes them: one atomic batch on a replicated stream, pipelined on a
// single-replica one. A pipelined write that stored only a prefix (a record refused part-way) returns that
// prefix without an error: call again for the rest, which next then decides afresh. As with Append, an error
// after publishing leaves it unknown whether the records (or some of them) were stored.
func (l *Log) AppendAfter(ctx context.Context, next func(ctx context.Context, lastSeq uint64) ([]Record, error)) ([]Record, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	stored, err := l.retrying(ctx, "conditional append", func() ([]Record, error) {
		rs, err := next(ctx, l.lastSeq)
		if err != nil || len(rs) == 0 {
			return nil, err
		}
		out, err := prepare(rs)
		if err != nil {
			return nil, err
		}
		if l.replicas > 1 {
			return l.batchOnce(ctx, out)
		}
		return l.pipelineOnce(ctx, out)
	})
	var partial *partialError
	if errors.As(err, &partial) && len(stored) > 0 {
		return stored, nil // the tail is unknown: the next call reads it again
	}
	return stored, err
}

// pipelineAckWait bounds how long appendPipelined waits for the server's acknowledgements of one write.
const pipelineAckWait = 10 * time.Second

// pipelineID is the de-duplication ID a pipelined record is sent with, which the next record of the write names
// as the stream's expected last message: the first 96 bits of its hash, which links it to the whole chain before
// it. The stream keeps such IDs for DedupWindow only.
func pipelineID(r Record) string { return r.Hash[:24] }

// partialError is an append that stored some of its records, which retrying must not repeat.
type partialError struct{ err error }

func (e *partialError) Error() string { return e.err.Error() }
func (e *partialError) Unwrap() error { return e.err }

// prepare validates rs for an append of several records and returns copies ready to be linked.
func prepare(rs []Record) ([]Record, error) {
	if len(rs) > MaxBatch {
		return nil, fmt.Errorf("audit: batch of %d records, at most %d", len(rs), MaxBatch)
	}
	out := make([]Record, len(rs))
	now := time.Now()
	for i, r := range rs {
		r.Seq, r.Prev, r.Hash = 0, "", ""
		if err := normalize(&r, now); err != nil {
			return nil, err
		}
		if err := validate(r); err != nil {
			return nil, fmt.Errorf("audit: invalid record %d of the batch: %w", i, err)
		}
		out[i] = r
	}
	return out, nil
}

// link chains out after the last record of the stream, filling in Prev and Hash, and returns their messages.
// The caller holds l.mu.
func (l *Log) link(out []Record) ([]*nats.Msg, error) {
	msgs := make([]*nats.Msg, len(out))
	prev := l.lastHash
	for i := range out {
		out[i].Prev = prev
		b, err := canonical(out[i])
		if err != nil {
			return nil, err
		}
		if len(b) > MaxRecordSize {
			return nil, fmt.Errorf("audit: invalid record %d of the batch: %d bytes encoded, limit %d", i, len(b), MaxRecordSize)
		}
		sum := sha256.Sum256(b)
		out[i].Hash = hex.EncodeToString(sum[:])
		payload, err := stored(out[i])
		if err != nil {
			return nil, err
		}
		msgs[i] = &nats.Msg{Subject: l.subjectFor(out[i]), Data: payload, Header: nats.Header{}}
		prev = out[i].Hash
	}
	return msgs, nil
}

// advanceTail makes r, just stored as m, the record the next append links to. The caller holds l.mu.
func (l *Log) advanceTail(ctx context.Context, r Record, m *nats.Msg) {
	l.lastSeq, l.lastHash, l.lastKind = r.Seq, r.Hash, r.Kind
	l.notifyStored(ctx, r, m.Subject, m.Data)
}

// retrying runs try, a write of several records, until it stores them: after another writer got in first
// (nothing of the write is stored) it reloads the tail and tries again, as Append does. Any other failure makes
// the tail unknown, since the write may be stored even so. The caller holds l.mu.
func (l *Log) retrying(ctx context.Context, what string, try func() ([]Record, error)) ([]Record, error) {
	if !l.tailKnown {
		if err := l.loadTail(ctx); err != nil {
			return nil, err
		}
	}
	for attempt := 1; ; attempt++ {
		out, err := try()
		var partial *partialError
		switch {
		case err == nil:
			return out, nil
		case errors.As(err, &partial) || !isWrongLastSeq(err):
			l.tailKnown = false
			return out, fmt.Errorf("audit: %s: %w", what, full(err))
		}
		l.conflicts++
		if attempt == maxAppendAttempts {
			l.tailKnown = false
			return nil, fmt.Errorf("audit: %s lost %d races with other writers: %w", what, attempt, err)
		}
		if err := sleep(ctx, time.Duration(rand.Int64N(int64(attempt)*int64(100*time.Microsecond)))); err != nil {
			l.tailKnown = false
			return nil, fmt.Errorf("audit: %s: %w", what, err)
		}
		if err := l.loadTail(ctx); err != nil {
			return nil, err
		}
	}
}

// publishBatch sends msgs as one atomic batch whose first message expects the stream's last sequence to be
// lastSeq, and returns the stream sequence of the batch's last message.
func (l *Log) publishBatch(ctx context.Context, msgs []*nats.Msg, lastSeq uint64) (uint64, error) {
	msgs[0].Header.Set(jetstream.ExpectedLastSeqHeader, strconv.FormatUint(lastSeq, 10))
	return jsbatch.Publish(ctx, l.js.Conn(), l.name, msgs)
}
