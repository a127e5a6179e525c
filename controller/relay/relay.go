package relay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/workgroups"
)

// FrameLimits bound what the relay reads of a frame before any contract is consulted.
var FrameLimits = workgroups.FrameLimits{MaxHeaderBytes: 16 << 10, MaxPayloadBytes: 4 << 20}

// ErrNoSession is what Sessions answers for a session that does not exist.
var ErrNoSession = errors.New("relay: no such session")

// Sessions is the session table as the relay uses it.
type Sessions interface {
	// Get reads the session as the store holds it now; ErrNoSession if there is none.
	Get(ctx context.Context, id string) (workgroups.Session, error)
	// Activate records that the session's first envelope was appended by sender at time at (accepted → active).
	Activate(ctx context.Context, id string, sender spiffeid.ID, at time.Time) error
	// Close closes the session as the controller, recording reason and detail.
	Close(ctx context.Context, id string, reason workgroups.CloseReason, detail string) error
	// Lock serialises work on one session with everything else that changes it (closes, expiry).
	Lock(id string) (unlock func())
}

// Envelopes is the envelope store (internal/envstore).
type Envelopes interface {
	Count(ctx context.Context, session string) (uint64, error)
	Append(ctx context.Context, e envstore.Envelope, max uint64) (envstore.Appended, error)
	Get(ctx context.Context, streamSeq uint64) (envstore.Msg, error)
	Receiver(ctx context.Context, session, to string) (Cursor, error)
}

// Cursor hands one recipient its envelopes of one session, in order (envstore.Receiver).
type Cursor interface {
	Next(ctx context.Context) (envstore.Msg, error)
	// InProgress restarts the wait after which the store hands m out again (it is still on its way): another
	// relay gets it then only if this one is gone.
	InProgress(m envstore.Msg) error
	Ack(m envstore.Msg) error
	Close() error
}

// RecordGate tells when an envelope's audit record is durable.
type RecordGate interface {
	// Wait returns once the envelope at stream sequence streamSeq has its audit record, or with ctx's error.
	Wait(ctx context.Context, streamSeq uint64) error
}

// Refusals records refused envelopes (subject to a per-identity rate limit the implementation applies).
type Refusals interface {
	Refuse(ctx context.Context, code string, r audit.Record)
}

// Budget tells whether an identity may still cause audit records (the controller's audit bytes per identity
// and day).
type Budget interface {
	// Admit tells whether sender may send the envelope id of session; if not, the code and one-line message to
	// answer with. It records the refusal itself.
	Admit(ctx context.Context, sender spiffeid.ID, session, id string) (code, msg string, refused bool)
}

// Memberships tells which workgroups an identity belongs to.
type Memberships interface {
	// Cached may answer from a copy that lags the store by a moment.
	Cached(ctx context.Context, id spiffeid.ID) ([]workgroups.Membership, error)
	// Current reads the store.
	Current(ctx context.Context, id spiffeid.ID) ([]workgroups.Membership, error)
}

// Identities tells whether an identity may use the relay at all.
type Identities interface {
	// Usable returns nil for an enrolled identity that is not revoked.
	Usable(ctx context.Context, id spiffeid.ID) error
}

// Authorizer is the policy decision point (workgroups.Authorizer).
type Authorizer interface {
	Decide(req workgroups.Request) workgroups.Decision
}

// Observer is told what the relay did, for metrics. Its methods are called on connection goroutines, once per
// event, and must return at once.
type Observer interface {
	// Appended: the envelope store took d to append an envelope (or to find its id already recorded).
	Appended(d time.Duration)
	// Answered: a sender's frame was answered with ack, d after the frame was read (whether or not the ack
	// reached the sender).
	Answered(ack api.RelayAck, d time.Duration)
	// Delivered: a recipient confirmed an envelope.
	Delivered()
}

// noObserver is the Observer when Config names none.
type noObserver struct{}

func (noObserver) Appended(time.Duration)               {}
func (noObserver) Answered(api.RelayAck, time.Duration) {}
func (noObserver) Delivered()                           {}

// Config wires a Relay. Every interface is required, except Observer.
type Config struct {
	Sessions    Sessions
	Envelopes   Envelopes
	Records     RecordGate
	Refusals    Refusals
	Memberships Memberships
	Identities  Identities
	Authorizer  Authorizer
	// Budget, if set, is asked before each envelope is appended; a refused envelope is not stored. Default: none.
	Budget Budget
	// PeerIdentity returns the SPIFFE ID a connection proved (agentsdk.PeerIdentity in production). Required.
	PeerIdentity func(net.Conn) (spiffeid.ID, error)
	// Controller is the identity sessions are closed by, on expiry and at their message limit. Required.
	Controller spiffeid.ID
	// RecordTimeout bounds how long an envelope waits for its audit record before the sender is told to send it
	// again. Default 10 s.
	RecordTimeout time.Duration
	// HelloTimeout bounds the wait for a connection's first line. Default 10 s.
	HelloTimeout time.Duration
	// IdleTimeout closes a send connection that sent nothing for this long. Default 5 minutes.
	IdleTimeout time.Duration
	// Observer is told what the relay did. Default: nobody.
	Observer Observer
	// Tracer records a span umbra.relay.envelope per envelope, a child of the sender's span named by the
	// envelope's traceparent. Default: no tracing.
	Tracer trace.Tracer
	// Logger receives what operators must see. Default: discard.
	Logger *slog.Logger
}

// Relay serves the relay protocol. Create it with New.
type Relay struct {
	cfg Config
	log *slog.Logger
	// tracing is whether Config named a Tracer: without one the hot path starts no span at all.
	tracing bool
}

// maxLine bounds a hello or receipt line.
const maxLine = 4 << 10

// New checks cfg and returns a Relay.
func New(cfg Config) (*Relay, error) {
	if cfg.Sessions == nil || cfg.Envelopes == nil || cfg.Records == nil || cfg.Refusals == nil || cfg.Memberships == nil ||
		cfg.Identities == nil || cfg.Authorizer == nil || cfg.PeerIdentity == nil || cfg.Controller.IsZero() {
		return nil, errors.New("relay: Config needs Sessions, Envelopes, Records, Refusals, Memberships, Identities, Authorizer, PeerIdentity and Controller")
	}
	if cfg.RecordTimeout <= 0 {
		cfg.RecordTimeout = 10 * time.Second
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	tracing := cfg.Tracer != nil
	if !tracing {
		cfg.Tracer = noop.NewTracerProvider().Tracer("")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Relay{cfg: cfg, log: cfg.Logger, tracing: tracing}, nil
}

// Serve accepts connections on ln until ctx ends or ln fails, serving each on a goroutine of its own. When ctx
// ends it closes ln and every open connection, and returns only once every connection goroutine has ended.
func (r *Relay) Serve(ctx context.Context, ln net.Listener) error {
	var conns sync.WaitGroup
	defer conns.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("relay: accept: %w", err)
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			r.ServeConn(ctx, conn)
		}()
	}
}

// ServeConn serves one connection until the peer hangs up, the protocol is broken or ctx ends, and closes it.
func (r *Relay) ServeConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := r.serve(ctx, conn); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
		r.log.Debug("relay connection ended", "err", err)
	}
}

func (r *Relay) serve(ctx context.Context, conn net.Conn) error {
	peer, err := r.cfg.PeerIdentity(conn)
	if err != nil {
		return err
	}
	if err := r.cfg.Identities.Usable(ctx, peer); err != nil {
		return fmt.Errorf("relay: %s is not a usable identity: %w", peer, err)
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	_ = conn.SetReadDeadline(time.Now().Add(r.cfg.HelloTimeout))
	line, err := readLine(br)
	if err != nil {
		return err
	}
	var hello api.RelayHello
	if err := strict(line, &hello); err != nil {
		return writeJSONLine(conn, api.RelayAck{Code: api.CodeMalformedFrame, Error: "malformed hello"})
	}
	switch hello.Mode {
	case "send":
		return r.send(ctx, conn, br, peer)
	case "recv":
		return r.recv(ctx, conn, br, peer, hello.Session)
	}
	return writeJSONLine(conn, api.RelayAck{Code: api.CodeMalformedFrame, Error: "mode must be send or recv"})
}

func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxLine {
		return nil, errors.New("line too long")
	}
	return line, err
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// strict decodes one JSON value with no unknown fields and nothing after it.
func strict(line []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

func jsonRaw(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	return b
}

func decisionRecord(d workgroups.Decision) (string, json.RawMessage) {
	if d.Allow {
		return audit.DecisionAllow, jsonRaw(d.Diagnostic)
	}
	return audit.DecisionDeny, jsonRaw(d.Diagnostic)
}
