package envstore

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// checkSession asserts that the session holds exactly the envelopes in want (by id), once each, in increasing
// stream order, and that Count agrees.
func checkSession(t *testing.T, s *Store, session string, want map[string]bool) {
	t.Helper()
	ctx := testContext(t)
	n, err := s.Count(ctx, session)
	if err != nil {
		t.Fatal(err)
	}
	if n != uint64(len(want)) {
		t.Errorf("Count(%s) = %d, want %d", session, n, len(want))
	}
	all, err := s.All(ctx, session)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(want) {
		t.Errorf("All(%s) returned %d envelopes, want %d", session, len(all), len(want))
	}
	seen := make(map[string]bool)
	var prev uint64
	for _, m := range all {
		if seen[m.ID] {
			t.Errorf("envelope %s stored twice", m.ID)
		}
		seen[m.ID] = true
		if !want[m.ID] {
			t.Errorf("envelope %s stored but its Append did not succeed", m.ID)
		}
		if m.StreamSeq <= prev {
			t.Errorf("envelope %s at sequence %d after %d", m.ID, m.StreamSeq, prev)
		}
		prev = m.StreamSeq
	}
}

func TestAppendConcurrentLimit(t *testing.T) {
	const goroutines, each, max = 50, 4, 100
	s := newStore(t, Options{})
	ctx := testContext(t)

	var (
		mu      sync.Mutex
		stored  = make(map[string]bool)
		counts  = make(map[uint64]bool)
		limited atomic.Int64
		wg      sync.WaitGroup
	)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				e := Envelope{ID: fmt.Sprintf("g%02d-%d", g, i), Session: "race", To: recipientB, Data: []byte("hello")}
				a, err := s.Append(ctx, e, max)
				switch {
				case errors.Is(err, ErrLimit):
					limited.Add(1)
				case err != nil:
					t.Errorf("Append %s: %v", e.ID, err)
				default:
					mu.Lock()
					if a.Duplicate || counts[a.Count] {
						t.Errorf("Append %s: %+v: duplicate or count handed out twice", e.ID, a)
					}
					stored[e.ID], counts[a.Count] = true, true
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()

	if len(stored) != max || limited.Load() != goroutines*each-max {
		t.Fatalf("%d appends succeeded and %d hit the limit, want %d and %d",
			len(stored), limited.Load(), max, goroutines*each-max)
	}
	for c := uint64(1); c <= max; c++ {
		if !counts[c] {
			t.Errorf("no append returned count %d", c)
		}
	}
	checkSession(t, s, "race", stored)
}

func TestAppendDuplicates(t *testing.T) {
	srv := testServer(t)
	js := connect(t, srv)
	s := open(t, js, Options{})
	fresh := open(t, js, Options{}) // another replica, knowing nothing about the sessions yet

	type step struct {
		store   *Store
		session string
		id      string
		max     uint64
		wantErr error
		wantDup bool
		seqOf   string // the returned StreamSeq must be that of this earlier step's id ("" = a new one)
		count   uint64
	}
	steps := []step{
		{store: s, session: "s1", id: "e1", max: 3, count: 1},
		{store: s, session: "s1", id: "e1", max: 3, wantDup: true, seqOf: "e1", count: 1},
		{store: s, session: "s1", id: "e2", max: 3, count: 2},
		{store: s, session: "s1", id: "e1", max: 3, wantDup: true, seqOf: "e1", count: 2},
		{store: fresh, session: "s1", id: "e2", max: 3, wantDup: true, seqOf: "e2", count: 2},
		{store: s, session: "s1", id: "e3", max: 3, count: 3},
		// A retry of the envelope that reached the limit is acknowledged, not refused.
		{store: s, session: "s1", id: "e3", max: 3, wantDup: true, seqOf: "e3", count: 3},
		{store: s, session: "s1", id: "e4", max: 3, wantErr: ErrLimit, count: 3},
		// Ids are scoped to their session: the same id elsewhere is a different envelope.
		{store: s, session: "s2", id: "e1", max: 3, count: 1},
	}
	seqs := make(map[string]uint64) // session/id -> stream sequence
	ctx := testContext(t)
	for i, st := range steps {
		name := fmt.Sprintf("%d-%s-%s", i, st.session, st.id)
		t.Run(name, func(t *testing.T) {
			a, err := st.store.Append(ctx, Envelope{ID: st.id, Session: st.session, To: recipientA, Data: []byte(st.id)}, st.max)
			if !errors.Is(err, st.wantErr) {
				t.Fatalf("Append: err %v, want %v", err, st.wantErr)
			}
			if a.Duplicate != st.wantDup || a.Count != st.count {
				t.Fatalf("Append: %+v, want Duplicate %v Count %d", a, st.wantDup, st.count)
			}
			if err != nil {
				return
			}
			key := st.session + "/" + st.id
			if st.seqOf == "" {
				for k, seq := range seqs {
					if seq == a.StreamSeq {
						t.Fatalf("new envelope got sequence %d, already used by %s", seq, k)
					}
				}
				seqs[key] = a.StreamSeq
			} else if want := seqs[st.session+"/"+st.seqOf]; a.StreamSeq != want {
				t.Fatalf("duplicate reported sequence %d, want %d (the original)", a.StreamSeq, want)
			}
		})
	}
	checkSession(t, s, "s1", map[string]bool{"e1": true, "e2": true, "e3": true})
	checkSession(t, s, "s2", map[string]bool{"e1": true})
}

func TestTwoStoresShareLimit(t *testing.T) {
	const max, goroutines, each = 60, 10, 6
	srv := testServer(t)
	stores := []*Store{open(t, connect(t, srv), Options{}), open(t, connect(t, srv), Options{})}
	ctx := testContext(t)

	var (
		mu      sync.Mutex
		stored  = make(map[string]bool)
		perStor = make([]int, len(stores))
		limited atomic.Int64
		wg      sync.WaitGroup
	)
	for si, s := range stores {
		for g := range goroutines {
			wg.Go(func() {
				for i := range each {
					e := Envelope{ID: fmt.Sprintf("r%d-g%d-%d", si, g, i), Session: "shared", To: recipientA, Data: []byte("x")}
					_, err := s.Append(ctx, e, max)
					switch {
					case errors.Is(err, ErrLimit):
						limited.Add(1)
					case err != nil:
						t.Errorf("store %d: Append %s: %v", si, e.ID, err)
					default:
						mu.Lock()
						stored[e.ID] = true
						perStor[si]++
						mu.Unlock()
					}
				}
			})
		}
	}
	wg.Wait()
	t.Logf("appends stored per store: %v", perStor)
	if total := len(stores) * goroutines * each; len(stored) != max || int(limited.Load()) != total-max {
		t.Fatalf("%d stored and %d limited, want %d and %d", len(stored), limited.Load(), max, total-max)
	}
	checkSession(t, stores[0], "shared", stored)
	checkSession(t, stores[1], "shared", stored)
}

func TestValidation(t *testing.T) {
	s := newStore(t, Options{MaxData: 1024})
	big := newStore(t, Options{}) // default MaxData: what the server accepts
	ctx := testContext(t)
	good := Envelope{ID: "e1", Session: "s1", To: recipientA, Data: []byte("ok")}
	with := func(f func(*Envelope)) Envelope {
		e := good
		f(&e)
		return e
	}
	tests := []struct {
		name  string
		store *Store
		e     Envelope
		want  string // in the error
	}{
		{"empty session", s, with(func(e *Envelope) { e.Session = "" }), "session id"},
		{"dotted session", s, with(func(e *Envelope) { e.Session = "a.b" }), "session id"},
		{"wildcard session", s, with(func(e *Envelope) { e.Session = "a*" }), "session id"},
		{"session with space", s, with(func(e *Envelope) { e.Session = "a b" }), "session id"},
		{"long session", s, with(func(e *Envelope) { e.Session = strings.Repeat("a", 129) }), "session id"},
		{"empty id", s, with(func(e *Envelope) { e.ID = "" }), "empty envelope id"},
		{"id with newline", s, with(func(e *Envelope) { e.ID = "a\r\nNats-Msg-Id: x" }), "envelope id"},
		{"empty recipient", s, with(func(e *Envelope) { e.To = "" }), "recipient"},
		{"recipient with newline", s, with(func(e *Envelope) { e.To = "a\nb" }), "recipient"},
		{"data over MaxData", s, with(func(e *Envelope) { e.Data = make([]byte, 1025) }), "1025 bytes"},
		{"data over 8 MiB", big, with(func(e *Envelope) { e.Data = make([]byte, 8<<20+1) }), "bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.store.Append(ctx, tt.e, 0)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Append: %v, want ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
	if n := streamMsgs(t, s) + streamMsgs(t, big); n != 0 {
		t.Fatalf("%d messages stored after refused appends", n)
	}

	// The limits are inclusive.
	if _, err := s.Append(ctx, with(func(e *Envelope) { e.Data = make([]byte, 1024) }), 0); err != nil {
		t.Fatalf("Append of exactly MaxData: %v", err)
	}
	if _, err := s.Count(ctx, "a.b"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Count with a bad session: %v, want ErrInvalid", err)
	}
	if _, err := s.All(ctx, "a>"); !errors.Is(err, ErrInvalid) {
		t.Errorf("All with a bad session: %v, want ErrInvalid", err)
	}
	if _, err := s.Receiver(ctx, "s1", "a b"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Receiver with a bad recipient: %v, want ErrInvalid", err)
	}
}

func TestOpenOptions(t *testing.T) {
	srv := testServer(t)
	js := connect(t, srv)
	ctx := testContext(t)
	tests := []struct {
		name    string
		opts    Options
		wantErr bool
	}{
		{"defaults", Options{}, false},
		{"own stream", Options{Stream: "Other_1", DuplicateWindow: time.Minute}, false},
		{"dotted stream", Options{Stream: "a.b"}, true},
		{"MaxData above server limit", Options{MaxData: 8 << 20}, true},
		{"replicas without a cluster", Options{Stream: "R3", Replicas: 3}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(ctx, js, tt.opts)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Open: %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			info, err := s.stream.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			cfg := info.Config
			if cfg.Storage != jetstream.FileStorage || cfg.Duplicates != s.opts.DuplicateWindow ||
				cfg.MaxMsgs > 0 || cfg.MaxBytes != DefaultMaxBytes || cfg.Discard != jetstream.DiscardNew || cfg.MaxAge != 0 || cfg.MaxMsgsPerSubject > 0 {
				t.Errorf("stream config %+v: want file storage, duplicate window %v, no limits but %d bytes, discard new", cfg, s.opts.DuplicateWindow, DefaultMaxBytes)
			}
			p := strings.ToLower(s.opts.Stream)
			if want := []string{p + ".*", p + ".*.*"}; !slices.Equal(cfg.Subjects, want) {
				t.Errorf("subjects %v, want %v", cfg.Subjects, want)
			}
		})
	}
}

func TestSessionCacheBounded(t *testing.T) {
	srv := testServer(t)
	js := connect(t, srv)
	s := open(t, js, Options{MaxSessions: 2})
	ctx := testContext(t)
	want := make(map[string]map[string]bool)
	for round := range 3 {
		for i := range 5 {
			session := fmt.Sprintf("s%d", i)
			id := fmt.Sprintf("e%d", round)
			a, err := s.Append(ctx, Envelope{ID: id, Session: session, To: recipientA}, 2)
			if round == 2 {
				if !errors.Is(err, ErrLimit) || a.Count != 2 {
					t.Fatalf("%s: third append: %+v, %v; want ErrLimit at count 2", session, a, err)
				}
				continue
			}
			if err != nil || a.Count != uint64(round+1) {
				t.Fatalf("%s: Append: %+v, %v; want count %d", session, a, err, round+1)
			}
			if want[session] == nil {
				want[session] = make(map[string]bool)
			}
			want[session][id] = true
		}
	}
	s.mu.Lock()
	cached := s.lru.Len()
	s.mu.Unlock()
	if cached > 2 {
		t.Errorf("%d sessions cached, want at most 2", cached)
	}
	s.Forget("s4")
	if _, ok := s.sessions["s4"]; ok {
		t.Error("Forget left the session cached")
	}
	for session, ids := range want {
		checkSession(t, s, session, ids)
	}
}

// Messages on a session subject that this package did not write (no count header) still count.
func TestForeignMessagesCount(t *testing.T) {
	srv := testServer(t)
	js := connect(t, srv)
	s := open(t, js, Options{})
	ctx := testContext(t)
	for range 3 {
		if _, err := js.Publish(ctx, s.prefix+"mixed", []byte("raw")); err != nil {
			t.Fatal(err)
		}
	}
	a, err := s.Append(ctx, Envelope{ID: "e1", Session: "mixed", To: recipientA, Data: []byte("x")}, 5)
	if err != nil || a.Count != 4 {
		t.Fatalf("Append after 3 foreign messages: %+v, %v; want count 4", a, err)
	}
	all, err := s.All(ctx, "mixed")
	if err != nil || len(all) != 4 || !bytes.Equal(all[3].Data, []byte("x")) || all[3].ID != "e1" {
		t.Fatalf("All: %d envelopes, %v", len(all), err)
	}
}

// TestStampedSequenceUnderRace has two stores (as two controllers would) append to one session at once, each
// envelope encoding the position the store gave it. Stored in stream order, the positions read 1, 2, 3, ...
// with no gap or repeat, and each Append reports the position it stamped: the store alone decides it.
func TestStampedSequenceUnderRace(t *testing.T) {
	const goroutines, each = 8, 10
	srv := testServer(t)
	stores := []*Store{open(t, connect(t, srv), Options{}), open(t, connect(t, srv), Options{})}
	ctx := testContext(t)
	var (
		mu       sync.Mutex
		reported = map[string]uint64{}
		wg       sync.WaitGroup
	)
	for si, s := range stores {
		for g := range goroutines {
			wg.Go(func() {
				for i := range each {
					id := fmt.Sprintf("s%d-g%d-%d", si, g, i)
					var stamped atomic.Uint64
					e := Envelope{ID: id, Session: "stamped", To: recipientA, Data: []byte("00000000"),
						Stamp: func(seq uint64) ([]byte, error) {
							stamped.Store(seq)
							return []byte(fmt.Sprintf("%08d", seq)), nil
						}}
					app, err := s.Append(ctx, e, 0)
					if err != nil {
						t.Errorf("Append %s: %v", id, err)
						continue
					}
					if app.Count != stamped.Load() {
						t.Errorf("Append %s reported position %d but stamped %d", id, app.Count, stamped.Load())
					}
					mu.Lock()
					reported[id] = app.Count
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	all, err := stores[0].All(ctx, "stamped")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(stores)*goroutines*each {
		t.Fatalf("%d envelopes stored, want %d", len(all), len(stores)*goroutines*each)
	}
	for i, m := range all {
		want := fmt.Sprintf("%08d", i+1)
		if string(m.Data) != want {
			t.Fatalf("envelope %d in stream order (%s) carries position %s, want %s", i+1, m.ID, m.Data, want)
		}
		if reported[m.ID] != uint64(i+1) {
			t.Fatalf("envelope %s stored at position %d but its Append reported %d", m.ID, i+1, reported[m.ID])
		}
	}
}

func TestStampErrorStoresNothing(t *testing.T) {
	s := newStore(t, Options{MaxData: 64})
	ctx := testContext(t)
	_, err := s.Append(ctx, Envelope{ID: "e1", Session: "bad", To: recipientA, Data: []byte("x"),
		Stamp: func(uint64) ([]byte, error) { return nil, errors.New("cannot encode") }}, 0)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("a failing Stamp: %v, want ErrInvalid", err)
	}
	_, err = s.Append(ctx, Envelope{ID: "e2", Session: "bad", To: recipientA, Data: []byte("x"),
		Stamp: func(uint64) ([]byte, error) { return bytes.Repeat([]byte("y"), 65), nil }}, 0)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("a Stamp larger than MaxData: %v, want ErrInvalid", err)
	}
	checkSession(t, s, "bad", map[string]bool{})
}

// TestStampRefusalRereadsTheSession: a store that last saw the session at position 1, after another store
// appended at 2, offers its next envelope position 2 from memory. A caller that counted the session as it is now
// refuses that position; the store reads the session again and offers 3, where the envelope is stored.
func TestStampRefusalRereadsTheSession(t *testing.T) {
	srv := testServer(t)
	a, b := open(t, connect(t, srv), Options{}), open(t, connect(t, srv), Options{})
	ctx := testContext(t)
	for i, s := range []*Store{a, b} {
		if _, err := s.Append(ctx, Envelope{ID: fmt.Sprintf("e%d", i+1), Session: "moved", To: recipientA, Data: []byte("x")}, 0); err != nil {
			t.Fatal(err)
		}
	}
	var offered []uint64
	app, err := a.Append(ctx, Envelope{ID: "e3", Session: "moved", To: recipientA, Data: []byte("x"),
		Stamp: func(seq uint64) ([]byte, error) {
			offered = append(offered, seq)
			if seq != 3 {
				return nil, fmt.Errorf("position %d, the checks assumed 3", seq)
			}
			return []byte("3"), nil
		}}, 0)
	if err != nil || app.Count != 3 {
		t.Fatalf("Append after another store's: %+v, %v (positions offered %v); want position 3", app, err, offered)
	}
}
