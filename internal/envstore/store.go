package envstore

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/jsread"
)

const (
	defaultStream          = "UMBRA_ENVELOPES"
	defaultDuplicateWindow = 10 * time.Minute
	defaultAckWait         = 5 * time.Second
	defaultMaxSessions     = 4096

	// headerRoom is what the store reserves in a message for its headers and JetStream's.
	headerRoom = 16 << 10

	maxSessionLen = 128
	maxIDLen      = 128
	maxToLen      = 2048

	// conflictPatience bounds how long Append keeps re-reading a session that other writers keep appending to,
	// and appendAttempts how often it does so at least. A replicated stream refuses a compare-and-set on a
	// session while another writer's envelope to it is still being replicated (10164), and the re-read does not
	// show that envelope yet: a writer may be refused many times in quick succession before it gets its turn.
	conflictPatience = 5 * time.Second
	appendAttempts   = 32
)

// DefaultMaxBytes bounds the stream on disk when Options.MaxBytes is zero: 2 GiB, about 2 million envelopes of
// 512 bytes with their headers. JetStream reserves it on disk when the stream is created.
const DefaultMaxBytes = 2 << 30

var (
	// ErrFull means the stream holds Options.MaxBytes and refuses new envelopes; nothing stored was dropped.
	ErrFull = errors.New("envstore: envelope store full")
	// ErrLimit means the session already holds its maximum number of envelopes.
	ErrLimit = errors.New("envstore: session message limit reached")
	// ErrInvalid means an envelope or a session id was refused before anything was written.
	ErrInvalid = errors.New("envstore: invalid envelope")
	// ErrConflict means other writers kept appending to the session while Append retried; nothing was written
	// and the caller may try again.
	ErrConflict = errors.New("envstore: session busy, too many concurrent appends")
)

// Options configures a Store. The zero value is usable.
type Options struct {
	// Stream is the JetStream stream name ([A-Za-z0-9_-]+). Default "UMBRA_ENVELOPES".
	// Envelope subjects are "<lower(Stream)>.<session>.<id token>".
	Stream string
	// DuplicateWindow is how long JetStream remembers envelope ids in memory, which answers a retry racing its
	// original without a read. De-duplication itself does not depend on it: an id is stored once per session,
	// for the life of the session. Default 10 minutes.
	DuplicateWindow time.Duration
	// Replicas is the stream's replication factor. Default 1.
	Replicas int
	// MaxData is the largest encoded envelope accepted. Default, and ceiling, the connection's maximum payload
	// minus 16 KiB for headers (8 MiB - 16 KiB with natsd).
	MaxData int
	// MaxBytes bounds the stream's size on disk. Default DefaultMaxBytes; negative is refused. At the limit new
	// envelopes are refused with ErrFull; stored ones are never dropped to make room (discard new), and envelopes
	// have no maximum age: de-duplication and delivery to a recipient that comes back later rely on them.
	MaxBytes int64
	// AckWait is how long a Receiver's unacknowledged envelope waits before JetStream redelivers it, unless the
	// Receiver says it is still at work on it (Receiver.InProgress). It is what a recipient waits when the
	// process reading its cursor died with an envelope out (a controller of a cluster, killed): nothing else
	// is delivered until then. Default 5 seconds.
	AckWait time.Duration
	// MaxSessions bounds how many sessions' counters are cached; the least recently used is forgotten and
	// re-read from JetStream when next used. Default 4096.
	MaxSessions int
}

// Store appends envelopes to one JetStream stream and reads them back. It is safe for concurrent use, also by
// several Store values in one or more processes on the same stream.
type Store struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	opts   Options
	prefix string // "<lower(stream)>."

	commit *committer

	mu       sync.Mutex
	sessions map[string]*list.Element // of *sessionState
	lru      *list.List               // front: most recently used
}

// sessionState is what a Store remembers about a session between appends.
type sessionState struct {
	session string

	mu     sync.Mutex // serialises this process's appends to the session
	loaded bool       // expect and count reflect JetStream as of the last read or write
	expect uint64     // last stream sequence on the session's envelope subjects (0: none): the compare-and-set
	count  uint64
	// legacy maps the ids of envelopes stored on the session subject itself, by an earlier version of this
	// package, to their stream sequences. Nothing is appended there any more, so it is read once; nil: not yet.
	legacy map[string]uint64
}

// Open creates or updates the stream and returns a Store on it.
func Open(ctx context.Context, js jetstream.JetStream, opts Options) (*Store, error) {
	if opts.Stream == "" {
		opts.Stream = defaultStream
	}
	if !validName(opts.Stream, 255) {
		return nil, fmt.Errorf("envstore: stream name %q: want 1-255 of [A-Za-z0-9_-]", opts.Stream)
	}
	if opts.DuplicateWindow <= 0 {
		opts.DuplicateWindow = defaultDuplicateWindow
	}
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxBytes < 0 {
		return nil, fmt.Errorf("envstore: MaxBytes %d is negative", opts.MaxBytes)
	}
	if opts.AckWait <= 0 {
		opts.AckWait = defaultAckWait
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = defaultMaxSessions
	}
	ceiling := int(js.Conn().MaxPayload()) - headerRoom
	if ceiling <= 0 {
		return nil, fmt.Errorf("envstore: server max payload %d is too small", js.Conn().MaxPayload())
	}
	switch {
	case opts.MaxData <= 0:
		opts.MaxData = ceiling
	case opts.MaxData > ceiling:
		return nil, fmt.Errorf("envstore: MaxData %d exceeds what the server accepts (%d)", opts.MaxData, ceiling)
	}

	prefix := strings.ToLower(opts.Stream) + "."
	stream, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        opts.Stream,
		Description: "Umbra relayed envelopes, one subject per envelope under its session's",
		// "<prefix>.<session>.<id token>" for envelopes; "<prefix>.<session>" still holds those written before
		// envelopes had subjects of their own. Direct gets stay off: every read must see the leader's state.
		Subjects:  []string{prefix + "*", prefix + "*.*"},
		Storage:   jetstream.FileStorage,
		Retention: jetstream.LimitsPolicy,
		// Bounded in bytes, refusing new envelopes at the bound; no age or per-subject limit, which would drop
		// stored envelopes (and with them the record of which ids a session holds).
		Discard:           jetstream.DiscardNew,
		MaxBytes:          opts.MaxBytes,
		MaxMsgs:           -1,
		MaxAge:            0,
		MaxMsgsPerSubject: -1,
		Duplicates:        opts.DuplicateWindow,
		Replicas:          opts.Replicas,
		// Concurrent appends are committed together (commit.go).
		AllowAtomicPublish: true,
		MaxMsgSize:         int32(opts.MaxData + headerRoom),
	})
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == 10047 { // insufficient resources
		return nil, fmt.Errorf("envstore: stream %s: JetStream cannot reserve its %d MiB limit on this disk (within 75%% of the space free at start): free disk space or give a smaller limit: %w", opts.Stream, opts.MaxBytes>>20, err)
	}
	if err != nil {
		return nil, fmt.Errorf("envstore: stream %s: %w", opts.Stream, err)
	}
	return &Store{
		commit:   &committer{js: js, stream: opts.Stream, atomic: opts.Replicas > 1, replicated: opts.Replicas > 1},
		js:       js,
		stream:   jsread.Replicated(stream, opts.Replicas),
		opts:     opts,
		prefix:   prefix,
		sessions: make(map[string]*list.Element),
		lru:      list.New(),
	}, nil
}

// Envelope is one encoded envelope and what the store needs to know about it.
type Envelope struct {
	ID      string // envelope id, unique within the session; de-duplicates retries
	Session string // session id: [A-Za-z0-9_-]+
	To      string // recipient key, e.g. a SPIFFE ID
	Data    []byte // the encoded envelope, stored as is unless Stamp is set
	// Meta holds small string values stored with the envelope and returned on every read: keys 1-32 of
	// [A-Za-z0-9-] (case kept), values printable ASCII neither beginning nor ending with a space (header values
	// lose surrounding spaces), at most 8 KiB in all as the headers they become ("Umbra-Meta-<key>: <value>\r\n").
	// Nil when an envelope has none; a bad Meta is ErrInvalid and nothing is written.
	Meta map[string]string
	// Stamp, if set, encodes the envelope for the position the store is about to write it at (1 for a
	// session's first envelope) and its result is stored instead of Data. The store calls it where it makes the
	// compare-and-set on the session, so the position inside the envelope is the one the store commits, also
	// when several writers race; it may be called more than once. Data still bounds the size check.
	Stamp func(seq uint64) ([]byte, error)
}

// Appended reports where an envelope was stored.
type Appended struct {
	StreamSeq uint64 // stream sequence of the stored (or previously stored) envelope
	Count     uint64 // envelopes recorded for the session after this append; a duplicate does not increase it
	Duplicate bool   // the same ID was already stored in the session: nothing new was written
}

// Append stores e if its session holds fewer than max envelopes (max 0: no limit) and no envelope with e's id.
// Concurrent appends to one session, from this Store or any other on the stream, never store more than max,
// nor one id twice. Append returns only after JetStream acknowledged the write. At the limit it returns ErrLimit
// with the session's count, unless e's id is already stored: a duplicate is reported as such, limit or not.
func (s *Store) Append(ctx context.Context, e Envelope, max uint64) (Appended, error) {
	if err := s.validate(e); err != nil {
		return Appended{}, err
	}
	subj := s.envelopeSubject(e.Session, e.ID)
	fail := func(err error) (Appended, error) {
		return Appended{}, fmt.Errorf("envstore: append to session %s: %w", e.Session, err)
	}

	st := s.state(e.Session)
	st.mu.Lock()
	defer st.mu.Unlock()

	// lost is the last message this append published again because the answer to it was lost: if the envelope
	// turns out to be stored, it may be this one.
	var lost *nats.Msg
	began := time.Now()
	for attempt := 1; ; attempt++ {
		if st.legacy == nil {
			ids, err := s.legacyIDs(ctx, e.Session)
			if err != nil {
				return fail(err)
			}
			st.legacy = ids
		}
		fresh := !st.loaded
		if fresh {
			expect, count, err := s.snapshot(ctx, e.Session)
			if err != nil {
				return fail(err)
			}
			st.expect, st.count, st.loaded = expect, count, true
		}
		// The look-up comes after the state the compare-and-set expects was read: an original stored up to that
		// point is found here, and one stored after it makes the publish below fail and this loop look again.
		orig, err := s.stored(ctx, st, subj, e.ID)
		if err != nil {
			return fail(err)
		}
		if orig != 0 {
			if lost != nil && s.own(ctx, orig, lost) {
				// This append's own envelope, stored while the answer to its publish was lost.
				return Appended{StreamSeq: orig, Count: position(lost)}, nil
			}
			if !fresh {
				// Report the count as it is now, not as this Store last saw it.
				expect, count, err := s.snapshot(ctx, e.Session)
				if err != nil {
					st.loaded = false
					return fail(err)
				}
				st.expect, st.count = expect, count
			}
			return Appended{StreamSeq: orig, Count: st.count, Duplicate: true}, nil
		}
		if max > 0 && st.count >= max {
			return Appended{Count: st.count}, ErrLimit
		}

		data := e.Data
		if e.Stamp != nil {
			if data, err = e.Stamp(st.count + 1); err != nil {
				if !fresh {
					// The position came from this Store's memory of the session, which another writer may have
					// moved on since: a caller that checked the envelope against the session as it is now
					// refuses it. It is asked again at the position the stream holds.
					st.loaded = false
					continue
				}
				return Appended{}, fmt.Errorf("%w: %v", ErrInvalid, err)
			}
			if len(data) > s.opts.MaxData {
				return Appended{}, fmt.Errorf("%w: %d bytes, more than the %d the store accepts", ErrInvalid, len(data), s.opts.MaxData)
			}
		}
		msg := &nats.Msg{Subject: subj, Data: data, Header: nats.Header{}}
		msg.Header.Set(hdrID, e.ID)
		msg.Header.Set(hdrTo, e.To)
		msg.Header.Set(hdrCount, strconv.FormatUint(st.count+1, 10))
		for k, v := range e.Meta {
			msg.Header.Set(hdrMetaPrefix+k, v)
		}
		// The compare-and-set is on the whole session, while the envelope goes to its own subject.
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(st.expect, 10))
		msg.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, s.sessionWildcard(e.Session))
		// Published with other sessions' envelopes ready at the same moment (one fsync for all); alone, with the
		// message id as a fast path for a retry racing its original, which JetStream answers from memory.
		ack, err := s.commit.publish(ctx, msg, e.Session+"/"+e.ID)
		if ack.republished {
			lost = msg
		}
		if err == nil {
			if ack.dup && ack.republished && s.own(ctx, ack.seq, msg) {
				st.loaded = false // the session's state is read again by the next append
				return Appended{StreamSeq: ack.seq, Count: position(msg)}, nil
			}
			if ack.dup {
				return Appended{StreamSeq: ack.seq, Count: st.count, Duplicate: true}, nil
			}
			st.expect, st.count = ack.seq, st.count+1
			return Appended{StreamSeq: ack.seq, Count: st.count}, nil
		}
		// Whatever happened, what is stored is now unknown here: the write may even have succeeded after a
		// timeout. The next attempt, or the next Append, re-reads the session.
		st.loaded = false
		if isFull(err) {
			return fail(fmt.Errorf("%w: %w", ErrFull, err))
		}
		if !wrongLastSeq(err) {
			return fail(err)
		}
		if attempt >= appendAttempts && time.Since(began) > conflictPatience {
			return Appended{}, ErrConflict
		}
		if attempt > 2 {
			// Two writers in lock step would otherwise keep refusing each other, and a refusal while another
			// writer's envelope is replicated lasts until it is committed.
			t := time.NewTimer(rand.N(time.Duration(min(attempt, 10)) * time.Millisecond))
			select {
			case <-ctx.Done():
				t.Stop()
				return fail(ctx.Err())
			case <-t.C:
			}
		}
	}
}

// own reports whether the message stored at seq is msg itself, byte for byte: a duplicate answered to a copy
// published again is then this append's own original, whose answer was lost, not another append's. The data is
// stamped by the caller (the relay fixes each envelope's time), so two appends of one envelope id do not store
// the same bytes. When the message cannot be read, it counts as another's: the caller is told the envelope is a
// duplicate, which is true of what is stored either way.
func (s *Store) own(ctx context.Context, seq uint64, msg *nats.Msg) bool {
	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
	defer cancel()
	m, err := s.stream.GetMsg(gctx, seq)
	return err == nil && m.Subject == msg.Subject && bytes.Equal(m.Data, msg.Data)
}

// position returns the count msg was stamped with: its place in its session.
func position(msg *nats.Msg) uint64 {
	n, _ := strconv.ParseUint(msg.Header.Get(hdrCount), 10, 64)
	return n
}

// isFull reports a refusal because the stream reached MaxBytes.
func isFull(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && strings.Contains(apiErr.Description, "maximum bytes exceeded")
}

// Count returns how many envelopes the session holds, as JetStream knows it now: the count recorded by its last
// envelope.
func (s *Store) Count(ctx context.Context, session string) (uint64, error) {
	if !validName(session, maxSessionLen) {
		return 0, badSession(session)
	}
	_, count, err := s.snapshot(ctx, session)
	if err != nil {
		return 0, fmt.Errorf("envstore: read session %s: %w", session, err)
	}
	return count, nil
}

// Forget drops what the Store remembers about a session, e.g. once it is closed. It does not touch stored
// envelopes; a later Append re-reads the session from JetStream.
func (s *Store) Forget(session string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.sessions[session]; ok {
		s.lru.Remove(el)
		delete(s.sessions, session)
	}
}

// state returns the cached state of a session, creating it and evicting the least recently used if needed.
// An evicted state may still be in use by an Append; that is safe because JetStream's expected-sequence check,
// not the mutex, is what keeps counts exact and ids unique.
func (s *Store) state(session string) *sessionState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.sessions[session]; ok {
		s.lru.MoveToFront(el)
		return el.Value.(*sessionState)
	}
	st := &sessionState{session: session}
	s.sessions[session] = s.lru.PushFront(st)
	for s.lru.Len() > s.opts.MaxSessions {
		old := s.lru.Back()
		s.lru.Remove(old)
		delete(s.sessions, old.Value.(*sessionState).session)
	}
	return st
}

// stored returns the stream sequence of the envelope with this id in the session, or 0 if there is none.
func (s *Store) stored(ctx context.Context, st *sessionState, subj, id string) (uint64, error) {
	if seq, ok := st.legacy[id]; ok {
		return seq, nil
	}
	raw, err := s.stream.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("look up envelope %s: %w", id, err)
	}
	return raw.Sequence, nil
}

// snapshot reads a session as it is now: the last stream sequence on its envelope subjects (what the next
// compare-and-set expects) and the count of envelopes it holds, both from the same moment.
func (s *Store) snapshot(ctx context.Context, session string) (expect, count uint64, err error) {
	wild := s.sessionWildcard(session)
	for range 3 {
		raw, err := s.stream.GetLastMsgForSubject(ctx, wild)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			// Nothing on envelope subjects yet: the count is what the session subject holds from before.
			_, n, err := s.subjectCount(ctx, s.sessionSubject(session))
			return 0, n, err
		}
		if err != nil {
			return 0, 0, err
		}
		if n, ok := recordedCount(raw.Header); ok {
			return raw.Sequence, n, nil
		}
		// The last message was not written by this package: count every message of the session instead.
		old, err := s.subjectMsgs(ctx, s.sessionSubject(session))
		if err != nil {
			return 0, 0, err
		}
		n, err := s.subjectMsgs(ctx, wild)
		if err != nil {
			return 0, 0, err
		}
		again, err := s.stream.GetLastMsgForSubject(ctx, wild)
		if err != nil {
			return 0, 0, err
		}
		if again.Sequence == raw.Sequence {
			return raw.Sequence, old + n, nil
		}
	}
	return 0, 0, ErrConflict
}

// subjectCount reads the last message on a literal subject and the session count it recorded, or, if it
// recorded none, the number of messages the subject holds.
func (s *Store) subjectCount(ctx context.Context, subj string) (last, count uint64, err error) {
	for range 3 {
		raw, err := s.stream.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, 0, nil
		}
		if err != nil {
			return 0, 0, err
		}
		if n, ok := recordedCount(raw.Header); ok {
			return raw.Sequence, n, nil
		}
		// Count what the subject holds, and make sure nothing was appended between the reads, so that the count
		// and the sequence describe the same moment.
		n, err := s.subjectMsgs(ctx, subj)
		if err != nil {
			return 0, 0, err
		}
		again, err := s.stream.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			return 0, 0, err
		}
		if again.Sequence == raw.Sequence {
			return raw.Sequence, n, nil
		}
	}
	return 0, 0, ErrConflict
}

// subjectMsgs is how many messages the stream holds on subjects matching filter.
func (s *Store) subjectMsgs(ctx context.Context, filter string) (uint64, error) {
	info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n, nil
}

// legacyIDs reads the ids of the envelopes stored on the session subject itself (see sessionState.legacy).
func (s *Store) legacyIDs(ctx context.Context, session string) (map[string]uint64, error) {
	subj := s.sessionSubject(session)
	ids := make(map[string]uint64)
	n, err := s.subjectMsgs(ctx, subj)
	if err != nil {
		return nil, fmt.Errorf("read earlier envelope ids: %w", err)
	}
	if n == 0 {
		return ids, nil
	}
	it, stop, err := s.ordered(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subj},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		HeadersOnly:    true,
	})
	if err != nil {
		return nil, fmt.Errorf("read earlier envelope ids: %w", err)
	}
	defer stop()
	for {
		jm, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("read earlier envelope ids: %w", err)
		}
		md, err := jm.Metadata()
		if err != nil {
			return nil, fmt.Errorf("read earlier envelope ids: %w", err)
		}
		if id := jm.Headers().Get(hdrID); id != "" {
			if _, dup := ids[id]; !dup {
				ids[id] = md.Sequence.Stream
			}
		}
		if md.NumPending == 0 {
			return ids, nil
		}
	}
}

// recordedCount is the session count a message written by this package carries.
func recordedCount(h nats.Header) (uint64, bool) {
	n, err := strconv.ParseUint(h.Get(hdrCount), 10, 64)
	return n, err == nil && n > 0
}

func (s *Store) validate(e Envelope) error {
	switch {
	case !validName(e.Session, maxSessionLen):
		return badSession(e.Session)
	case e.ID == "":
		return fmt.Errorf("%w: empty envelope id", ErrInvalid)
	case !validToken(e.ID, maxIDLen):
		return fmt.Errorf("%w: envelope id: want 1-%d printable ASCII characters without spaces", ErrInvalid, maxIDLen)
	case !validToken(e.To, maxToLen):
		return fmt.Errorf("%w: recipient: want 1-%d printable ASCII characters without spaces", ErrInvalid, maxToLen)
	case len(e.Data) > s.opts.MaxData:
		return fmt.Errorf("%w: %d bytes, more than the %d the store accepts", ErrInvalid, len(e.Data), s.opts.MaxData)
	}
	return validateMeta(e.Meta)
}

func badSession(session string) error {
	if len(session) > 64 {
		session = session[:64] + "…"
	}
	return fmt.Errorf("%w: session id %q: want 1-%d of [A-Za-z0-9_-]", ErrInvalid, session, maxSessionLen)
}

// validName reports whether s is 1 to max characters of [A-Za-z0-9_-]: safe as a subject token and a stream name.
func validName(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validToken reports whether s is 1 to max printable ASCII characters without spaces: safe as a header value.
func validToken(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// wrongLastSeq reports whether JetStream refused a publish because the subject's last sequence was not the
// expected one. Replicated streams report it with a different code.
func wrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}
