package audit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/jsbatch"
	"github.com/umbra-mesh/umbra/internal/jsread"
)

// DefaultStream is the stream name used when Options.Stream is empty.
const DefaultStream = "UMBRA_AUDIT"

// DefaultMaxBytes bounds the stream on disk when Options.MaxBytes is zero: 2 GiB, about 2 million records of a
// typical 1 KiB. JetStream reserves it on disk when the stream is created.
const DefaultMaxBytes = 2 << 30

// ErrFull means the stream holds Options.MaxBytes and refuses new records; nothing stored was dropped. The
// operator exports and archives the trail and raises the limit.
var ErrFull = errors.New("audit: trail full")

// maxAppendAttempts bounds how often Append retries after another writer got in first. Each retry
// means another writer made progress, so running out takes a sustained, lopsided race.
const maxAppendAttempts = 64

// Options configures Open. The zero value is ready to use.
type Options struct {
	// Stream is the JetStream stream name, [A-Za-z0-9_-]+. Default DefaultStream. Records are published
	// on subjects under the lower-cased name: "<stream>.s.<session>" and "<stream>.g" (no session).
	Stream string
	// Replicas is the stream's replica count. Default 1.
	Replicas int
	// MaxBytes bounds the stream's size on disk. Default DefaultMaxBytes; negative is refused. At the limit
	// new records are refused with ErrFull; old ones are never dropped to make room (discard new), and records
	// have no maximum age: the trail is removed only by an operator, after an export.
	MaxBytes int64
	// Stored, if set, is called for every record once it is stored, with the context of the append and the
	// bytes the record costs the stream (StoredSize), under the append lock: it must return at once. The
	// controller counts each identity's audit bytes with it.
	Stored func(ctx context.Context, r Record, size int)

	// allowDelete leaves DenyDelete off, so that tests can cut holes in a chain.
	allowDelete bool
	// dedupWindow replaces DedupWindow, so that tests can outlive it quickly.
	dedupWindow time.Duration
}

// Log appends to and reads the audit stream. It is safe for concurrent use; several Logs, in one
// process or many, may append to the same stream and still form one chain.
type Log struct {
	js       jetstream.JetStream
	stream   jetstream.Stream
	name     string
	prefix   string // subject prefix: the lower-cased stream name
	replicas int

	mu        sync.Mutex // serialises appends and guards the tail below
	tailKnown bool
	lastSeq   uint64
	lastHash  string
	lastKind  string
	conflicts uint64 // appends that found another writer had got in first

	onStored func(ctx context.Context, r Record, size int)
}

// DedupWindow is how long the stream remembers a record's de-duplication ID: those of records sent by pipelined
// appends, needed only while the write is in flight, and those AppendOnce is given, which a writer unsure whether
// its record was stored must send again well within it. The server keeps one small entry per such ID for the
// window (at the pipelined recorder's fastest, some tens of thousands).
const DedupWindow = 30 * time.Second

// storeOverhead is what JetStream's file store adds to a message besides its subject and payload (record
// header, checksum, the expected-sequence or expected-last-ID headers, a pipelined record's de-duplication ID,
// and index), rounded up: StoredSize is never below a record's real cost.
const storeOverhead = 256

// StoredSize is what a record costs the stream: its stored encoding and subject plus the store's overhead.
func StoredSize(subject string, payload []byte) int {
	return len(subject) + len(payload) + storeOverhead
}

func (l *Log) notifyStored(ctx context.Context, r Record, subject string, payload []byte) {
	if l.onStored != nil {
		l.onStored(ctx, r, StoredSize(subject, payload))
	}
}

// Open creates the audit stream, or updates it to the required configuration, and loads its last
// record so that Append continues the chain. It fails if that last record is missing or damaged.
func Open(ctx context.Context, js jetstream.JetStream, opts Options) (*Log, error) {
	if js == nil {
		return nil, errors.New("audit: nil JetStream")
	}
	name := opts.Stream
	if name == "" {
		name = DefaultStream
	}
	if len(name) > 128 || !isToken(strings.ToLower(name), "_-", false) {
		return nil, fmt.Errorf("audit: stream name %q: want [A-Za-z0-9_-]+", clip(name))
	}
	replicas := opts.Replicas
	if replicas == 0 {
		replicas = 1
	}
	if replicas < 0 {
		return nil, fmt.Errorf("audit: replicas %d", replicas)
	}
	dedup := opts.dedupWindow
	if dedup == 0 {
		dedup = DedupWindow
	}
	maxBytes := opts.MaxBytes
	if maxBytes == 0 {
		maxBytes = DefaultMaxBytes
	}
	if maxBytes < 0 {
		return nil, fmt.Errorf("audit: MaxBytes %d is negative", maxBytes)
	}
	prefix := strings.ToLower(name)
	cfg := jetstream.StreamConfig{
		Name:        name,
		Description: "Umbra audit trail: append-only, hash-chained",
		Subjects:    []string{prefix + ".>"},
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		Retention:   jetstream.LimitsPolicy,
		// A bounded size, and at the bound new records are refused rather than the beginning of the chain
		// silently lost. No maximum age and no per-subject limit, for the same reason (a session's records
		// share a subject).
		MaxMsgs:           -1,
		MaxBytes:          maxBytes,
		MaxAge:            0,
		MaxMsgsPerSubject: -1,
		Discard:           jetstream.DiscardNew,
		MaxMsgSize:        maxLine,
		// Pipelined appends (AppendRecords) name each record's predecessor by its de-duplication ID, and
		// AppendOnce recognises a record sent again by its ID (DedupWindow).
		Duplicates: dedup,
		// AppendBatch stores a batch of records as one atomic write.
		AllowAtomicPublish: true,
		// No record is ever deleted one by one. Purges are allowed, for Archive: it trims the beginning of the
		// trail, through a record an export holds and a checkpoint signs, after recording an audit.archived
		// record naming it. Any other purge leaves a trail whose beginning is missing with no audit.archived
		// record naming it, which Verify reports as a truncation.
		DenyDelete: !opts.allowDelete,
	}
	// A stream created before archiving existed refuses purges, and JetStream cannot lift that: keep it so
	// (Archive then says what to do).
	if old, err := js.Stream(ctx, name); err == nil && old.CachedInfo().Config.DenyPurge {
		cfg.DenyPurge = true
	}
	stream, err := js.CreateOrUpdateStream(ctx, cfg)
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == 10047 { // insufficient resources
		return nil, fmt.Errorf("audit: stream %s: JetStream cannot reserve its %d MiB limit on this disk (within 75%% of the space free at start): free disk space or give a smaller limit: %w", name, maxBytes>>20, err)
	}
	if err != nil {
		return nil, fmt.Errorf("audit: stream %s: %w", name, err)
	}
	l := &Log{js: js, stream: jsread.Replicated(stream, replicas), name: name, prefix: prefix, replicas: replicas, onStored: opts.Stored}
	if err := l.loadTail(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// Append validates r, links it to the last record of the stream and publishes it. Seq, Prev and Hash
// are set here (values passed in are ignored), Time too when zero; the stored record is returned.
//
// The publish is conditional on the stream's last sequence being the one this record links to; when
// another writer got in first, Append reloads the tail and tries again. If Append returns an error
// after publishing, the record may or may not be stored; the chain is intact either way.
func (l *Log) Append(ctx context.Context, r Record) (Record, error) {
	out, _, err := l.AppendOnce(ctx, r, "")
	return out, err
}

// AppendOnce is Append for a writer that sends a record again when it cannot tell whether the first try was
// stored (its connection broke before the answer): id names the record, and a record whose id the stream
// already holds is not stored again. It returns the stored record, for a repeated id the one stored first, and
// whether id was a repeat. Only ids are compared, so the caller gives every record its own (scoped so that
// writers cannot claim each other's). The stream remembers an id for DedupWindow after the record was stored
// (across restarts and, replicated, leader changes); a repeat sent later than that is stored again, so a
// writer stops sending it again well within the window. An empty id is Append.
func (l *Log) AppendOnce(ctx context.Context, r Record, id string) (Record, bool, error) {
	r.Seq, r.Prev, r.Hash = 0, "", ""
	if err := normalize(&r, time.Now()); err != nil {
		return Record{}, false, err
	}
	if err := validate(r); err != nil {
		return Record{}, false, fmt.Errorf("audit: invalid record: %w", err)
	}
	if len(id) > maxMsgID {
		return Record{}, false, fmt.Errorf("audit: record id of %d bytes, at most %d", len(id), maxMsgID)
	}
	out, _, dup, err := l.appendWith(ctx, id, func(uint64, string, string) (Record, bool, error) { return r, true, nil })
	return out, dup, err
}

// maxMsgID bounds AppendOnce's record ids: each is kept by the server for DedupWindow and stored with its
// record.
const maxMsgID = 128

// appendWith is Append for a record that depends on the one it follows: next is called with the sequence,
// hash and kind of the stream's last record (0, "", "" when empty) on every attempt, under the append lock,
// and returns the record to link to it, or false to append nothing. A non-empty id is the record's
// de-duplication ID (AppendOnce): dup reports a record already stored under it, which is returned.
func (l *Log) appendWith(ctx context.Context, id string, next func(prevSeq uint64, prevHash, prevKind string) (Record, bool, error)) (_ Record, ok, dup bool, _ error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// A caller that gave up while it waited for the lock stores nothing: a writer that then sent its record again
	// must not see this try stored after the repeat, perhaps past the repeat's de-duplication window.
	if err := ctx.Err(); err != nil {
		return Record{}, false, false, fmt.Errorf("audit: append: %w", err)
	}
	if !l.tailKnown {
		if err := l.loadTail(ctx); err != nil {
			return Record{}, false, false, err
		}
	}
	for attempt := 1; ; attempt++ {
		r, ok, err := next(l.lastSeq, l.lastHash, l.lastKind)
		if err != nil || !ok {
			return Record{}, false, false, err
		}
		r, dup, sent, err := l.publishNext(ctx, r, id)
		if err == nil {
			return r, true, dup, nil
		}
		if !sent {
			return Record{}, false, false, err
		}
		if !isWrongLastSeq(err) {
			// A timeout may hide a stored record: find out from the stream next time.
			l.tailKnown = false
			return Record{}, false, false, fmt.Errorf("audit: publish: %w", full(err))
		}
		l.conflicts++
		if attempt == maxAppendAttempts {
			l.tailKnown = false
			return Record{}, false, false, fmt.Errorf("audit: append lost %d races with other writers: %w", attempt, err)
		}
		if err := sleep(ctx, time.Duration(rand.Int64N(int64(attempt)*int64(100*time.Microsecond)))); err != nil {
			l.tailKnown = false
			return Record{}, false, false, fmt.Errorf("audit: append: %w", err)
		}
		if err := l.loadTail(ctx); err != nil {
			return Record{}, false, false, err
		}
	}
}

// publishNext links r to the tail, publishes it on condition that the stream's last record is still the tail,
// and makes it the tail. The caller holds l.mu. sent says whether the record was published: then an error is the
// publish's, unwrapped (isWrongLastSeq: another writer got in first); else the record is invalid. With a
// non-empty id the record is published under it as its de-duplication ID; when the stream already holds a
// record under id, dup is true, that record is returned and the tail stays.
func (l *Log) publishNext(ctx context.Context, r Record, id string) (_ Record, dup, sent bool, _ error) {
	r.Seq, r.Prev, r.Hash = 0, l.lastHash, ""
	if err := normalize(&r, time.Now()); err != nil {
		return Record{}, false, false, err
	}
	if err := validate(r); err != nil {
		return Record{}, false, false, fmt.Errorf("audit: invalid record: %w", err)
	}
	b, err := canonical(r)
	if err != nil {
		return Record{}, false, false, err
	}
	if len(b) > MaxRecordSize {
		return Record{}, false, false, fmt.Errorf("audit: invalid record: %d bytes encoded, limit %d", len(b), MaxRecordSize)
	}
	sum := sha256.Sum256(b)
	r.Hash = hex.EncodeToString(sum[:])
	payload, err := stored(r)
	if err != nil {
		return Record{}, false, false, err
	}
	subject := l.subjectFor(r)
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(l.name), jetstream.WithExpectLastSequence(l.lastSeq)}
	if id != "" {
		opts = append(opts, jetstream.WithMsgID(id))
	}
	// A publish that reached a stream leader as it died is never answered: wait at most jsbatch.AckWait (the
	// survivors elect another leader 4-9 s after the death), whatever the caller's context allows, and let the
	// caller's next append find out from the stream whether it was stored.
	actx, cancel := context.WithTimeout(ctx, jsbatch.AckWait)
	ack, err := l.js.Publish(actx, subject, payload, opts...)
	cancel()
	if err != nil {
		return Record{}, false, true, err
	}
	if ack.Duplicate {
		first, err := l.storedAt(ctx, ack.Sequence)
		if err != nil {
			return Record{}, false, true, fmt.Errorf("record %q was stored before: %w", id, err)
		}
		return first, true, true, nil
	}
	r.Seq = ack.Sequence
	l.lastSeq, l.lastHash, l.lastKind = ack.Sequence, r.Hash, r.Kind
	l.notifyStored(ctx, r, subject, payload)
	return r, false, true, nil
}

// storedAt reads and checks the record stored at seq.
func (l *Log) storedAt(ctx context.Context, seq uint64) (Record, error) {
	msg, err := l.stream.GetMsg(ctx, seq)
	if err != nil {
		return Record{}, fmt.Errorf("audit: read record %d: %w", seq, err)
	}
	return l.check(msg.Sequence, msg.Subject, msg.Data)
}

// stored is the message payload: the canonical encoding with Hash filled in.
func stored(r Record) ([]byte, error) {
	r.Seq = 0
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("audit: encode record: %w", err)
	}
	return b, nil
}

func (l *Log) subjectFor(r Record) string {
	if r.Session != "" {
		return l.sessionSubject(r.Session)
	}
	return l.prefix + ".g"
}

func (l *Log) sessionSubject(id string) string { return l.prefix + ".s." + id }

// loadTail reads the last record of the stream, checks it and makes it the one Append links to.
// The caller holds l.mu, or owns l exclusively.
func (l *Log) loadTail(ctx context.Context) error {
	l.tailKnown = false
	info, err := l.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("audit: stream info: %w", err)
	}
	last := info.State.LastSeq
	if last == 0 {
		l.lastSeq, l.lastHash, l.lastKind, l.tailKnown = 0, "", "", true
		return nil
	}
	msg, err := l.stream.GetMsg(ctx, last)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return broken(last, ProblemGap, "last record missing")
	}
	if err != nil {
		return fmt.Errorf("audit: load last record %d: %w", last, err)
	}
	r, err := l.check(msg.Sequence, msg.Subject, msg.Data)
	if err != nil {
		return err
	}
	l.lastSeq, l.lastHash, l.lastKind, l.tailKnown = r.Seq, r.Hash, r.Kind, true
	return nil
}

// check decodes a stored message and checks what can be checked of it alone: encoding, validity,
// subject and its own hash. Linking to the record before is the chain's job.
func (l *Log) check(seq uint64, subject string, data []byte) (Record, error) {
	r, err := decode(data)
	if err != nil {
		return Record{}, broken(seq, ProblemMalformed, "%v", err)
	}
	r.Seq = seq
	if err := intact(r); err != nil {
		return Record{}, err
	}
	if want := l.subjectFor(r); subject != want {
		return Record{}, broken(seq, ProblemMalformed, "stored on subject %q, want %q", clip(subject), want)
	}
	return r, nil
}

// full marks a refusal because the stream reached its size limit as ErrFull.
func full(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && strings.Contains(apiErr.Description, "maximum bytes exceeded") {
		return fmt.Errorf("%w: %w", ErrFull, err)
	}
	return err
}

func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
