package agentsdk

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// RelayError is an envelope the relay refused: a stable code (a contract violation such as max_messages,
// type_not_allowed, expired, envelope_too_large, sender_forged, session_closed; or policy_denied,
// malformed_frame) and a message.
type RelayError struct {
	Code    string
	Message string
}

func (e *RelayError) Error() string { return e.Code + ": " + e.Message }

// Is makes errors.Is(err, ErrContractViolation) true for every refusal under the contract or policy, and
// errors.Is(err, ErrSessionClosed) true for a refusal because the session is closed.
func (e *RelayError) Is(target error) bool {
	return target == ErrContractViolation || target == ErrSessionClosed && e.Code == string(workgroups.ViolationSessionClosed)
}

// Envelope is one message received in a session.
type Envelope struct {
	Header  workgroups.Header
	Payload []byte
}

// Session is this agent's handle on one A2A session. Send and Receive are safe for concurrent use.
type Session struct {
	a    *Agent
	info workgroups.Session

	sendMu sync.Mutex
	send   *relayConn

	recvMu sync.Mutex
	recv   *relayConn
	seen   map[workgroups.EnvelopeID]bool
}

func (a *Agent) newSession(s workgroups.Session) *Session {
	return &Session{a: a, info: s, seen: map[workgroups.EnvelopeID]bool{}}
}

// ID returns the session ID.
func (s *Session) ID() workgroups.SessionID { return s.info.ID }

// Info returns the session as last seen (state, contract, parties).
func (s *Session) Info() workgroups.Session { return s.info }

// Peer returns the other party.
func (s *Session) Peer() spiffeid.ID {
	p, _ := s.info.Peer(s.a.ID())
	return p
}

// Refresh reloads the session from the controller.
func (s *Session) Refresh(ctx context.Context) (api.SessionView, error) {
	var out api.SessionView
	if err := s.a.Controller().get(ctx, api.PathSessions+"/"+s.info.ID.String(), &out); err != nil {
		return out, fmt.Errorf("agentsdk: session %s: %w", s.info.ID, err)
	}
	s.info = out.Session
	return out, nil
}

// Close closes the session, recording reason; the controller records who closed it.
func (s *Session) Close(ctx context.Context, reason string) error {
	v, err := s.a.sessionAction(ctx, s.info.ID, "close", reason)
	if err != nil {
		return fmt.Errorf("agentsdk: close session %s: %w", s.info.ID, err)
	}
	s.info = v.Session
	s.sendMu.Lock()
	if s.send != nil {
		s.send.Close()
		s.send = nil
	}
	s.sendMu.Unlock()
	return nil
}

// SendOption varies Send.
type SendOption func(*workgroups.Header)

// WithContentType sets the payload's content type (default application/json).
func WithContentType(ct string) SendOption { return func(h *workgroups.Header) { h.ContentType = ct } }

// WithCorrelationID ties this envelope to an earlier one (a reply to a request).
func WithCorrelationID(id string) SendOption {
	return func(h *workgroups.Header) { h.CorrelationID = id }
}

// WithIntent declares the purpose of this envelope (by default the session's own intent, as its proposal
// declared it). Policies see it as context.intent; a contract with require_intent refuses envelopes without one.
func WithIntent(purpose, category string) SendOption {
	return func(h *workgroups.Header) { h.Intent = &workgroups.Intent{Purpose: purpose, Category: category} }
}

// Send sends one envelope to the other party through the relay and returns its sequence number in the session
// once the relay has recorded it durably. A refusal is a *RelayError (errors.Is ErrContractViolation). If the
// connection breaks before the answer, or the relay answers that it failed inside (code internal, as while a
// controller of a cluster fails over), Send retries with the same envelope ID, which the relay never records
// twice; the latter for up to 30 s. Send returns by ctx's deadline with an error wrapping ctx.Err(). The envelope declares the session's intent, if
// its proposal declared one (see WithIntent).
func (s *Session) Send(ctx context.Context, msgType string, payload []byte, opts ...SendOption) (uint64, error) {
	id, err := workgroups.NewEnvelopeID(rand.Reader)
	if err != nil {
		return 0, err
	}
	peer, ok := s.info.Peer(s.a.ID())
	if !ok {
		return 0, fmt.Errorf("agentsdk: send: %s is not a party of session %s", s.a.ID(), s.info.ID)
	}
	h := workgroups.Header{ID: id, Session: s.info.ID, From: s.a.ID(), To: peer, Type: msgType, Time: time.Now().UTC(),
		ContentType: "application/json", Intent: s.info.Intent}
	for _, o := range opts {
		o(&h)
	}
	return s.SendEnvelope(ctx, h.WithPayload(payload), payload)
}

// SendEnvelope sends a prepared envelope (its ID is kept: resending one is how a retry looks to the relay).
// With WithTracerProvider its header carries the traceparent of the send's span, replacing any it had.
func (s *Session) SendEnvelope(ctx context.Context, h workgroups.Header, payload []byte) (uint64, error) {
	h, span := s.a.tracer.startSend(ctx, h)
	seq, err := s.sendEnvelope(ctx, h, payload)
	endSend(span, seq, err)
	return seq, err
}

const (
	// internalRetry bounds how long a send keeps resending an envelope the relay failed inside; internalPause
	// and maxInternalPause are the first and the longest pause between two tries. Long enough for a cluster to
	// replace a controller that died (its stream leaders, the audit recorder's lease).
	internalRetry    = 30 * time.Second
	internalPause    = 200 * time.Millisecond
	maxInternalPause = 2 * time.Second
)

// sendEnvelope sends the envelope; an answer that the relay failed inside (code internal: a store or the audit
// trail did not answer in time, as while a controller of a cluster fails over) is followed by the same envelope
// again, with growing pauses, for up to internalRetry or until ctx ends. Resending is safe: the relay accepts an
// envelope id once per session and answers a copy of a stored one with the original's sequence number.
func (s *Session) sendEnvelope(ctx context.Context, h workgroups.Header, payload []byte) (uint64, error) {
	frame, err := workgroups.AppendFrame(nil, h, payload)
	if err != nil {
		return 0, fmt.Errorf("agentsdk: send: %w", err)
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	giveUp := time.Now().Add(internalRetry)
	for pause := internalPause; ; pause = min(2*pause, maxInternalPause) {
		seq, err := s.sendFrame(ctx, h, frame)
		var re *RelayError
		if err == nil || !errors.As(err, &re) || re.Code != api.CodeInternal || time.Now().Add(pause).After(giveUp) {
			return seq, err
		}
		s.a.opts.log.Debug("the relay failed inside; sending the envelope again", "session", s.info.ID.String(), "envelope", h.ID.String(), "err", err)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("agentsdk: send %s: %w", h.Type, ctxError(ctx, err))
		case <-t.C:
		}
	}
}

// sendFrame sends one envelope frame and returns the relay's answer, opening the relay connection again (up to
// three tries) when it fails.
func (s *Session) sendFrame(ctx context.Context, h workgroups.Header, frame []byte) (uint64, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("agentsdk: send %s: %w", h.Type, ctxError(ctx, lastErr))
		}
		if s.send == nil {
			if s.send, lastErr = s.a.openRelay(ctx, api.RelayHello{Mode: "send"}); lastErr != nil {
				s.a.opts.log.Debug("opening the relay failed", "session", s.info.ID.String(), "attempt", attempt, "err", lastErr)
				continue
			}
		}
		var ack api.RelayAck
		if lastErr = s.send.roundTrip(ctx, frame, &ack); lastErr != nil {
			s.a.opts.log.Debug("relay send failed", "session", s.info.ID.String(), "attempt", attempt, "err", lastErr)
			s.send.Close()
			s.send = nil
			continue
		}
		if !ack.OK {
			return 0, fmt.Errorf("agentsdk: send %s: %w", h.Type, &RelayError{Code: ack.Code, Message: ack.Error})
		}
		return ack.Seq, nil
	}
	if ctx.Err() != nil {
		lastErr = ctxError(ctx, lastErr)
	}
	return 0, fmt.Errorf("agentsdk: send %s: %w", h.Type, lastErr)
}

// Receive returns the next envelope addressed to this agent in the session, in order. Delivery is at least
// once; Receive drops an envelope it has already returned, so the application sees each envelope once per
// Session handle. It blocks until an envelope arrives or ctx ends, and then returns an error wrapping ctx.Err().
func (s *Session) Receive(ctx context.Context) (Envelope, error) {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	for {
		if s.recv == nil {
			c, err := s.a.openRelay(ctx, api.RelayHello{Mode: "recv", Session: s.info.ID.String()})
			if err != nil {
				return Envelope{}, fmt.Errorf("agentsdk: receive: %w", err)
			}
			var ok api.RelayAck
			if err := c.readLine(ctx, &ok); err != nil || !ok.OK {
				c.Close()
				switch {
				case err == nil:
					err = &RelayError{Code: ok.Code, Message: ok.Error}
				case ctx.Err() != nil:
					err = ctxError(ctx, err)
				}
				return Envelope{}, fmt.Errorf("agentsdk: receive: %w", err)
			}
			s.recv = c
		}
		env, err := s.recv.readFrame(ctx)
		if err == nil {
			err = s.recv.writeReceipt(ctx, env.Header.Seq)
		}
		if err != nil {
			s.recv.Close()
			s.recv = nil
			if ctx.Err() != nil {
				return Envelope{}, fmt.Errorf("agentsdk: receive: %w", ctxError(ctx, err))
			}
			if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
				return Envelope{}, fmt.Errorf("agentsdk: receive: %w", context.DeadlineExceeded)
			}
			return Envelope{}, fmt.Errorf("agentsdk: receive: %w", err)
		}
		if s.seen[env.Header.ID] {
			continue
		}
		s.seen[env.Header.ID] = true
		s.a.tracer.received(ctx, env)
		return env, nil
	}
}

// Handler answers one envelope; a non-nil reply is sent back with the request's ID as correlation ID.
type Handler func(ctx context.Context, s *Session, in Envelope) (replyType string, reply []byte, err error)

// Serve receives, as provider, on every accepted or active session of this agent and calls h for each envelope,
// until ctx ends. New sessions are picked up as they are accepted: Serve follows the controller's session event
// feed (SessionEvents), and lists the sessions every interval besides (default 30s) in case the feed missed one.
// Against a controller without the feed it lists them every interval (default 1s). A session is served until it
// closes: a failed receive (the relay, a router or the controller went away) is retried with backoff, 100 ms
// doubling to 5 s; once the session is closed, Serve stops serving it when no envelope has come for the interval
// (default 1s, at most 5s; the last ones are still delivered).
func (a *Agent) Serve(ctx context.Context, interval time.Duration, h Handler) error {
	period, poll := listPeriods(interval)
	// The relay does not tell a receiver that its session closed: a long interval must not keep a closed
	// session's receive open for as long.
	grace := min(poll, maxCloseGrace)
	// serving holds, per session served, a channel closed once the session is seen closed.
	serving := map[workgroups.SessionID]chan struct{}{}
	// ended are sessions seen closed since the last list: an event older than that must not serve them again.
	ended := map[workgroups.SessionID]bool{}
	var wg sync.WaitGroup
	defer wg.Wait()
	watch := a.watchSessions(ctx)
	defer watch.stop()
	serve := func(info workgroups.Session) {
		if serving[info.ID] != nil || ended[info.ID] {
			return
		}
		closed := make(chan struct{})
		serving[info.ID] = closed
		s := a.newSession(info)
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serveSession(ctx, s, h, closed, grace)
		}()
	}
	end := func(id workgroups.SessionID) {
		if closed := serving[id]; closed != nil {
			close(closed)
			delete(serving, id)
		}
	}
	list := func() {
		var views []api.SessionView
		for _, state := range []workgroups.State{workgroups.StateAccepted, workgroups.StateActive} {
			v, err := a.Sessions(ctx, state)
			if err != nil {
				return
			}
			views = append(views, v...)
		}
		clear(ended)
		open := map[workgroups.SessionID]bool{}
		for _, v := range views {
			if v.Provider == a.ID() {
				open[v.ID] = true
				serve(v.Session)
			}
		}
		// Closed is final: a session no longer listed is never listed again.
		for id := range serving {
			if !open[id] {
				end(id)
			}
		}
	}
	t := time.NewTimer(0)
	defer t.Stop()
	events, gone := watch.events, watch.gone
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-gone:
			events, gone, period = nil, nil, poll
			t.Reset(0)
		case e := <-events:
			switch {
			case e.Resync:
				list()
			case e.Session.Provider != a.ID():
			case e.Session.State.Terminal():
				ended[e.Session.ID] = true
				end(e.Session.ID)
			case e.Session.State == workgroups.StateAccepted || e.Session.State == workgroups.StateActive:
				serve(e.Session)
			}
		case <-t.C:
			list()
			t.Reset(period)
		}
	}
}

// serveSession answers the envelopes of s until ctx ends, the relay says the session is closed, or, once closed
// is closed, no envelope has come for grace.
func (a *Agent) serveSession(ctx context.Context, s *Session, h Handler, closed <-chan struct{}, grace time.Duration) {
	log := a.opts.log.With("session", s.ID().String())
	retry := backoff{first: 100 * time.Millisecond, limit: 5 * time.Second}
	failing := false
	for {
		rctx, cancel := graceContext(ctx, closed, grace)
		in, err := s.Receive(rctx)
		idle := rctx.Err() != nil
		cancel()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return
			case idle:
				log.Debug("session closed, stopped serving it")
				return
			case errors.Is(err, ErrSessionClosed) || errors.Is(err, ErrClosed):
				log.Debug("session closed, stopped serving it", "err", err)
				return
			}
			d := retry.fail()
			if !failing {
				log.Warn("receiving failed, retrying", "err", err)
				failing = true
			}
			if !sleep(ctx, d) {
				return
			}
			continue
		}
		if failing {
			log.Info("receiving again")
			failing = false
		}
		retry.reset()
		typ, reply, err := h(ctx, s, in)
		if err != nil {
			log.Warn("handler failed", "err", err)
			continue
		}
		if reply != nil {
			if _, err := s.Send(ctx, typ, reply, WithCorrelationID(in.Header.ID.String())); err != nil {
				log.Warn("reply refused", "err", err)
			}
		}
	}
}

// graceContext is ctx, ended grace after closed is closed.
func graceContext(ctx context.Context, closed <-chan struct{}, grace time.Duration) (context.Context, context.CancelFunc) {
	select {
	case <-closed:
		return context.WithTimeout(ctx, grace)
	default:
	}
	gctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-closed:
			if sleep(gctx, grace) {
				cancel()
			}
		case <-gctx.Done():
		}
	}()
	return gctx, cancel
}

// relayConn is one connection to the controller's relay.
type relayConn struct {
	conn net.Conn
	r    *bufio.Reader
	// abort closes the overlay connection under the TLS one, from any goroutine: closing the TLS connection
	// itself would also set a write deadline, which the overlay's connections do not allow from two goroutines.
	abort func() error
}

// openRelay dials the controller's relay and says hello, by ctx's deadline.
func (a *Agent) openRelay(ctx context.Context, hello api.RelayHello) (*relayConn, error) {
	conn, err := a.dialController(ctx, api.RelayService)
	if err != nil {
		return nil, err
	}
	abort := conn.Close
	if tc, ok := conn.(*tls.Conn); ok {
		abort = tc.NetConn().Close
	}
	if a.opts.relayConn != nil {
		conn = a.opts.relayConn(hello.Mode, conn)
	}
	c := &relayConn{conn: conn, r: bufio.NewReaderSize(conn, 64<<10), abort: abort}
	if err := c.writeLineCtx(ctx, hello); err != nil {
		conn.Close()
		return nil, ctxError(ctx, err)
	}
	return c, nil
}

func (c *relayConn) Close() error { return c.conn.Close() }

func (c *relayConn) writeLine(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = c.conn.Write(append(b, '\n'))
	return err
}

func (c *relayConn) writeLineCtx(ctx context.Context, v any) error {
	defer c.deadline(ctx)()
	if err := c.writeLine(v); err != nil {
		return ctxError(ctx, err)
	}
	return nil
}

func (c *relayConn) writeReceipt(ctx context.Context, seq uint64) error {
	return c.writeLineCtx(ctx, api.RelayReceipt{Seq: seq})
}

// deadline applies ctx's deadline (or none) to the connection, and aborts the connection if ctx is cancelled
// meanwhile (aborting, not moving the deadline: the overlay's connections do not allow deadlines to be set from
// two goroutines at once).
func (c *relayConn) deadline(ctx context.Context) func() {
	dl, _ := ctx.Deadline()
	_ = c.conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = c.abort() })
	return func() { stop() }
}

func (c *relayConn) roundTrip(ctx context.Context, frame []byte, ack *api.RelayAck) error {
	defer c.deadline(ctx)()
	if _, err := c.conn.Write(frame); err != nil {
		return err
	}
	return c.readLineNoDeadline(ack)
}

func (c *relayConn) readLine(ctx context.Context, v any) error {
	defer c.deadline(ctx)()
	return c.readLineNoDeadline(v)
}

func (c *relayConn) readLineNoDeadline(v any) error {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return errors.New("relay answer too long")
		}
		return err
	}
	return json.Unmarshal(line, v)
}

func (c *relayConn) readFrame(ctx context.Context) (Envelope, error) {
	defer c.deadline(ctx)()
	h, payload, err := workgroups.DecodeFrame(c.r, workgroups.FrameLimits{MaxHeaderBytes: 16 << 10, MaxPayloadBytes: 4 << 20})
	if errors.Is(err, io.EOF) {
		return Envelope{}, io.ErrUnexpectedEOF
	}
	if err != nil {
		return Envelope{}, err
	}
	return Envelope{Header: h, Payload: payload}, nil
}
