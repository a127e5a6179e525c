package controller

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/controller/relay"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/workgroups"
)

// The envelope stream is the record of accepted envelopes; the audit trail's "envelope.accepted" records are
// derived from it, in stream order, by one envelopeRecorder. The relay acknowledges an envelope, and delivers
// it, only once its audit record is durable (wait). A crash at any instant therefore leaves either neither (the
// append did not happen: the sender was not acknowledged and retries) or both (the append happened: the
// recorder writes the audit record when the controller is back, before anything is acknowledged or delivered).
//
// Which envelopes have their record is a prefix of the stream: the recorder moves to envelope N+1 only once the
// record of N is stored. After a restart it finds where it stopped from the audit trail itself (each derived
// record names its envelope's stream sequence), starting from a hint it saves now and then so that the scan
// stays short; the hint may lag, never lead, so nothing is recorded twice.
//
// Several controllers on one NATS cluster share the envelope stream and the trail (shared). Then the recorder of
// the controller holding the lease (leadership.go) writes the records, and every recorder, writing or not,
// follows the trail and learns from the envelope.accepted records, whoever wrote them, which envelopes are
// recorded: that is what its wait answers from, so the relay of every controller acknowledges and delivers once
// the record is stored, without asking anyone per envelope. The writer appends with audit.Log.AppendAfter: each
// write is conditional on the trail's last record being one the recorder has read, so a record it writes stands
// for an envelope that no record read so far stands for, and none was stored since. Two recorders writing at
// once (a lease holder paused past its term, and its successor) therefore never record an envelope twice: the
// one that loses the race reads the other's records and writes only what is still missing.

const (
	hintKey = "envelopes"
	// hintEvery and hintAfter say how often the recorder saves its hint: after this many records, or this long.
	hintEvery = 256
	hintAfter = 5 * time.Second
)

// recorderHint is where the recorder had got to: every envelope up to Envelope has its record, among the
// audit records up to Audit.
type recorderHint struct {
	Envelope uint64 `json:"envelope"`
	Audit    uint64 `json:"audit"`
}

// envelopeRecorder derives envelope.accepted audit records from the envelope stream.
type envelopeRecorder struct {
	env    *envstore.Store
	trail  *audit.Log
	hints  table[recorderHint]
	stream jetstream.Stream // the envelope stream, for its last sequence on a first start
	log    *slog.Logger
	actor  string // who a record of an undecodable envelope names

	// shared: other controllers' recorders may write to the same trail; this one writes only while lead leads
	// (a nil lead always leads) and learns what is recorded by following the trail.
	shared bool
	lead   *leadership

	mu       sync.Mutex
	done     uint64        // every envelope up to this stream sequence has its audit record
	auditSeq uint64        // audit sequence of the last derived record seen
	advanced chan struct{} // closed when done moves
	seen     uint64        // shared: every audit record up to this sequence is read, or written by this recorder
	seenMore chan struct{} // closed when seen moves
	hinted   recorderHint
	hintedAt time.Time

	// crashAt, if set (tests only), is asked at each step of recording an envelope; an error stops the recorder
	// there, as a crash would.
	crashAt func(step string, envSeq uint64) error
}

// The steps of recording one envelope, as crashAt names them.
const (
	stepRead     = "read"     // the envelope is stored and read back; its record is not written
	stepRecorded = "recorded" // the record is stored; the position has not moved
	stepAdvanced = "advanced" // the position has moved; the hint may not have
)

func (r *envelopeRecorder) crash(step string, envSeq uint64) error {
	if r.crashAt == nil {
		return nil
	}
	return r.crashAt(step, envSeq)
}

func newEnvelopeRecorder(env *envstore.Store, trail *audit.Log, hints table[recorderHint], stream jetstream.Stream) *envelopeRecorder {
	return &envelopeRecorder{env: env, trail: trail, hints: hints, stream: stream, log: slog.New(slog.DiscardHandler),
		advanced: make(chan struct{}), seenMore: make(chan struct{})}
}

// recorderRetryMax is the longest pause between two attempts of the recorder after failures.
const recorderRetryMax = time.Second

// run records envelopes until ctx ends, starting over from the audit trail after any failure.
func (r *envelopeRecorder) run(ctx context.Context) {
	failed := 0
	for ctx.Err() == nil {
		follow := r.follow
		if r.shared {
			follow = r.followShared
		}
		began := time.Now()
		err := follow(ctx)
		if ctx.Err() != nil {
			return
		}
		// Every acknowledgement waits for the recorder: while a stream or bucket elects a leader (4-9 s after a
		// server's death) it tries again at least once a second, and a failure after a long run starts afresh.
		if time.Since(began) > recorderRetryMax*10 {
			failed = 0
		}
		failed++
		// A lost consumer (its server died, or the cluster was still forming) is followed again at once: worth a
		// warning, not an error, unless it keeps failing.
		level := slog.LevelError
		if failed == 1 && errors.Is(err, jetstream.ErrNoHeartbeat) {
			level = slog.LevelWarn
		}
		r.log.Log(ctx, level, "recording envelopes in the audit trail failed; acknowledgements wait until it works again", "err", err)
		t := time.NewTimer(min(time.Duration(failed)*200*time.Millisecond, recorderRetryMax))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// follow finds where recording stopped and records every envelope after it, as they come. Records are written
// in batches (one atomic, fsynced write each): whatever envelopes arrived while the last batch was being written
// make the next one, so the cost of an fsync is shared by all the envelopes that waited for it.
func (r *envelopeRecorder) follow(ctx context.Context) error {
	if err := r.recover(ctx); err != nil {
		return err
	}
	return r.record(ctx)
}

// followShared is follow for a recorder that shares the trail: it follows the trail from where recover read it
// to, and records envelopes whenever this controller leads.
func (r *envelopeRecorder) followShared(ctx context.Context) error {
	if err := r.recover(ctx); err != nil {
		return err
	}
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	followed := make(chan error, 1)
	go func() {
		err := r.trail.Follow(tctx, r.seenThrough(), time.Time{}, func(rec audit.Record) error {
			if rec.Kind == kindEnvelopeAccepted {
				if seq, ok := streamSeqOf(rec); ok {
					r.advance(seq, rec.Seq)
				}
			}
			r.see(rec.Seq)
			return nil
		})
		cancel() // the writer needs the follower (caughtUp)
		followed <- err
	}()
	stop := func(err error) error {
		cancel()
		if ferr := <-followed; ctx.Err() == nil && !errors.Is(ferr, context.Canceled) {
			err = fmt.Errorf("follow the audit trail: %w", ferr)
		}
		return err
	}
	for {
		lctx, lcancel, err := r.lead.whileLeading(tctx)
		if err != nil {
			return stop(err)
		}
		err = r.record(lctx)
		lost := lctx.Err() != nil && tctx.Err() == nil // leadership lost: follow on, and wait for it again
		lcancel()
		if !lost {
			return stop(err)
		}
	}
}

// record records every envelope after the position, as they come.
func (r *envelopeRecorder) record(ctx context.Context) error {
	fctx, cancel := context.WithCancel(ctx)
	queue := make(chan envstore.Msg, audit.MaxBatch)
	followed := make(chan error, 1)
	go func() {
		followed <- r.env.Follow(fctx, r.position(), func(m envstore.Msg) error {
			select {
			case queue <- m:
				return nil
			case <-fctx.Done():
				return fctx.Err()
			}
		})
	}()
	stop := func(err error) error {
		cancel()
		if ferr := <-followed; err == nil {
			err = ferr
		}
		return err
	}
	for {
		var batch []envstore.Msg
		select {
		case m := <-queue:
			batch = append(batch, m)
		case err := <-followed:
			cancel()
			return fmt.Errorf("follow the envelope stream: %w", err)
		}
	drain:
		for len(batch) < audit.MaxBatch {
			select {
			case m := <-queue:
				batch = append(batch, m)
			default:
				break drain
			}
		}
		if err := r.recordBatch(ctx, batch); err != nil {
			return stop(err)
		}
	}
}

// recordBatch writes the records of the envelopes in batch not recorded yet, in one atomic write, and moves the
// position past them.
func (r *envelopeRecorder) recordBatch(ctx context.Context, batch []envstore.Msg) error {
	if r.shared {
		return r.recordShared(ctx, batch)
	}
	done := r.position()
	recs := make([]audit.Record, 0, len(batch))
	var last uint64
	for _, m := range batch {
		if m.StreamSeq <= done || m.StreamSeq <= last {
			continue
		}
		if err := r.crash(stepRead, m.StreamSeq); err != nil {
			return err
		}
		recs, last = append(recs, r.recordFor(m)), m.StreamSeq
	}
	if len(recs) == 0 {
		return nil
	}
	stored, err := r.trail.AppendRecords(ctx, recs)
	if err != nil {
		// The records may be stored even so: the next follow finds out from the trail before writing again.
		return fmt.Errorf("audit records of envelopes up to %d: %w", last, err)
	}
	if err := r.crash(stepRecorded, last); err != nil {
		return err
	}
	r.advance(last, stored[len(stored)-1].Seq)
	if err := r.crash(stepAdvanced, last); err != nil {
		return err
	}
	return r.saveHint(ctx, false)
}

// recordShared is recordBatch for a recorder that shares the trail. Each write is conditional on the trail's
// last record (AppendAfter): before it, the recorder reads the trail up to that record (the follower does), and
// writes the records of the envelopes of batch that no record read stands for. A write that lost a race with
// another writer is tried again the same way; one that stored only a part of the records (single-replica
// stream) is followed by another for the rest.
func (r *envelopeRecorder) recordShared(ctx context.Context, batch []envstore.Msg) error {
	for {
		stored, err := r.trail.AppendAfter(ctx, func(ctx context.Context, lastSeq uint64) ([]audit.Record, error) {
			if err := r.caughtUp(ctx, lastSeq); err != nil {
				return nil, err
			}
			done := r.position()
			var recs []audit.Record
			var last uint64
			for _, m := range batch {
				if m.StreamSeq <= done || m.StreamSeq <= last {
					continue
				}
				if err := r.crash(stepRead, m.StreamSeq); err != nil {
					return nil, err
				}
				recs, last = append(recs, r.recordFor(m)), m.StreamSeq
			}
			return recs, nil
		})
		if err != nil {
			return fmt.Errorf("audit records of envelopes up to %d: %w", batch[len(batch)-1].StreamSeq, err)
		}
		if len(stored) == 0 {
			return nil
		}
		tail := stored[len(stored)-1]
		last, _ := streamSeqOf(tail)
		if err := r.crash(stepRecorded, last); err != nil {
			return err
		}
		// The write was conditional on the trail ending at a record already read: the trail is read through
		// the records just written.
		r.advance(last, tail.Seq)
		r.see(tail.Seq)
		if err := r.crash(stepAdvanced, last); err != nil {
			return err
		}
		if err := r.saveHint(ctx, false); err != nil {
			return err
		}
	}
}

// see moves the sequence up to which the trail is read.
func (r *envelopeRecorder) see(auditSeq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if auditSeq <= r.seen {
		return
	}
	r.seen = auditSeq
	close(r.seenMore)
	r.seenMore = make(chan struct{})
}

func (r *envelopeRecorder) seenThrough() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen
}

// caughtUp returns once the trail is read up to auditSeq.
func (r *envelopeRecorder) caughtUp(ctx context.Context, auditSeq uint64) error {
	for {
		r.mu.Lock()
		seen, ch := r.seen, r.seenMore
		r.mu.Unlock()
		if seen >= auditSeq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("reading the audit trail up to record %d: %w", auditSeq, ctx.Err())
		}
	}
}

// recover sets the position from the hint and the derived records after it.
func (r *envelopeRecorder) recover(ctx context.Context) error {
	hint, _, err := r.hints.get(ctx, hintKey)
	first := errors.Is(err, errNotFound)
	if err != nil && !first {
		return fmt.Errorf("read the recorder's hint: %w", err)
	}
	done, auditSeq := hint.Envelope, hint.Audit
	legacy := false
	scanned, err := r.trail.Scan(ctx, hint.Audit, func(rec audit.Record) error {
		if rec.Kind != kindEnvelopeAccepted {
			return nil
		}
		seq, ok := streamSeqOf(rec)
		if !ok {
			legacy = true
			return nil
		}
		done, auditSeq = max(done, seq), rec.Seq
		return nil
	})
	if err != nil {
		return fmt.Errorf("find where recording stopped: %w", err)
	}
	if first && legacy {
		// A trail written before envelope records named their stream sequence: the relay of that time recorded
		// each envelope itself, so start after the envelopes stored now.
		info, err := r.stream.Info(ctx)
		if err != nil {
			return fmt.Errorf("envelope stream: %w", err)
		}
		done = max(done, info.State.LastSeq)
		r.log.Info("audit trail predates derived envelope records; recording from the current end of the envelope stream",
			"envelope_seq", done)
	}
	r.advance(done, auditSeq)
	r.see(scanned)
	if r.shared && !r.lead.leads() {
		return nil // the hint is the writer's to save
	}
	return r.saveHint(ctx, first)
}

// saveHint stores the position if enough has happened since the last time, or if force.
func (r *envelopeRecorder) saveHint(ctx context.Context, force bool) error {
	r.mu.Lock()
	h := recorderHint{Envelope: r.done, Audit: r.auditSeq}
	due := force || h.Envelope >= r.hinted.Envelope+hintEvery || h != r.hinted && time.Since(r.hintedAt) >= hintAfter
	r.mu.Unlock()
	if !due {
		return nil
	}
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if _, err := r.hints.kv.Put(ctx, hintKey, b); err != nil {
		return fmt.Errorf("save the recorder's hint: %w", err)
	}
	r.mu.Lock()
	r.hinted, r.hintedAt = h, time.Now()
	r.mu.Unlock()
	return nil
}

func (r *envelopeRecorder) position() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.done
}

// advance moves the position forward (never back) and wakes the waiters.
func (r *envelopeRecorder) advance(envSeq, auditSeq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if auditSeq > r.auditSeq {
		r.auditSeq = auditSeq
	}
	if envSeq <= r.done {
		return
	}
	r.done = envSeq
	close(r.advanced)
	r.advanced = make(chan struct{})
}

// wait returns once the envelope at stream sequence seq has its audit record, or with ctx's error.
func (r *envelopeRecorder) wait(ctx context.Context, seq uint64) error {
	for {
		r.mu.Lock()
		done, ch := r.done, r.advanced
		r.mu.Unlock()
		if done >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the audit record of envelope %d: %w", seq, ctx.Err())
		}
	}
}

// recordFor is the audit record of a stored envelope: its header as stored (with the position and time the
// relay fixed), the workgroup and decision the relay kept with it, and its stream sequence.
func (r *envelopeRecorder) recordFor(m envstore.Msg) audit.Record {
	rec := audit.Record{Kind: kindEnvelopeAccepted, Session: m.Session, Workgroup: m.Meta[relay.MetaWorkgroup], Decision: audit.DecisionAllow}
	if d := m.Meta[relay.MetaDecision]; d != "" {
		rec.Decision = d
	}
	if raw, err := base64.RawURLEncoding.DecodeString(m.Meta[relay.MetaDiagnostic]); err == nil && json.Valid(raw) {
		rec.Diagnostic = raw
	}
	h, _, err := workgroups.DecodeFrame(bytes.NewReader(m.Data), relayLimits)
	if err != nil {
		rec.Actor, rec.Reason = r.actor, "stored envelope does not decode: "+err.Error()
		rec.Data = withStreamSeq(nil, m.StreamSeq)
		return rec
	}
	rec.Actor, rec.Time = h.From.String(), h.Time
	rec.Data = withStreamSeq(jsonRaw(h), m.StreamSeq)
	return rec
}

// kindEnvelopeAccepted is the audit kind of an envelope the relay stored.
const kindEnvelopeAccepted = "envelope.accepted"

// withStreamSeq adds "stream_seq" to a JSON object (or makes one).
func withStreamSeq(obj json.RawMessage, seq uint64) json.RawMessage {
	fields := map[string]json.RawMessage{}
	if len(obj) > 0 {
		_ = json.Unmarshal(obj, &fields)
	}
	fields["stream_seq"] = json.RawMessage(strconv.FormatUint(seq, 10))
	b, err := json.Marshal(fields)
	if err != nil {
		return nil
	}
	return b
}

// streamSeqOf reads the envelope stream sequence a derived record names.
func streamSeqOf(rec audit.Record) (uint64, bool) {
	var d struct {
		StreamSeq *uint64 `json:"stream_seq"`
	}
	if json.Unmarshal(rec.Data, &d) != nil || d.StreamSeq == nil {
		return 0, false
	}
	return *d.StreamSeq, true
}

// envelopeMeta is what the relay keeps with an envelope for its audit record (relay.Meta).
func envelopeMeta(wg workgroups.WorkgroupID, decision string, diagnostic json.RawMessage) map[string]string {
	return relay.Meta(wg, decision, diagnostic)
}
