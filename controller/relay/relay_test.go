package relay_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/relay"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/internal/natsd"
	"github.com/umbra-mesh/umbra/workgroups"
)

// The relay runs here on a real embedded JetStream and envelope store, without the overlay: connections are
// net.Pipe ends whose proven identity the test sets.

var (
	td       = spiffeid.RequireTrustDomainFromString("relay.test")
	ctrlID   = spiffeid.RequireFromSegments(td, "umbra", "controller", "api")
	consumer = spiffeid.RequireFromSegments(td, "acme", "agent", "buyer")
	provider = spiffeid.RequireFromSegments(td, "acme", "agent", "seller")
	stranger = spiffeid.RequireFromSegments(td, "evil", "agent", "mallory")
	revoked  = spiffeid.RequireFromSegments(td, "acme", "agent", "gone")
	wgID     = workgroups.WorkgroupID{Org: "acme", Name: "pricing"}
)

const step = 10 * time.Second // the deadline of every network step

// idConn is a connection whose peer identity the test decides.
type idConn struct {
	net.Conn
	id spiffeid.ID
}

func peerIdentity(c net.Conn) (spiffeid.ID, error) {
	if ic, ok := c.(idConn); ok {
		return ic.id, nil
	}
	return spiffeid.ID{}, errors.New("no identity")
}

// chanListener hands the relay the connections the test dials.
type chanListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}
func (l *chanListener) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *chanListener) Addr() net.Addr { return &net.UnixAddr{Name: "relay-test", Net: "unix"} }

type fakeSessions struct {
	mu       sync.Mutex
	byID     map[string]workgroups.Session
	closes   []workgroups.CloseReason
	keepOpen bool // Close records the reason without closing (as if another controller had not yet)
	lock     sync.Mutex
}

func (f *fakeSessions) Get(_ context.Context, id string) (workgroups.Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.byID[id]
	if !ok {
		return s, relay.ErrNoSession
	}
	return s, nil
}

func (f *fakeSessions) Activate(_ context.Context, id string, sender spiffeid.ID, at time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byID[id]
	if s.State != workgroups.StateAccepted {
		return nil
	}
	if err := s.Activate(sender, at); err != nil {
		return err
	}
	f.byID[id] = s
	return nil
}

func (f *fakeSessions) Close(_ context.Context, id string, reason workgroups.CloseReason, detail string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes = append(f.closes, reason)
	if f.keepOpen {
		return nil
	}
	s := f.byID[id]
	if err := s.Close(ctrlID, reason, time.Now().UTC(), detail); err != nil {
		return err
	}
	f.byID[id] = s
	return nil
}

func (f *fakeSessions) Lock(string) func() {
	f.lock.Lock()
	return f.lock.Unlock
}

func (f *fakeSessions) closed() []workgroups.CloseReason {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]workgroups.CloseReason(nil), f.closes...)
}

// gate releases audit records up to a stream sequence the test sets.
type gate struct {
	mu   sync.Mutex
	upTo uint64
	ch   chan struct{}
}

func (g *gate) Wait(ctx context.Context, seq uint64) error {
	for {
		g.mu.Lock()
		upTo, ch := g.upTo, g.ch
		g.mu.Unlock()
		if seq <= upTo {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (g *gate) release(seq uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.upTo = seq
	close(g.ch)
	g.ch = make(chan struct{})
}

type fakeRefusals struct {
	mu   sync.Mutex
	recs []audit.Record
	code []string
}

func (f *fakeRefusals) Refuse(_ context.Context, code string, r audit.Record) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recs, f.code = append(f.recs, r), append(f.code, code)
}

func (f *fakeRefusals) codes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.code...)
}

// members: the parties are active members of the workgroup; cached may lag (stale: nobody is a member yet).
type members struct {
	mu    sync.Mutex
	stale bool
}

func (m *members) of(id spiffeid.ID) []workgroups.Membership {
	if id == consumer || id == provider {
		return []workgroups.Membership{{Workgroup: wgID, Role: workgroups.RoleMember, Active: true}}
	}
	return nil
}

func (m *members) Cached(_ context.Context, id spiffeid.ID) ([]workgroups.Membership, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stale {
		return nil, nil
	}
	return m.of(id), nil
}

func (m *members) Current(_ context.Context, id spiffeid.ID) ([]workgroups.Membership, error) {
	return m.of(id), nil
}

type identities struct{}

func (identities) Usable(_ context.Context, id spiffeid.ID) error {
	if id == revoked {
		return errors.New("revoked")
	}
	return nil
}

// envelopes is the store with its cursors as relay.Cursor.
type envelopes struct{ *envstore.Store }

func (e envelopes) Receiver(ctx context.Context, session, to string) (relay.Cursor, error) {
	c, err := e.Store.Receiver(ctx, session, to)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// fakeBudget refuses the identities marked spent.
type fakeBudget struct {
	mu    sync.Mutex
	spent map[string]bool
}

func (b *fakeBudget) Admit(_ context.Context, sender spiffeid.ID, _, _ string) (string, string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.spent[sender.String()] {
		return api.CodeAuditBudgetExhausted, "audit budget spent", true
	}
	return "", "", false
}

func (b *fakeBudget) spend(id spiffeid.ID) {
	b.mu.Lock()
	b.spent[id.String()] = true
	b.mu.Unlock()
}

type world struct {
	t        *testing.T
	ctx      context.Context
	store    *envstore.Store
	sessions *fakeSessions
	gate     *gate
	refusals *fakeRefusals
	members  *members
	budget   *fakeBudget
	ln       *chanListener
	served   chan error
	stop     context.CancelFunc
}

func newWorld(t *testing.T) *world {
	t.Helper()
	return newTracedWorld(t, nil)
}

// newTracedWorld is newWorld with a relay that traces with tr (none if nil).
func newTracedWorld(t *testing.T, tr trace.Tracer) *world {
	t.Helper()
	ns, err := natsd.Start(natsd.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	nc, err := ns.Connect("relay-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return newWorldOn(t, js, envstore.Options{Stream: "RELAYTEST"}, tr)
}

// newWorldOn is a world whose envelope store is opened on js with opts, its relay tracing with tr (none if nil).
func newWorldOn(t *testing.T, js jetstream.JetStream, opts envstore.Options, tr trace.Tracer) *world {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	store, err := envstore.Open(ctx, js, opts)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, ctx: ctx, store: store, sessions: &fakeSessions{byID: map[string]workgroups.Session{}},
		gate: &gate{upTo: math.MaxUint64, ch: make(chan struct{})}, refusals: &fakeRefusals{}, members: &members{}, budget: &fakeBudget{spent: map[string]bool{}}}
	w.ln, w.served, w.stop = w.serve(store, w.sessions, tr)
	return w
}

// serve starts a relay of the world on store and sessions, with a listener of its own, until the end of the
// test; stop ends its Serve, whose result comes on served.
func (w *world) serve(store *envstore.Store, sessions relay.Sessions, tr trace.Tracer) (ln *chanListener, served chan error, stop context.CancelFunc) {
	t := w.t
	t.Helper()
	ln = &chanListener{conns: make(chan net.Conn), closed: make(chan struct{})}
	served = make(chan error, 1)
	r, err := relay.New(relay.Config{Sessions: sessions, Envelopes: envelopes{store}, Records: w.gate, Refusals: w.refusals,
		Memberships: w.members, Identities: identities{}, Authorizer: mustAuthorizer(t), PeerIdentity: peerIdentity, Budget: w.budget,
		Controller: ctrlID, RecordTimeout: 500 * time.Millisecond, Tracer: tr})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(w.ctx)
	go func() { served <- r.Serve(sctx, ln) }()
	t.Cleanup(func() {
		stop()
		select {
		case <-served:
		case <-time.After(step):
			t.Error("Serve did not return after its context ended")
		}
	})
	return ln, served, stop
}

func mustAuthorizer(t *testing.T) *workgroups.Authorizer {
	t.Helper()
	a, err := workgroups.NewAuthorizer()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// session adds a session between consumer and provider, accepted now with contract c.
func (w *world) session(c workgroups.Contract) workgroups.Session {
	w.t.Helper()
	id, err := workgroups.NewSessionID(rand.Reader)
	if err != nil {
		w.t.Fatal(err)
	}
	now := time.Now().UTC()
	s := workgroups.Session{ID: id, Consumer: consumer, Provider: provider, Workgroup: wgID, Contract: c,
		State: workgroups.StateAccepted, AcceptedAt: now,
		History: []workgroups.Transition{{From: workgroups.StateProposed, To: workgroups.StateAccepted, Actor: ctrlID, At: now}}}
	w.sessions.mu.Lock()
	w.sessions.byID[id.String()] = s
	w.sessions.mu.Unlock()
	return s
}

func contract() workgroups.Contract {
	return workgroups.Contract{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 100,
		AllowedMessageTypes: []string{"quote.*"}, MaxEnvelopeBytes: 1024}
}

// client is one relay connection of the test.
type client struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

// dial opens a relay connection proven as id and says hello.
func (w *world) dial(id spiffeid.ID, hello api.RelayHello) *client {
	w.t.Helper()
	return w.dialVia(w.ln, id, hello)
}

// dialVia is dial to the relay listening on ln.
func (w *world) dialVia(ln *chanListener, id spiffeid.ID, hello api.RelayHello) *client {
	w.t.Helper()
	mine, theirs := net.Pipe()
	select {
	case ln.conns <- idConn{Conn: theirs, id: id}:
	case <-time.After(step):
		w.t.Fatal("the relay did not accept")
	}
	c := &client{t: w.t, conn: mine, r: bufio.NewReader(mine)}
	w.t.Cleanup(func() { mine.Close() })
	if hello.Mode != "" {
		c.writeLine(hello)
	}
	return c
}

func (c *client) writeLine(v any) {
	c.t.Helper()
	b, _ := json.Marshal(v)
	_ = c.conn.SetWriteDeadline(time.Now().Add(step))
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) readAck() api.RelayAck {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(step))
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		c.t.Fatalf("reading an ack: %v", err)
	}
	var ack api.RelayAck
	if err := json.Unmarshal(line, &ack); err != nil {
		c.t.Fatalf("ack %q: %v", line, err)
	}
	return ack
}

func header(s workgroups.Session, from, to spiffeid.ID, typ string, payload []byte) workgroups.Header {
	id, _ := workgroups.NewEnvelopeID(rand.Reader)
	return workgroups.Header{ID: id, Session: s.ID, From: from, To: to, Type: typ, Time: time.Now().UTC(),
		ContentType: "application/json"}.WithPayload(payload)
}

// send writes one frame and reads its ack.
func (c *client) send(h workgroups.Header, payload []byte) api.RelayAck {
	c.t.Helper()
	frame, err := workgroups.AppendFrame(nil, h, payload)
	if err != nil {
		c.t.Fatal(err)
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(step))
	if _, err := c.conn.Write(frame); err != nil {
		c.t.Fatal(err)
	}
	return c.readAck()
}

// next reads one delivered envelope within d; ok false if none came.
func (c *client) next(d time.Duration) (workgroups.Header, bool) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(d))
	h, _, err := workgroups.DecodeFrame(c.r, relay.FrameLimits)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return h, false
	}
	if err != nil {
		c.t.Fatalf("reading a delivered envelope: %v", err)
	}
	return h, true
}

func (w *world) stored(s workgroups.Session) []workgroups.Header {
	w.t.Helper()
	msgs, err := w.store.All(w.ctx, s.ID.String())
	if err != nil {
		w.t.Fatal(err)
	}
	var out []workgroups.Header
	for _, m := range msgs {
		h, _, err := workgroups.DecodeFrame(bytes.NewReader(m.Data), relay.FrameLimits)
		if err != nil {
			w.t.Fatal(err)
		}
		out = append(out, h)
	}
	return out
}

func TestSendIsStoredAndAcknowledgedWithItsPosition(t *testing.T) {
	w := newWorld(t)
	s := w.session(contract())
	c := w.dial(consumer, api.RelayHello{Mode: "send"})
	payload := []byte(`{"q":1}`)
	for want := uint64(1); want <= 3; want++ {
		ack := c.send(header(s, consumer, provider, "quote.request", payload), payload)
		if !ack.OK || ack.Seq != want || ack.Duplicate {
			t.Fatalf("envelope %d: ack %+v", want, ack)
		}
	}
	got := w.stored(s)
	if len(got) != 3 {
		t.Fatalf("%d envelopes stored, want 3", len(got))
	}
	for i, h := range got {
		if h.Seq != uint64(i+1) || h.From != consumer {
			t.Fatalf("stored envelope %d: seq %d from %s", i, h.Seq, h.From)
		}
	}
	if st, _ := w.sessions.Get(w.ctx, s.ID.String()); st.State != workgroups.StateActive {
		t.Fatalf("session %s after its first envelope, want active", st.State)
	}
}

func TestSpentAuditBudgetRefusesOnlyItsSender(t *testing.T) {
	w := newWorld(t)
	s := w.session(contract())
	c := w.dial(consumer, api.RelayHello{Mode: "send"})
	payload := []byte(`{"q":1}`)
	if ack := c.send(header(s, consumer, provider, "quote.request", payload), payload); !ack.OK {
		t.Fatalf("first envelope: %+v", ack)
	}
	w.budget.spend(consumer)
	if ack := c.send(header(s, consumer, provider, "quote.request", payload), payload); ack.OK || ack.Code != api.CodeAuditBudgetExhausted {
		t.Fatalf("envelope over the budget: %+v", ack)
	}
	p := w.dial(provider, api.RelayHello{Mode: "send"})
	if ack := p.send(header(s, provider, consumer, "quote.response", payload), payload); !ack.OK || ack.Seq != 2 {
		t.Fatalf("the provider's envelope: %+v", ack)
	}
	if got := w.stored(s); len(got) != 2 {
		t.Fatalf("%d envelopes stored, want 2 (the refused one is not)", len(got))
	}
}

func TestDuplicateIsAnsweredWithTheOriginalPosition(t *testing.T) {
	w := newWorld(t)
	s := w.session(contract())
	c := w.dial(consumer, api.RelayHello{Mode: "send"})
	payload := []byte(`{}`)
	first := header(s, consumer, provider, "quote.request", payload)
	if ack := c.send(first, payload); !ack.OK || ack.Seq != 1 {
		t.Fatalf("first: %+v", ack)
	}
	if ack := c.send(header(s, consumer, provider, "quote.request", payload), payload); !ack.OK || ack.Seq != 2 {
		t.Fatalf("second: %+v", ack)
	}
	// The retry comes on a new connection, as after a broken one.
	again := w.dial(consumer, api.RelayHello{Mode: "send"})
	ack := again.send(first, payload)
	if !ack.OK || !ack.Duplicate || ack.Seq != 1 || ack.Code != api.CodeDuplicate {
		t.Fatalf("replay: %+v, want a duplicate at 1", ack)
	}
	if n := len(w.stored(s)); n != 2 {
		t.Fatalf("%d envelopes stored after a replay, want 2", n)
	}
	if codes := w.refusals.codes(); len(codes) != 1 || codes[0] != api.CodeDuplicate {
		t.Fatalf("refusals recorded %v, want one duplicate", codes)
	}
}

func TestContractViolationsAreRefusedAndRecorded(t *testing.T) {
	w := newWorld(t)
	small := []byte(`{}`)
	big := bytes.Repeat([]byte("x"), 2048)
	for _, tc := range []struct {
		name    string
		prepare func(c workgroups.Contract) workgroups.Contract
		typ     string
		payload []byte
		from    spiffeid.ID
		want    workgroups.ViolationCode
	}{
		{"type", nil, "order.place", small, consumer, workgroups.ViolationTypeNotAllowed},
		{"size", nil, "quote.request", big, consumer, workgroups.ViolationTooLarge},
		{"non-party", nil, "quote.request", small, stranger, workgroups.ViolationNotParty},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := w.session(contract())
			c := w.dial(tc.from, api.RelayHello{Mode: "send"})
			ack := c.send(header(s, tc.from, provider, tc.typ, tc.payload), tc.payload)
			if ack.OK || ack.Code != string(tc.want) {
				t.Fatalf("ack %+v, want %s", ack, tc.want)
			}
			if n := len(w.stored(s)); n != 0 {
				t.Fatalf("%d envelopes stored", n)
			}
		})
	}
	t.Run("count", func(t *testing.T) {
		c2 := contract()
		c2.MaxMessages = 2
		s := w.session(c2)
		w.sessions.keepOpen = true // the limit must hold even if the session is not closed in time
		defer func() { w.sessions.keepOpen = false }()
		c := w.dial(consumer, api.RelayHello{Mode: "send"})
		for i := 1; i <= 2; i++ {
			if ack := c.send(header(s, consumer, provider, "quote.request", small), small); !ack.OK {
				t.Fatalf("envelope %d: %+v", i, ack)
			}
		}
		if got := w.sessions.closed(); len(got) == 0 || got[len(got)-1] != workgroups.CloseMaxMessages {
			t.Fatalf("closes %v, want max_messages at the limit", got)
		}
		ack := c.send(header(s, consumer, provider, "quote.request", small), small)
		if ack.OK || ack.Code != string(workgroups.ViolationMaxMessages) {
			t.Fatalf("past the limit: %+v", ack)
		}
		if n := len(w.stored(s)); n != 2 {
			t.Fatalf("%d stored, want 2", n)
		}
	})
	t.Run("expiry", func(t *testing.T) {
		s := w.session(contract())
		s.AcceptedAt = time.Now().Add(-2 * time.Hour)
		w.sessions.mu.Lock()
		w.sessions.byID[s.ID.String()] = s
		w.sessions.mu.Unlock()
		c := w.dial(consumer, api.RelayHello{Mode: "send"})
		ack := c.send(header(s, consumer, provider, "quote.request", small), small)
		if ack.OK || ack.Code != string(workgroups.ViolationExpired) {
			t.Fatalf("ack %+v, want expired", ack)
		}
		if got := w.sessions.closed(); got[len(got)-1] != workgroups.CloseExpired {
			t.Fatalf("closes %v, want expired", got)
		}
		// Closed now: the next envelope is refused as such.
		if ack := c.send(header(s, consumer, provider, "quote.request", small), small); ack.Code != string(workgroups.ViolationSessionClosed) {
			t.Fatalf("after the close: %+v", ack)
		}
	})
	codes := w.refusals.codes()
	if len(codes) < 6 {
		t.Fatalf("refusals recorded %v, want every refusal", codes)
	}
}

func TestPositionComesFromTheStoreWhenAnotherWriterAppended(t *testing.T) {
	w := newWorld(t)
	s := w.session(contract())
	c := w.dial(consumer, api.RelayHello{Mode: "send"})
	payload := []byte(`{}`)
	if ack := c.send(header(s, consumer, provider, "quote.request", payload), payload); ack.Seq != 1 {
		t.Fatalf("first: %+v", ack)
	}
	// Another controller (here: the store directly) appends between this connection's envelopes.
	other := header(s, provider, consumer, "quote.offer", payload)
	other.Seq = 2
	frame, _ := workgroups.AppendFrame(nil, other, payload)
	if _, err := w.store.Append(w.ctx, envstore.Envelope{ID: other.ID.String(), Session: s.ID.String(), To: consumer.String(), Data: frame}, 0); err != nil {
		t.Fatal(err)
	}
	ack := c.send(header(s, consumer, provider, "quote.request", payload), payload)
	if !ack.OK || ack.Seq != 3 {
		t.Fatalf("after another writer: %+v, want position 3", ack)
	}
	got := w.stored(s)
	if len(got) != 3 || got[2].Seq != 3 {
		t.Fatalf("stored %d, last at %d; want 3 at 3", len(got), got[len(got)-1].Seq)
	}
}

func TestMembershipCacheLagDoesNotRefuse(t *testing.T) {
	w := newWorld(t)
	s := w.session(contract())
	w.members.mu.Lock()
	w.members.stale = true
	w.members.mu.Unlock()
	c := w.dial(consumer, api.RelayHello{Mode: "send"})
	payload := []byte(`{}`)
	if ack := c.send(header(s, consumer, provider, "quote.request", payload), payload); !ack.OK {
		t.Fatalf("a membership the cache has not seen yet was refused: %+v", ack)
	}
}

func TestMalformedFrameHangsUp(t *testing.T) {
	w := newWorld(t)
	c := w.dial(consumer, api.RelayHello{Mode: "send"})
	_ = c.conn.SetWriteDeadline(time.Now().Add(step))
	if _, err := c.conn.Write([]byte("this is not a frame\n")); err != nil {
		t.Fatal(err)
	}
	if ack := c.readAck(); ack.Code != api.CodeMalformedFrame {
		t.Fatalf("ack %+v, want malformed_frame", ack)
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(step))
	if _, err := c.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after a malformed frame the connection stays open: %v", err)
	}
	if codes := w.refusals.codes(); len(codes) != 1 || codes[0] != api.CodeMalformedFrame {
		t.Fatalf("refusals %v", codes)
	}
}

func TestRevokedIdentityIsHungUpOn(t *testing.T) {
	w := newWorld(t)
	c := w.dial(revoked, api.RelayHello{}) // hung up on before its hello
	_ = c.conn.SetReadDeadline(time.Now().Add(step))
	if _, err := c.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("a revoked identity was served: %v", err)
	}
}

func TestDeliveryWaitsForTheRecordAndForTheReceipt(t *testing.T) {
	w := newWorld(t)
	s := w.session(contract())
	w.gate.release(0) // no audit record is written until the test says so
	c := w.dial(consumer, api.RelayHello{Mode: "send"})
	payload := []byte(`{}`)
	ack := c.send(header(s, consumer, provider, "quote.request", payload), payload)
	if ack.OK || ack.Code != api.CodeInternal {
		t.Fatalf("acknowledged before its record: %+v", ack)
	}
	if n := len(w.stored(s)); n != 1 {
		t.Fatalf("%d stored, want 1 (stored, not yet recorded)", n)
	}
	r := w.dial(provider, api.RelayHello{Mode: "recv", Session: s.ID.String()})
	if ok := r.readAck(); !ok.OK {
		t.Fatalf("recv hello: %+v", ok)
	}
	if h, ok := r.next(300 * time.Millisecond); ok {
		t.Fatalf("delivered before its audit record: %+v", h)
	}
	w.gate.release(math.MaxUint64)
	first, ok := r.next(step)
	if !ok || first.Seq != 1 {
		t.Fatalf("after the record: %+v %v", first, ok)
	}
	// The retry is a duplicate now acknowledged with the original's position.
	if ack := c.send(first, payload); !ack.OK || !ack.Duplicate || ack.Seq != 1 {
		t.Fatalf("retry: %+v", ack)
	}
	if ack := c.send(header(s, consumer, provider, "quote.request", payload), payload); !ack.OK || ack.Seq != 2 {
		t.Fatalf("second: %+v", ack)
	}
	// Without a receipt nothing more comes, and a new connection gets the first again.
	if h, ok := r.next(300 * time.Millisecond); ok {
		t.Fatalf("envelope %d delivered before the receipt of 1", h.Seq)
	}
	r.conn.Close()
	r = w.dial(provider, api.RelayHello{Mode: "recv", Session: s.ID.String()})
	r.readAck()
	if h, ok := r.next(step); !ok || h.Seq != 1 {
		t.Fatalf("unconfirmed envelope not delivered again: %+v %v", h, ok)
	}
	r.writeLine(api.RelayReceipt{Seq: 1})
	if h, ok := r.next(step); !ok || h.Seq != 2 {
		t.Fatalf("after the receipt: %+v %v", h, ok)
	}
	// The receipt was acknowledged to the store: a new connection starts at 2.
	r.conn.Close()
	r = w.dial(provider, api.RelayHello{Mode: "recv", Session: s.ID.String()})
	r.readAck()
	if h, ok := r.next(step); !ok || h.Seq != 2 {
		t.Fatalf("after reconnecting: %+v %v, want 2", h, ok)
	}
}

func TestNonPartyCannotReceive(t *testing.T) {
	w := newWorld(t)
	s := w.session(contract())
	c := w.dial(consumer, api.RelayHello{Mode: "send"})
	payload := []byte(`{}`)
	if ack := c.send(header(s, consumer, provider, "quote.request", payload), payload); !ack.OK {
		t.Fatal(ack)
	}
	for name, hello := range map[string]api.RelayHello{
		"stranger":   {Mode: "recv", Session: s.ID.String()},
		"no session": {Mode: "recv", Session: "not-a-session"},
	} {
		r := w.dial(stranger, hello)
		if ack := r.readAck(); ack.OK || ack.Code != api.CodeNotFound {
			t.Fatalf("%s: %+v, want not_found", name, ack)
		}
	}
}

func TestServeClosesConnectionsWhenItsContextEnds(t *testing.T) {
	w := newWorld(t)
	s := w.session(contract())
	r := w.dial(provider, api.RelayHello{Mode: "recv", Session: s.ID.String()})
	r.readAck()
	c := w.dial(consumer, api.RelayHello{Mode: "send"})
	w.stop()
	select {
	case err := <-w.served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
		w.served <- nil // for the cleanup
	case <-time.After(step):
		t.Fatal("Serve did not return")
	}
	for _, cl := range []*client{r, c} {
		_ = cl.conn.SetReadDeadline(time.Now().Add(step))
		if _, err := cl.r.ReadByte(); !errors.Is(err, io.EOF) {
			t.Fatalf("connection still open after Serve returned: %v", err)
		}
	}
}
