package envstore

import (
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
)

// Headers written next to the encoded envelope.
const (
	hdrID    = "Umbra-Envelope-Id"
	hdrTo    = "Umbra-To"
	hdrCount = "Umbra-Count"
)

const (
	defaultStream          = "UMBRA_ENVELOPES"
	defaultDuplicateWindow = 10 * time.Minute
	defaultAckWait         = 30 * time.Second
	defaultMaxSessions     = 4096

	// headerRoom is what the store reserves in a message for its headers and JetStream's.
	headerRoom = 16 << 10

	maxSessionLen = 128
	maxIDLen      = 128
	maxToLen      = 2048

	// appendAttempts bounds how often Append re-reads a session that another writer appended to meanwhile.
	appendAttempts = 32
)

var (
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
	// Session subjects are "<lower(Stream)>.<session>".
	Stream string
	// DuplicateWindow is how long JetStream remembers envelope ids: a retry with the same id within it is not
	// stored twice. Default 10 minutes.
	DuplicateWindow time.Duration
	// Replicas is the stream's replication factor. Default 1.
	Replicas int
	// MaxData is the largest encoded envelope accepted. Default, and ceiling, the connection's maximum payload
	// minus 16 KiB for headers (8 MiB - 16 KiB with natsd).
	MaxData int
	// AckWait is how long a Receiver's unacknowledged envelope waits before JetStream redelivers it.
	// Default 30 seconds.
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

	mu       sync.Mutex
	sessions map[string]*list.Element // of *sessionState
	lru      *list.List               // front: most recently used
}

// sessionState is what a Store remembers about a session between appends.
type sessionState struct {
	session string

	mu     sync.Mutex // serialises this process's appends to the session
	loaded bool       // last, count and lastID reflect JetStream as of the last read or write
	last   uint64     // stream sequence of the session's last envelope (0: none)
	count  uint64
	lastID string
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
		Description: "Umbra relayed envelopes, one subject per session",
		Subjects:    []string{prefix + "*"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		Duplicates:  opts.DuplicateWindow,
		Replicas:    opts.Replicas,
		MaxMsgSize:  int32(opts.MaxData + headerRoom),
	})
	if err != nil {
		return nil, fmt.Errorf("envstore: stream %s: %w", opts.Stream, err)
	}
	return &Store{
		js:       js,
		stream:   stream,
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
	Duplicate bool   // the same ID was already stored: nothing new was written
}

// Append stores e if its session holds fewer than max envelopes (max 0: no limit). Concurrent appends to one
// session, from this Store or any other on the stream, never store more than max. Append returns only after
// JetStream acknowledged the write. At the limit it returns ErrLimit with the session's count.
func (s *Store) Append(ctx context.Context, e Envelope, max uint64) (Appended, error) {
	if err := s.validate(e); err != nil {
		return Appended{}, err
	}
	subj := s.prefix + e.Session
	msgID := e.Session + "/" + e.ID

	st := s.state(e.Session)
	st.mu.Lock()
	defer st.mu.Unlock()

	for attempt := 1; ; attempt++ {
		if !st.loaded {
			last, count, lastID, err := s.snapshot(ctx, subj)
			if err != nil {
				return Appended{}, fmt.Errorf("envstore: read session %s: %w", e.Session, err)
			}
			st.last, st.count, st.lastID, st.loaded = last, count, lastID, true
		}
		if max > 0 && st.count >= max {
			if st.lastID == e.ID {
				return Appended{StreamSeq: st.last, Count: st.count, Duplicate: true}, nil
			}
			return Appended{Count: st.count}, ErrLimit
		}

		data := e.Data
		if e.Stamp != nil {
			var err error
			if data, err = e.Stamp(st.count + 1); err != nil {
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
		ack, err := s.js.PublishMsg(ctx, msg,
			jetstream.WithMsgID(msgID),
			jetstream.WithExpectLastSequencePerSubject(st.last))
		if err == nil {
			if ack.Duplicate {
				return Appended{StreamSeq: ack.Sequence, Count: st.count, Duplicate: true}, nil
			}
			st.last, st.count, st.lastID = ack.Sequence, st.count+1, e.ID
			return Appended{StreamSeq: ack.Sequence, Count: st.count}, nil
		}
		// Whatever happened, what is stored is now unknown here: the write may even have succeeded after a
		// timeout. The next attempt, or the next Append, re-reads the session.
		st.loaded = false
		if !wrongLastSeq(err) {
			return Appended{}, fmt.Errorf("envstore: append to session %s: %w", e.Session, err)
		}
		if attempt == appendAttempts {
			return Appended{}, ErrConflict
		}
		if attempt > 2 {
			// Two writers in lock step would otherwise keep refusing each other.
			t := time.NewTimer(rand.N(time.Duration(attempt) * time.Millisecond))
			select {
			case <-ctx.Done():
				t.Stop()
				return Appended{}, fmt.Errorf("envstore: append to session %s: %w", e.Session, ctx.Err())
			case <-t.C:
			}
		}
	}
}

// Count returns how many envelopes the session holds, as JetStream knows it now: the count recorded by its last
// envelope.
func (s *Store) Count(ctx context.Context, session string) (uint64, error) {
	if !validName(session, maxSessionLen) {
		return 0, badSession(session)
	}
	_, count, _, err := s.snapshot(ctx, s.prefix+session)
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
// not the mutex, is what keeps counts exact.
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

// snapshot reads a session's last envelope: its stream sequence, the session count it recorded, and its id.
func (s *Store) snapshot(ctx context.Context, subj string) (last, count uint64, lastID string, err error) {
	for range 3 {
		raw, err := s.stream.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, 0, "", nil
		}
		if err != nil {
			return 0, 0, "", err
		}
		if n, perr := strconv.ParseUint(raw.Header.Get(hdrCount), 10, 64); perr == nil && n > 0 {
			return raw.Sequence, n, raw.Header.Get(hdrID), nil
		}
		// The last message was not written by this package. Count what the subject holds instead, and make sure
		// nothing was appended between the reads, so that the count and the sequence describe the same moment.
		info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			return 0, 0, "", err
		}
		again, err := s.stream.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			return 0, 0, "", err
		}
		if again.Sequence == raw.Sequence {
			return raw.Sequence, info.State.Subjects[subj], raw.Header.Get(hdrID), nil
		}
	}
	return 0, 0, "", ErrConflict
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
	return nil
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
