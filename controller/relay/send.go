package relay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/workgroups"
)

// Meta keys the relay stores with an envelope for its audit record (see Meta).
const (
	MetaWorkgroup  = "Workgroup"
	MetaDecision   = "Decision"
	MetaDiagnostic = "Diagnostic" // base64url of the policy engine's JSON explanation
	// maxDiagnostic bounds a diagnostic kept with an envelope; a larger one is left out of the record.
	maxDiagnostic = 4 << 10
)

// Meta is what the relay keeps with an envelope for its audit record: the session's workgroup and the policy
// decision with its explanation.
func Meta(wg workgroups.WorkgroupID, decision string, diagnostic json.RawMessage) map[string]string {
	m := map[string]string{MetaWorkgroup: wg.String(), MetaDecision: decision}
	if d := base64.RawURLEncoding.EncodeToString(diagnostic); len(d) <= maxDiagnostic {
		m[MetaDiagnostic] = d
	}
	return m
}

// maxCounts bounds how many sessions' counts one send connection remembers.
const maxCounts = 64

// appendAttempts bounds how often one envelope is checked again because another writer appended to its session
// between the checks and the store's compare-and-set, and the checks would come out differently at the position
// the store offers (see sameAt).
const appendAttempts = 3

// send reads envelope frames and answers each with one RelayAck line.
func (r *Relay) send(ctx context.Context, conn net.Conn, br *bufio.Reader, sender spiffeid.ID) error {
	counts := map[string]uint64{} // session → its count after this connection's last append, as the store said
	for {
		_ = conn.SetReadDeadline(time.Now().Add(r.cfg.IdleTimeout))
		h, payload, err := workgroups.DecodeFrame(br, FrameLimits)
		if errors.Is(err, io.EOF) {
			return nil
		}
		read := time.Now()
		if err != nil {
			// The stream cannot be resynchronised after a bad frame: refuse, record, hang up.
			r.cfg.Refusals.Refuse(ctx, api.CodeMalformedFrame, audit.Record{Kind: "envelope.rejected", Actor: sender.String(),
				Decision: audit.DecisionDeny, Reason: api.CodeMalformedFrame + ": " + err.Error()})
			ack := api.RelayAck{Code: api.CodeMalformedFrame, Error: err.Error()}
			_ = writeJSONLine(conn, ack)
			r.cfg.Observer.Answered(ack, time.Since(read))
			return err
		}
		if len(counts) > maxCounts {
			clear(counts)
		}
		ack := r.traced(ctx, sender, h, payload, counts)
		err = writeJSONLine(conn, ack)
		r.cfg.Observer.Answered(ack, time.Since(read))
		if err != nil {
			return err
		}
	}
}

// one enforces the contract on one envelope and, if it passes, stores it and waits for its audit record.
func (r *Relay) one(ctx context.Context, sender spiffeid.ID, h workgroups.Header, payload []byte, counts map[string]uint64) api.RelayAck {
	sid := h.Session.String()
	unlock := r.cfg.Sessions.Lock(sid)
	defer unlock()
	reject := func(code, msg string, sess *workgroups.Session) api.RelayAck {
		rec := audit.Record{Kind: "envelope.rejected", Actor: sender.String(), Session: sid, Decision: audit.DecisionDeny,
			Reason: code + ": " + msg, Data: jsonRaw(h)}
		if sess != nil {
			rec.Workgroup = sess.Workgroup.String()
		}
		r.cfg.Refusals.Refuse(ctx, code, rec)
		return api.RelayAck{ID: h.ID.String(), Code: code, Error: msg}
	}
	sess, err := r.cfg.Sessions.Get(ctx, sid)
	if err != nil {
		if !errors.Is(err, ErrNoSession) {
			r.log.Error("reading a session failed", "session", sid, "err", err)
			return reject(api.CodeInternal, "internal error; send it again", nil)
		}
		return reject(string(workgroups.ViolationSessionMismatch), "no such session", nil)
	}
	if r.cfg.Budget != nil {
		if code, msg, refused := r.cfg.Budget.Admit(ctx, sender, sid, h.ID.String()); refused {
			return api.RelayAck{ID: h.ID.String(), Code: code, Error: msg}
		}
	}
	var (
		app     envstore.Appended
		d       workgroups.Decision
		now     time.Time
		stamped bool
	)
	sent := h // as the sender wrote it: every attempt checks this, not the previous attempt's stamped copy
	for attempt := 1; ; attempt++ {
		h = sent
		count, known := counts[sid]
		if !known {
			if count, err = r.cfg.Envelopes.Count(ctx, sid); err != nil {
				r.log.Error("counting a session's envelopes failed", "session", sid, "err", err)
				return reject(api.CodeInternal, "internal error; send it again", &sess)
			}
		}
		now = time.Now().UTC()
		if err := workgroups.CheckSend(sess, h, sender, count, now); err != nil {
			var v *workgroups.Violation
			if errors.As(err, &v) {
				if v.Code == workgroups.ViolationExpired && !sess.State.Terminal() {
					if err := r.cfg.Sessions.Close(ctx, sid, workgroups.CloseExpired, "max duration reached"); err != nil {
						r.log.Warn("closing an expired session failed", "session", sid, "err", err)
					}
				}
				return reject(string(v.Code), v.Detail, &sess)
			}
			return reject(api.CodeBadRequest, err.Error(), &sess)
		}
		var (
			ack *api.RelayAck
			req workgroups.Request
		)
		if d, req, ack = r.decide(ctx, sender, sess, h, count, now); ack != nil {
			return *ack
		}
		// The relay, not the sender, fixes the time of the envelope; the store fixes its position, where it makes
		// the compare-and-set on the session. The checks above assumed position count+1: if the store is about to
		// commit another, someone else appended meanwhile and the envelope is checked again.
		h.Seq, h.Time = count+1, now
		frame, err := workgroups.AppendFrame(nil, h, payload)
		if err != nil {
			return reject(api.CodeBadRequest, err.Error(), &sess)
		}
		// Another position means that another writer appended meanwhile. The checks that depend on the position are
		// pure and are made again right here, where the store compares and sets: re-reading and re-checking outside
		// would leave a sender racing through another controller a step behind on every attempt. Only if they
		// would come out differently does the envelope go round the loop, to be refused with its record there.
		// The store may call stamp more than once (again after reading the session anew): stale is what the last
		// call said, offered the position it refused.
		decision, diag := decisionRecord(d)
		stale, offered := false, uint64(0)
		stamp := func(seq uint64) ([]byte, error) {
			if stale = seq != count+1 && !r.sameAt(sess, sent, sender, req, decision, diag, seq-1, now); stale {
				offered = seq
				return nil, fmt.Errorf("position %d, the checks assumed %d", seq, count+1)
			}
			at := h
			at.Seq = seq
			return workgroups.AppendFrame(nil, at, payload)
		}
		began := time.Now()
		app, err = r.cfg.Envelopes.Append(ctx, envstore.Envelope{ID: h.ID.String(), Session: sid, To: h.To.String(), Data: frame,
			Stamp: stamp, Meta: Meta(sess.Workgroup, decision, diag)}, sess.Contract.MaxMessages)
		if err == nil {
			r.cfg.Observer.Appended(time.Since(began))
		}
		switch {
		case stale && attempt < appendAttempts:
			counts[sid] = offered - 1 // the session as the store has just read it
			continue
		case errors.Is(err, envstore.ErrLimit):
			counts[sid] = app.Count
			return reject(string(workgroups.ViolationMaxMessages), "the session's message limit is reached", &sess)
		case err != nil:
			delete(counts, sid)
			r.log.Error("appending an envelope failed", "session", sid, "err", err)
			return reject(api.CodeInternal, "internal error; send it again", &sess)
		}
		counts[sid], stamped = app.Count, !app.Duplicate
		break
	}
	// Nothing is acknowledged before the envelope's audit record is durable: the recorder writes it from the
	// stream, also after a crash right here.
	wctx, cancel := context.WithTimeout(ctx, r.cfg.RecordTimeout)
	err = r.cfg.Records.Wait(wctx, app.StreamSeq)
	cancel()
	if err != nil {
		r.log.Error("envelope stored but not yet recorded in the audit trail", "session", sid, "envelope", h.ID.String(), "err", err)
		return api.RelayAck{ID: h.ID.String(), Code: api.CodeInternal,
			Error: "the envelope is stored but its audit record is not written yet; send it again with the same id"}
	}
	if !stamped {
		r.cfg.Refusals.Refuse(ctx, api.CodeDuplicate, audit.Record{Kind: "envelope.duplicate", Actor: sender.String(), Session: sid,
			Workgroup: sess.Workgroup.String(), Decision: audit.DecisionDeny, Reason: api.CodeDuplicate + ": envelope id already recorded", Data: jsonRaw(h)})
		// A retry learns where the original stands; a replay changes nothing.
		var seq uint64
		if m, err := r.cfg.Envelopes.Get(ctx, app.StreamSeq); err == nil {
			if orig, _, err := workgroups.DecodeFrame(bytes.NewReader(m.Data), FrameLimits); err == nil {
				seq = orig.Seq
			}
		}
		return api.RelayAck{ID: h.ID.String(), OK: true, Seq: seq, Duplicate: true, Code: api.CodeDuplicate, Error: "envelope id already recorded; not stored again"}
	}
	if sess.State == workgroups.StateAccepted {
		if err := r.cfg.Sessions.Activate(ctx, sid, sender, now); err != nil {
			r.log.Warn("activating a session failed", "session", sid, "err", err)
		}
	}
	if app.Count >= sess.Contract.MaxMessages {
		if err := r.cfg.Sessions.Close(ctx, sid, workgroups.CloseMaxMessages, "max messages reached"); err != nil {
			r.log.Warn("closing a session at its message limit failed", "session", sid, "err", err)
		}
	}
	return api.RelayAck{ID: h.ID.String(), OK: true, Seq: app.Count}
}

// sameAt reports whether envelope h from sender, checked and allowed by req as the count-th of sess with the
// given decision record, passes the same checks with the same record as the at-th.
func (r *Relay) sameAt(sess workgroups.Session, h workgroups.Header, sender spiffeid.ID, req workgroups.Request, decision string, diag json.RawMessage, at uint64, now time.Time) bool {
	if workgroups.CheckSend(sess, h, sender, at, now) != nil {
		return false
	}
	req.Context = workgroups.EnvelopeContext(h, at)
	dec, dg := decisionRecord(r.cfg.Authorizer.Decide(req))
	return dec == decision && bytes.Equal(dg, diag)
}

// decide asks the authoriser whether sender may send h in sess, as the count-th envelope so far. The sender's
// memberships come from the cache; a refusal is confirmed against the store, so that a membership granted a
// moment ago is not refused. A refusal is recorded and returned as the ack to send; an allowed envelope comes
// with the request that allowed it.
func (r *Relay) decide(ctx context.Context, sender spiffeid.ID, sess workgroups.Session, h workgroups.Header, count uint64, now time.Time) (workgroups.Decision, workgroups.Request, *api.RelayAck) {
	var (
		d   workgroups.Decision
		req workgroups.Request
	)
	conds, err := workgroups.ParseConditions(sess.Contract.Conditions)
	if err != nil {
		return d, req, r.refuse(ctx, sender, sess, h, "policy_denied", "contract conditions do not parse", nil)
	}
	for _, read := range []func(context.Context, spiffeid.ID) ([]workgroups.Membership, error){r.cfg.Memberships.Cached, r.cfg.Memberships.Current} {
		ms, err := read(ctx, sender)
		if err != nil {
			r.log.Error("reading memberships failed", "identity", sender.String(), "err", err)
			return d, req, r.refuse(ctx, sender, sess, h, api.CodeInternal, "internal error; send it again", nil)
		}
		req = workgroups.Request{Principal: workgroups.PrincipalFor(sender, ms), Action: workgroups.ActionSend,
			Resource: workgroups.SessionResource(sess), Context: workgroups.EnvelopeContext(h, count), At: now, Conditions: conds}
		if d = r.cfg.Authorizer.Decide(req); d.Allow {
			return d, req, nil
		}
	}
	return d, req, r.refuse(ctx, sender, sess, h, "policy_denied", fmt.Sprintf("policy refuses: %v", d.Diagnostic.Reasons), &d)
}

// refuse records a refusal on the way to a policy decision, or by it (d), and returns the ack that says so.
func (r *Relay) refuse(ctx context.Context, sender spiffeid.ID, sess workgroups.Session, h workgroups.Header, code, msg string, d *workgroups.Decision) *api.RelayAck {
	rec := audit.Record{Kind: "envelope.rejected", Actor: sender.String(), Session: sess.ID.String(), Workgroup: sess.Workgroup.String(),
		Decision: audit.DecisionDeny, Reason: code + ": " + msg, Data: jsonRaw(h)}
	if d != nil {
		rec.Decision, rec.Diagnostic = decisionRecord(*d)
		rec.Reason = code
	}
	r.cfg.Refusals.Refuse(ctx, code, rec)
	return &api.RelayAck{ID: h.ID.String(), Code: code, Error: msg}
}
