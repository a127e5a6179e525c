package controller

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/workgroups"
)

// The relay is the enforcement point for A2A: every envelope arrives here over the overlay, inside mutual TLS,
// and is checked against its session and contract, appended to JetStream and audited (by the envelope recorder,
// from the stream) before the sender is acknowledged; recipients receive from here, in order, at least once. It trusts nothing a peer writes: the
// sender is the SPIFFE ID its SVID proved, and frames are decoded under hard limits.

// relayLimits bound what the relay reads before any contract is consulted.
var relayLimits = workgroups.FrameLimits{MaxHeaderBytes: 16 << 10, MaxPayloadBytes: 4 << 20}

const (
	helloTimeout = 10 * time.Second
	idleTimeout  = 5 * time.Minute
	maxLine      = 4 << 10
)

func (s *Server) serveRelay(ctx context.Context, ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			if err := s.relayConn(ctx, conn); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Debug("relay connection ended", "err", err)
			}
		}()
	}
}

func (s *Server) relayConn(ctx context.Context, conn net.Conn) error {
	peer, err := agentsdk.PeerIdentity(conn)
	if err != nil {
		return err
	}
	rec, _, err := s.ids.get(ctx, peer)
	if err != nil || rec.State == stateRevoked {
		return fmt.Errorf("relay: %s is not a usable identity", peer)
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	_ = conn.SetReadDeadline(time.Now().Add(helloTimeout))
	line, err := readLine(r)
	if err != nil {
		return err
	}
	var hello api.RelayHello
	if err := strict(line, &hello); err != nil {
		return writeJSONLine(conn, api.RelayAck{Code: api.CodeMalformedFrame, Error: "malformed hello"})
	}
	switch hello.Mode {
	case "send":
		return s.relaySend(ctx, conn, r, peer)
	case "recv":
		return s.relayRecv(ctx, conn, r, peer, hello.Session)
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

// relaySend reads envelope frames and answers each with one RelayAck line.
func (s *Server) relaySend(ctx context.Context, conn net.Conn, r *bufio.Reader, sender spiffeid.ID) error {
	for {
		_ = conn.SetReadDeadline(time.Now().Add(idleTimeout))
		h, payload, err := workgroups.DecodeFrame(r, relayLimits)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			// The stream cannot be resynchronised after a bad frame: refuse, record, hang up.
			s.recordRefusal(ctx, api.CodeMalformedFrame, audit.Record{Kind: "envelope.rejected", Actor: sender.String(), Decision: "deny",
				Reason: api.CodeMalformedFrame + ": " + err.Error()})
			_ = writeJSONLine(conn, api.RelayAck{Code: api.CodeMalformedFrame, Error: err.Error()})
			return err
		}
		ack := s.relayOne(ctx, sender, h, payload)
		if err := writeJSONLine(conn, ack); err != nil {
			return err
		}
	}
}

// relayOne enforces the contract on one envelope and, if it passes, stores and audits it.
func (s *Server) relayOne(ctx context.Context, sender spiffeid.ID, h workgroups.Header, payload []byte) api.RelayAck {
	sid := h.Session.String()
	unlock := s.gov.lockSession(sid)
	defer unlock()
	reject := func(code, msg string, sess *workgroups.Session) api.RelayAck {
		r := audit.Record{Kind: "envelope.rejected", Actor: sender.String(), Session: sid, Decision: "deny", Reason: code + ": " + msg, Data: jsonRaw(h)}
		if sess != nil {
			r.Workgroup = sess.Workgroup.String()
		}
		s.recordRefusal(ctx, code, r)
		return api.RelayAck{ID: h.ID.String(), Code: code, Error: msg}
	}
	sess, _, err := s.gov.sessions.get(ctx, sid)
	if err != nil {
		return reject(string(workgroups.ViolationSessionMismatch), "no such session", nil)
	}
	count, err := s.gov.env.Count(ctx, sid)
	if err != nil {
		return reject(api.CodeInternal, "internal error", &sess)
	}
	now := time.Now().UTC()
	if err := workgroups.CheckSend(sess, h, sender, count, now); err != nil {
		var v *workgroups.Violation
		if errors.As(err, &v) {
			if v.Code == workgroups.ViolationExpired && !sess.State.Terminal() {
				defer s.closeSession(ctx, sid, s.controllerID, workgroups.CloseExpired, "max duration reached")
			}
			return reject(string(v.Code), v.Detail, &sess)
		}
		return reject(api.CodeBadRequest, err.Error(), &sess)
	}
	ms, _, err := s.memberships(ctx, sender)
	if err != nil {
		return reject(api.CodeInternal, "internal error", &sess)
	}
	conds, err := workgroups.ParseConditions(sess.Contract.Conditions)
	if err != nil {
		return reject("policy_denied", "contract conditions do not parse", &sess)
	}
	d := s.gov.authz.Decide(workgroups.Request{Principal: workgroups.PrincipalFor(sender, ms), Action: workgroups.ActionSend,
		Resource: workgroups.SessionResource(sess), Context: workgroups.EnvelopeContext(h, count), At: now, Conditions: conds})
	if !d.Allow {
		decision, diag := decisionRecord(d)
		s.recordRefusal(ctx, "policy_denied", audit.Record{Kind: "envelope.rejected", Actor: sender.String(), Session: sid, Workgroup: sess.Workgroup.String(),
			Decision: decision, Diagnostic: diag, Reason: "policy_denied", Data: jsonRaw(h)})
		return api.RelayAck{ID: h.ID.String(), Code: "policy_denied", Error: fmt.Sprintf("policy refuses: %v", d.Diagnostic.Reasons)}
	}
	// The relay, not the sender, fixes the time of the envelope; the store fixes its position, where it makes the
	// compare-and-set on the session (count+1 here only sizes the frame).
	h.Seq, h.Time = count+1, now
	frame, err := workgroups.AppendFrame(nil, h, payload)
	if err != nil {
		return reject(api.CodeBadRequest, err.Error(), &sess)
	}
	stamp := func(seq uint64) ([]byte, error) {
		at := h
		at.Seq = seq
		return workgroups.AppendFrame(nil, at, payload)
	}
	decision, diag := decisionRecord(d)
	app, err := s.gov.env.Append(ctx, envstore.Envelope{ID: h.ID.String(), Session: sid, To: h.To.String(), Data: frame, Stamp: stamp,
		Meta: envelopeMeta(sess.Workgroup, decision, diag)}, sess.Contract.MaxMessages)
	switch {
	case errors.Is(err, envstore.ErrLimit):
		return reject(string(workgroups.ViolationMaxMessages), "the session's message limit is reached", &sess)
	case err != nil:
		s.log.Error("appending envelope failed", "session", sid, "err", err)
		return reject(api.CodeInternal, "internal error", &sess)
	}
	// Nothing is acknowledged before the envelope's audit record is durable: the recorder writes it from the
	// stream, also after a crash right here.
	wctx, cancel := context.WithTimeout(ctx, recordTimeout)
	err = s.gov.rec.wait(wctx, app.StreamSeq)
	cancel()
	if err != nil {
		s.log.Error("envelope stored but not yet recorded in the audit trail", "session", sid, "envelope", h.ID.String(), "err", err)
		return api.RelayAck{ID: h.ID.String(), Code: api.CodeInternal,
			Error: "the envelope is stored but its audit record is not written yet; send it again with the same id"}
	}
	if app.Duplicate {
		s.recordRefusal(ctx, api.CodeDuplicate, audit.Record{Kind: "envelope.duplicate", Actor: sender.String(), Session: sid, Workgroup: sess.Workgroup.String(),
			Decision: "deny", Reason: api.CodeDuplicate + ": envelope id already recorded", Data: jsonRaw(h)})
		// A retry learns where the original stands; a replay changes nothing.
		var seq uint64
		if m, err := s.gov.env.Get(ctx, app.StreamSeq); err == nil {
			if orig, _, err := workgroups.DecodeFrame(bytes.NewReader(m.Data), relayLimits); err == nil {
				seq = orig.Seq
			}
		}
		return api.RelayAck{ID: h.ID.String(), OK: true, Seq: seq, Duplicate: true, Code: api.CodeDuplicate, Error: "envelope id already recorded; not stored again"}
	}
	if sess.State == workgroups.StateAccepted {
		n := 0
		updated, err := s.gov.sessions.update(ctx, sid, func(ss *workgroups.Session) error {
			n = len(ss.History)
			if ss.State != workgroups.StateAccepted {
				return nil
			}
			return ss.Activate(sender, now)
		})
		if err != nil {
			s.log.Warn("activating session failed", "session", sid, "err", err)
		} else {
			s.recordTransitions(ctx, updated, n, "", nil)
		}
	}
	if app.Count >= sess.Contract.MaxMessages {
		if _, err := s.closeSession(ctx, sid, s.controllerID, workgroups.CloseMaxMessages, "max messages reached"); err != nil {
			s.log.Warn("closing session at its message limit failed", "session", sid, "err", err)
		}
	}
	return api.RelayAck{ID: h.ID.String(), OK: true, Seq: app.Count}
}

// relayRecv delivers the session's envelopes addressed to the recipient, one at a time: each is acknowledged
// to JetStream only once the recipient has confirmed it, so an envelope is redelivered until it is confirmed.
func (s *Server) relayRecv(ctx context.Context, conn net.Conn, r *bufio.Reader, recipient spiffeid.ID, raw string) error {
	sid, err := workgroups.ParseSessionID(raw)
	if err != nil {
		return writeJSONLine(conn, api.RelayAck{Code: api.CodeNotFound, Error: "no such session"})
	}
	sess, _, err := s.gov.sessions.get(ctx, sid.String())
	switch {
	case err != nil && !errors.Is(err, errNotFound):
		// Not an answer about the session: the recipient should try again, not give it up.
		s.log.Error("reading a session for delivery failed", "session", sid.String(), "err", err)
		return writeJSONLine(conn, api.RelayAck{Code: api.CodeInternal, Error: "internal error; try again"})
	case err != nil || sess.Consumer != recipient && sess.Provider != recipient:
		return writeJSONLine(conn, api.RelayAck{Code: api.CodeNotFound, Error: "no such session"})
	}
	if err := writeJSONLine(conn, api.RelayAck{OK: true}); err != nil {
		return err
	}
	rcv, err := s.gov.env.Receiver(ctx, sid.String(), recipient.String())
	if err != nil {
		// Nothing can be delivered in this session until this works again: say so where operators look.
		s.log.Error("opening a delivery cursor failed", "session", sid.String(), "recipient", recipient.String(), "err", err)
		return err
	}
	defer rcv.Close()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	receipts := make(chan uint64)
	go func() {
		defer cancel()
		for {
			_ = conn.SetReadDeadline(time.Time{})
			line, err := readLine(r)
			if err != nil {
				return
			}
			var rc api.RelayReceipt
			if strict(line, &rc) != nil {
				return
			}
			select {
			case receipts <- rc.Seq:
			case <-cctx.Done():
				return
			}
		}
	}()
	for {
		m, err := rcv.Next(cctx)
		if err != nil {
			return err
		}
		// Only an envelope whose audit record is durable is delivered.
		if err := s.gov.rec.wait(cctx, m.StreamSeq); err != nil {
			return err
		}
		if _, err := conn.Write(m.Data); err != nil {
			return err
		}
		select {
		case <-receipts:
			if err := rcv.Ack(m); err != nil {
				return err
			}
		case <-cctx.Done():
			return cctx.Err()
		}
	}
}
