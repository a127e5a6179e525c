package sdktest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// These tests speak the relay protocol byte by byte, as a peer that ignores the SDK would: the relay, not the
// SDK, must refuse every envelope the contract does not allow, record the refusal, and change nothing else.

const sendHello = `{"mode":"send"}` + "\n"

// answerWithin bounds how long the relay may take to answer a frame or to hang up.
const answerWithin = 15 * time.Second

// rawRelay is one relay connection driven by hand, inside the mutual TLS the relay requires.
type rawRelay struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

// openRawRelay dials the relay as a and writes hello exactly as given.
func openRawRelay(t *testing.T, ctx context.Context, a *agentsdk.Agent, hello string) *rawRelay {
	t.Helper()
	conn, err := a.Dial(ctx, api.RelayService)
	if err != nil {
		t.Fatalf("dial the relay as %s: %v", a.ID(), err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawRelay{t: t, conn: conn, r: bufio.NewReader(conn)}
	if err := c.write([]byte(hello)); err != nil {
		t.Fatalf("write hello: %v", err)
	}
	return c
}

func (c *rawRelay) write(b []byte) error {
	_ = c.conn.SetWriteDeadline(time.Now().Add(answerWithin))
	_, err := c.conn.Write(b)
	return err
}

// line reads one answer line.
func (c *rawRelay) line() ([]byte, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(answerWithin))
	return c.r.ReadBytes('\n')
}

// ack reads one RelayAck, failing the test if none comes.
func (c *rawRelay) ack() api.RelayAck {
	c.t.Helper()
	line, err := c.line()
	if err != nil {
		c.t.Fatalf("no answer from the relay: %v (read %q)", err, line)
	}
	var ack api.RelayAck
	if err := json.Unmarshal(line, &ack); err != nil {
		c.t.Fatalf("relay answered %q: %v", line, err)
	}
	return ack
}

// hungUp asserts the relay closed the connection: the next read ends without a byte and without timing out.
func (c *rawRelay) hungUp() {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(answerWithin))
	b, err := c.r.ReadByte()
	var ne net.Error
	switch {
	case err == nil:
		rest, _ := c.r.Peek(c.r.Buffered())
		c.t.Fatalf("connection still open: read %q", append([]byte{b}, rest...))
	case errors.As(err, &ne) && ne.Timeout():
		c.t.Fatalf("the relay did not hang up within %v", answerWithin)
	}
}

// silent asserts nothing arrives for d while the connection stays open.
func (c *rawRelay) silent(d time.Duration) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(d))
	b, err := c.r.ReadByte()
	var ne net.Error
	switch {
	case err == nil:
		c.t.Fatalf("received byte %#x, want nothing", b)
	case !errors.As(err, &ne) || !ne.Timeout():
		c.t.Fatalf("connection ended (%v), want it open and silent", err)
	}
}

// envelope returns a well-formed header from → to in session sid describing payload.
func envelope(t *testing.T, sid workgroups.SessionID, from, to spiffeid.ID, typ string, payload []byte) workgroups.Header {
	t.Helper()
	id, err := workgroups.NewEnvelopeID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return workgroups.Header{ID: id, Session: sid, From: from, To: to, Type: typ, Time: time.Now().UTC(),
		ContentType: "application/json"}.WithPayload(payload)
}

func frameOf(t *testing.T, h workgroups.Header, payload []byte) []byte {
	t.Helper()
	b, err := workgroups.AppendFrame(nil, h, payload)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawFrame lays out a frame by hand, so that any part of it can be wrong.
func rawFrame(magic string, version byte, hdr []byte, plen uint32, payload []byte) []byte {
	b := append([]byte(magic), version)
	b = binary.BigEndian.AppendUint32(b, uint32(len(hdr)))
	b = append(b, hdr...)
	b = binary.BigEndian.AppendUint32(b, plen)
	return append(b, payload...)
}

func headerJSON(t *testing.T, h workgroups.Header) []byte {
	t.Helper()
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// auditEntry is the part of an audit record these tests read.
type auditEntry struct {
	Kind    string          `json:"kind"`
	Actor   string          `json:"actor"`
	Session string          `json:"session"`
	Reason  string          `json:"reason"`
	Data    json.RawMessage `json:"data"`
}

// refusedInAudit asserts the session's audit holds an envelope.rejected record for envelope id, refused with
// code, whose actor is the identity the connection proved.
func refusedInAudit(t *testing.T, ctx context.Context, auditor *agentsdk.Agent, sid workgroups.SessionID, code string, actor spiffeid.ID, id workgroups.EnvelopeID) {
	t.Helper()
	trail, err := auditor.Controller().AuditSession(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, raw := range trail.Records {
		var r auditEntry
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatalf("audit record %s: %v", raw, err)
		}
		if r.Kind != "envelope.rejected" {
			continue
		}
		var h struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(r.Data, &h)
		if h.ID != id.String() {
			continue
		}
		seen = append(seen, r.Actor+" "+r.Reason)
		if strings.HasPrefix(r.Reason, code) && r.Actor == actor.String() && r.Session == sid.String() {
			return
		}
	}
	t.Fatalf("no envelope.rejected record %q by %s for envelope %s in the session's audit (records for it: %q)", code, actor, id, seen)
}

// malformedRefusals counts the malformed_frame refusals recorded for actor in the whole audit stream.
func malformedRefusals(t *testing.T, ctx context.Context, actor spiffeid.ID) int {
	t.Helper()
	resp, err := env.Admin().Controller().AuditExport(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	n := 0
	for sc.Scan() {
		var r auditEntry
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit export line %q: %v", sc.Bytes(), err)
		}
		if r.Kind == "envelope.rejected" && r.Actor == actor.String() && strings.HasPrefix(r.Reason, api.CodeMalformedFrame+":") {
			n++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// unchanged asserts the session still has want's state and envelope count.
func unchanged(t *testing.T, ctx context.Context, s *agentsdk.Session, want api.SessionView) {
	t.Helper()
	v, err := s.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.Envelopes != want.Envelopes || v.State != want.State || v.CloseReason != want.CloseReason || len(v.History) != len(want.History) {
		t.Fatalf("session changed: %d envelopes, state %s (%s), %d transitions; want %d, %s (%s), %d",
			v.Envelopes, v.State, v.CloseReason, len(v.History), want.Envelopes, want.State, want.CloseReason, len(want.History))
	}
}

// nothingMore asserts s receives nothing within d.
func nothingMore(t *testing.T, ctx context.Context, s *agentsdk.Session, d time.Duration) {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	in, err := s.Receive(rctx)
	if err == nil {
		t.Fatalf("received %s (seq %d, from %s), want nothing", in.Header.ID, in.Header.Seq, in.Header.From)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("receive: %v, want a timeout with nothing received", err)
	}
}

func orgName(t *testing.T, id spiffeid.ID) string {
	t.Helper()
	ident, err := workgroups.ParseIdentity(id)
	if err != nil {
		t.Fatal(err)
	}
	return ident.Org
}

func TestA2ARawPeerRefusals(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := newPricingWorld(t, defaultTerms())
	// A member of the workgroup who is not a party of the session.
	bystander := orgAgent(t, w.globex, orgName(t, w.buyer.ID()), "bystander")
	if _, err := w.globex.Controller().AddMember(ctx, w.wg, bystander.ID(), ""); err != nil {
		t.Fatal(err)
	}
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	sid := sess.ID()
	buyer, quoter, outsider := w.buyer.ID(), w.quoter.ID(), w.outside.ID()
	var delivered []workgroups.Header
	var payloads [][]byte

	// A well-formed raw envelope goes through, so every refusal below is the relay's doing, not a broken client;
	// and the relay, not the sender, fixes its position and time.
	p := []byte(`{"sku":"w-1"}`)
	base := envelope(t, sid, buyer, quoter, "quote.request", p)
	if !bytes.Equal(rawFrame("UME", workgroups.FrameVersion, headerJSON(t, base), uint32(len(p)), p), frameOf(t, base, p)) {
		t.Fatal("rawFrame does not lay out frames as AppendFrame does")
	}
	base.Seq, base.Time = 42, time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	c := openRawRelay(t, ctx, w.buyer, sendHello)
	if err := c.write(frameOf(t, base, p)); err != nil {
		t.Fatal(err)
	}
	if ack := c.ack(); !ack.OK || ack.Seq != 1 || ack.ID != base.ID.String() || ack.Duplicate {
		t.Fatalf("well-formed raw envelope: %+v", ack)
	}
	delivered, payloads = append(delivered, base), append(payloads, p)

	// A retry of an envelope ID is acknowledged as a duplicate and not stored again, whatever its payload.
	t.Run("replay", func(t *testing.T) {
		p := []byte(`{"sku":"w-2"}`)
		h := envelope(t, sid, buyer, quoter, "quote.request", p)
		seq, err := sess.SendEnvelope(ctx, h, p)
		if err != nil || seq != 2 {
			t.Fatalf("SendEnvelope: seq %d, %v", seq, err)
		}
		delivered, payloads = append(delivered, h), append(payloads, p)
		before, err := sess.Refresh(ctx)
		if err != nil {
			t.Fatal(err)
		}
		other := []byte(`{"sku":"w-9"}`)
		for name, frame := range map[string][]byte{
			"identical frame":             frameOf(t, h, p),
			"same id, different payload":  frameOf(t, h.WithPayload(other), other),
			"same id, different position": frameOf(t, func() workgroups.Header { g := h; g.Seq = 7; return g }(), p),
		} {
			c := openRawRelay(t, ctx, w.buyer, sendHello)
			if err := c.write(frame); err != nil {
				t.Fatal(err)
			}
			ack := c.ack()
			if !ack.OK || !ack.Duplicate || ack.Code != api.CodeDuplicate || ack.ID != h.ID.String() || ack.Seq != 2 {
				t.Fatalf("%s: %+v, want ok, duplicate (of seq 2)", name, ack)
			}
			unchanged(t, ctx, sess, before)
		}
		// The SDK's own retry of a recorded envelope (its answer was lost) reports where it was recorded.
		if seq, err := sess.SendEnvelope(ctx, h, p); err != nil || seq != 2 {
			t.Errorf("SendEnvelope of an envelope already recorded at seq 2: seq %d, %v", seq, err)
		}
		unchanged(t, ctx, sess, before)
	})

	before, err := sess.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if before.Envelopes != 2 {
		t.Fatalf("before the attacks: %d envelopes, want 2", before.Envelopes)
	}
	// proposed → accepted → active: the first envelope activates the session.
	if before.State != workgroups.StateActive {
		t.Errorf("after two envelopes the session is %s, want %s", before.State, workgroups.StateActive)
	}

	big := bytes.Repeat([]byte("x"), int(defaultTerms().MaxEnvelopeBytes)+1)
	contract := []struct {
		name    string
		as      *agentsdk.Agent
		from    spiffeid.ID
		to      spiffeid.ID
		typ     string
		payload []byte
		code    workgroups.ViolationCode
	}{
		{"buyer forges the quoter", w.buyer, quoter, buyer, "quote.response", p, workgroups.ViolationSenderForged},
		{"buyer forges a third identity", w.buyer, outsider, quoter, "quote.request", p, workgroups.ViolationSenderForged},
		{"quoter forges the buyer", w.quoter, buyer, quoter, "quote.request", p, workgroups.ViolationSenderForged},
		{"another org's agent as itself", w.outside, outsider, quoter, "quote.request", p, workgroups.ViolationNotParty},
		{"another org's agent forging the buyer", w.outside, buyer, quoter, "quote.request", p, workgroups.ViolationSenderForged},
		{"workgroup member who is no party", bystander, bystander.ID(), quoter, "quote.request", p, workgroups.ViolationNotParty},
		{"to a third identity", w.buyer, buyer, outsider, "quote.request", p, workgroups.ViolationWrongRecipient},
		{"to the sender itself", w.buyer, buyer, buyer, "quote.request", p, workgroups.ViolationWrongRecipient},
		{"to a workgroup member who is no party", w.buyer, buyer, bystander.ID(), "quote.request", p, workgroups.ViolationWrongRecipient},
		{"type outside the contract", w.buyer, buyer, quoter, "order.place", p, workgroups.ViolationTypeNotAllowed},
		{"payload over max_envelope_bytes", w.buyer, buyer, quoter, "quote.request", big, workgroups.ViolationTooLarge},
	}
	for _, tc := range contract {
		t.Run(tc.name, func(t *testing.T) {
			h := envelope(t, sid, tc.from, tc.to, tc.typ, tc.payload)
			c := openRawRelay(t, ctx, tc.as, sendHello)
			if err := c.write(frameOf(t, h, tc.payload)); err != nil {
				t.Fatal(err)
			}
			ack := c.ack()
			if ack.OK || ack.Code != string(tc.code) || ack.ID != h.ID.String() {
				t.Fatalf("ack %+v, want refusal %s", ack, tc.code)
			}
			unchanged(t, ctx, sess, before)
			refusedInAudit(t, ctx, w.acme, sid, string(tc.code), tc.as.ID(), h.ID)
		})
	}

	// Frames the relay cannot decode: one error answer, then it hangs up, and nothing is stored. They carry no
	// session the relay can trust, so they are audited against the sender only.
	t.Run("malformed", func(t *testing.T) {
		h := envelope(t, sid, buyer, quoter, "quote.request", p)
		hdr := headerJSON(t, h)
		withTail := func(tail string) []byte { return append(bytes.TrimSuffix(bytes.Clone(hdr), []byte("}")), tail+"}"...) }
		claims := func(size uint64) []byte { g := h; g.Size = size; return headerJSON(t, g) }
		same := bytes.Repeat([]byte("y"), len(p))
		noID := h
		noID.ID = workgroups.EnvelopeID{}
		head := func(hlen uint32) []byte { return binary.BigEndian.AppendUint32([]byte("UME\x01"), hlen) }
		cases := []struct {
			name  string
			frame []byte
		}{
			{"garbage", bytes.Repeat([]byte{0xff, 0x00, 0x13}, 40)},
			{"an HTTP request", []byte("GET / HTTP/1.1\r\nHost: umbra.relay\r\n\r\n")},
			{"wrong magic", rawFrame("UMF", workgroups.FrameVersion, hdr, uint32(len(p)), p)},
			{"unknown version 2", rawFrame("UME", 2, hdr, uint32(len(p)), p)},
			{"unknown version 0", rawFrame("UME", 0, hdr, uint32(len(p)), p)},
			{"empty header", rawFrame("UME", workgroups.FrameVersion, nil, uint32(len(p)), p)},
			{"header length 1 MiB", append(head(1<<20), hdr...)},
			{"header not JSON", rawFrame("UME", workgroups.FrameVersion, []byte("id=1;from=me"), uint32(len(p)), p)},
			{"header a JSON array", rawFrame("UME", workgroups.FrameVersion, []byte(`["`+h.ID.String()+`"]`), uint32(len(p)), p)},
			{"header with an unknown field", rawFrame("UME", workgroups.FrameVersion, withTail(`,"priority":"high"`), uint32(len(p)), p)},
			{"header with a second from", rawFrame("UME", workgroups.FrameVersion, withTail(`,"from":"`+quoter.String()+`"`), uint32(len(p)), p)},
			{"header with an upper-case key", rawFrame("UME", workgroups.FrameVersion, bytes.Replace(hdr, []byte(`"to":`), []byte(`"To":`), 1), uint32(len(p)), p)},
			{"header without id", rawFrame("UME", workgroups.FrameVersion, headerJSON(t, noID), uint32(len(p)), p)},
			{"header followed by data", rawFrame("UME", workgroups.FrameVersion, append(bytes.Clone(hdr), ` {}`...), uint32(len(p)), p)},
			{"sha256 does not match the payload", rawFrame("UME", workgroups.FrameVersion, hdr, uint32(len(same)), same)},
			{"length prefix disagrees with the header", rawFrame("UME", workgroups.FrameVersion, hdr, uint32(len(p)+1), append(bytes.Clone(p), '!'))},
			{"header claims 100 MiB", rawFrame("UME", workgroups.FrameVersion, claims(100<<20), 100<<20, p)},
			{"length prefix says 100 MiB", rawFrame("UME", workgroups.FrameVersion, hdr, 100<<20, p)},
			{"header claims 5 MiB, over the relay's frame limit", rawFrame("UME", workgroups.FrameVersion, claims(5<<20), 5<<20, p)},
		}
		n0 := malformedRefusals(t, ctx, buyer)
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				c := openRawRelay(t, ctx, w.buyer, sendHello)
				if err := c.write(tc.frame); err != nil {
					t.Fatal(err)
				}
				ack := c.ack()
				if ack.OK || ack.Code != api.CodeMalformedFrame {
					t.Fatalf("ack %+v, want %s", ack, api.CodeMalformedFrame)
				}
				c.hungUp()
				unchanged(t, ctx, sess, before)
			})
		}
		// A frame cut short when the sender closes its side.
		t.Run("truncated", func(t *testing.T) {
			c := openRawRelay(t, ctx, w.buyer, sendHello)
			full := frameOf(t, h, p)
			if err := c.write(full[:len(full)-3]); err != nil {
				t.Fatal(err)
			}
			tc, ok := c.conn.(*tls.Conn)
			if !ok {
				t.Fatalf("Dial returned a %T, want a *tls.Conn", c.conn)
			}
			if err := tc.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if ack := c.ack(); ack.OK || ack.Code != api.CodeMalformedFrame {
				t.Fatalf("ack %+v, want %s", ack, api.CodeMalformedFrame)
			}
			c.hungUp()
			unchanged(t, ctx, sess, before)
		})
		if n := malformedRefusals(t, ctx, buyer) - n0; n != len(cases)+1 {
			t.Fatalf("%d malformed_frame refusals by %s in the audit, want %d", n, buyer, len(cases)+1)
		}
	})

	// A refusal under the contract does not end the connection: the next frame on it is answered too.
	t.Run("connection survives a contract refusal", func(t *testing.T) {
		c := openRawRelay(t, ctx, w.buyer, sendHello)
		for _, typ := range []string{"order.place", "order.cancel"} {
			h := envelope(t, sid, buyer, quoter, typ, p)
			if err := c.write(frameOf(t, h, p)); err != nil {
				t.Fatal(err)
			}
			if ack := c.ack(); ack.OK || ack.Code != string(workgroups.ViolationTypeNotAllowed) || ack.ID != h.ID.String() {
				t.Fatalf("ack %+v", ack)
			}
		}
		unchanged(t, ctx, sess, before)
	})

	// The buyer's own cursor never yields what is addressed to the quoter.
	t.Run("recv yields only what is addressed to the caller", func(t *testing.T) {
		c := openRawRelay(t, ctx, w.buyer, `{"mode":"recv","session":"`+sid.String()+`"}`+"\n")
		if ack := c.ack(); !ack.OK {
			t.Fatalf("recv as a party: %+v", ack)
		}
		c.silent(1500 * time.Millisecond)
	})

	t.Run("closed session", func(t *testing.T) {
		if err := sess.Close(ctx, "done"); err != nil {
			t.Fatal(err)
		}
		closed, err := sess.Refresh(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if closed.State != workgroups.StateClosed || closed.Envelopes != before.Envelopes {
			t.Fatalf("after close: %s, %d envelopes", closed.State, closed.Envelopes)
		}
		for _, as := range []*agentsdk.Agent{w.buyer, w.quoter} {
			peer := quoter
			if as == w.quoter {
				peer = buyer
			}
			h := envelope(t, sid, as.ID(), peer, "quote.request", p)
			c := openRawRelay(t, ctx, as, sendHello)
			if err := c.write(frameOf(t, h, p)); err != nil {
				t.Fatal(err)
			}
			if ack := c.ack(); ack.OK || ack.Code != string(workgroups.ViolationSessionClosed) {
				t.Fatalf("send by %s after close: %+v", as.ID(), ack)
			}
			unchanged(t, ctx, sess, closed)
			refusedInAudit(t, ctx, w.acme, sid, string(workgroups.ViolationSessionClosed), as.ID(), h.ID)
		}
	})

	// The quoter receives exactly what was accepted, in order, once, and nothing else.
	provider, err := w.quoter.Session(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range delivered {
		rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
		in, err := provider.Receive(rctx)
		rcancel()
		if err != nil {
			t.Fatalf("receive envelope %d: %v", i+1, err)
		}
		if in.Header.ID != want.ID || in.Header.Seq != uint64(i+1) || in.Header.From != buyer || !bytes.Equal(in.Payload, payloads[i]) {
			t.Fatalf("envelope %d: %+v %q, want %s %q", i+1, in.Header, in.Payload, want.ID, payloads[i])
		}
		if in.Header.Time.Year() < 2020 {
			t.Fatalf("the relay kept the sender's time %s", in.Header.Time)
		}
	}
	nothingMore(t, ctx, provider, 1500*time.Millisecond)
	trail, err := w.acme.Controller().AuditSession(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	if len(trail.Envelopes) != len(delivered) {
		t.Fatalf("audit holds %d envelopes, want %d", len(trail.Envelopes), len(delivered))
	}
	for i, h := range trail.Envelopes {
		if h.ID != delivered[i].ID || h.Seq != uint64(i+1) {
			t.Fatalf("audit envelope %d: %s seq %d, want %s", i+1, h.ID, h.Seq, delivered[i].ID)
		}
	}
}

func TestA2ARawPeerHello(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w := newPricingWorld(t, defaultTerms())
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	sid := sess.ID()
	if _, err := sess.Send(ctx, "quote.request", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	before, err := sess.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	frame := frameOf(t, envelope(t, sid, w.buyer.ID(), w.quoter.ID(), "quote.request", []byte(`{}`)), []byte(`{}`))

	refused := []struct {
		name  string
		as    *agentsdk.Agent
		hello string
	}{
		{"garbage", w.buyer, "\x16\x03\x01\x02\x00 hello?\n"},
		{"not an object", w.buyer, `["send"]` + "\n"},
		{"unknown field", w.buyer, `{"mode":"send","as":"` + w.quoter.ID().String() + `"}` + "\n"},
		{"unknown mode", w.buyer, `{"mode":"admin"}` + "\n"},
		{"no mode", w.buyer, `{}` + "\n"},
		{"trailing data", w.buyer, `{"mode":"send"} {"mode":"recv"}` + "\n"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			c := openRawRelay(t, ctx, tc.as, tc.hello)
			// A frame right behind the hello must not be taken for an envelope.
			_ = c.write(frame)
			if ack := c.ack(); ack.OK || ack.Code != api.CodeMalformedFrame {
				t.Fatalf("ack %+v, want %s", ack, api.CodeMalformedFrame)
			}
			c.hungUp()
			unchanged(t, ctx, sess, before)
		})
	}

	t.Run("line over 4 KiB", func(t *testing.T) {
		c := openRawRelay(t, ctx, w.buyer, `{"mode":"send","session":"`+strings.Repeat("a", 5<<10)+`"}`+"\n")
		_ = c.write(frame)
		c.hungUp()
		unchanged(t, ctx, sess, before)
	})

	// recv for a session the caller is no party of looks exactly like recv for one that does not exist.
	t.Run("recv as no party", func(t *testing.T) {
		missing, err := workgroups.NewSessionID(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		var acks []api.RelayAck
		for _, s := range []string{sid.String(), missing.String(), "ses_not-an-id", ""} {
			c := openRawRelay(t, ctx, w.outside, `{"mode":"recv","session":"`+s+`"}`+"\n")
			ack := c.ack()
			if ack.OK || ack.Code != api.CodeNotFound {
				t.Fatalf("recv %q as an outsider: %+v", s, ack)
			}
			c.hungUp()
			acks = append(acks, ack)
		}
		for _, a := range acks[1:] {
			if a != acks[0] {
				t.Fatalf("a hidden session answers %+v, a missing one %+v", acks[0], a)
			}
		}
		unchanged(t, ctx, sess, before)
	})

	// Nothing of the above reached the quoter: only the one envelope sent through the SDK.
	provider, err := w.quoter.Session(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	defer rcancel()
	if in, err := provider.Receive(rctx); err != nil || in.Header.Seq != 1 {
		t.Fatalf("receive: %+v %v", in.Header, err)
	}
	nothingMore(t, ctx, provider, 1500*time.Millisecond)
}

func TestA2ARawPeerExpiredSession(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	terms := defaultTerms()
	terms.MaxDuration = workgroups.Duration(time.Second)
	w := newPricingWorld(t, terms)
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	sid := sess.ID()
	time.Sleep(time.Until(sess.Info().Deadline()) + 500*time.Millisecond)

	h := envelope(t, sid, w.buyer.ID(), w.quoter.ID(), "quote.request", []byte(`{}`))
	c := openRawRelay(t, ctx, w.buyer, sendHello)
	if err := c.write(frameOf(t, h, []byte(`{}`))); err != nil {
		t.Fatal(err)
	}
	ack := c.ack()
	if ack.OK || ack.Code != string(workgroups.ViolationExpired) && ack.Code != string(workgroups.ViolationSessionClosed) {
		t.Fatalf("send after the deadline: %+v", ack)
	}
	t.Logf("send after the deadline refused: %s", ack.Code)
	refusedInAudit(t, ctx, w.acme, sid, ack.Code, w.buyer.ID(), h.ID)
	v, err := sess.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.State != workgroups.StateClosed || v.CloseReason != workgroups.CloseExpired || v.Envelopes != 0 {
		t.Fatalf("after the deadline: %s (%s), %d envelopes", v.State, v.CloseReason, v.Envelopes)
	}
	provider, err := w.quoter.Session(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	nothingMore(t, ctx, provider, 1500*time.Millisecond)
}

func TestA2ARawPeerRevoked(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := newPricingWorld(t, defaultTerms())
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	sid := sess.ID()
	if seq, err := sess.Send(ctx, "quote.request", []byte(`{"before":"revocation"}`)); err != nil || seq != 1 {
		t.Fatalf("send: %d %v", seq, err)
	}
	// A raw relay connection opened before the revocation, kept for later.
	held := openRawRelay(t, ctx, w.buyer, sendHello)
	heldFrame := frameOf(t, envelope(t, sid, w.buyer.ID(), w.quoter.ID(), "quote.request", []byte(`{}`)), []byte(`{}`))

	if _, err := env.Admin().Controller().Revoke(ctx, w.buyer.ID(), "compromised"); err != nil {
		t.Fatal(err)
	}
	provider, err := w.quoter.Session(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	v, err := provider.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.State != workgroups.StateClosed || v.CloseReason != workgroups.CloseIdentityRevoked || v.Envelopes != 1 {
		t.Fatalf("after revocation the quoter sees: %s (%s), %d envelopes", v.State, v.CloseReason, v.Envelopes)
	}

	// It keeps trying: through the SDK, on the connection it already had, and by proposing anew.
	sctx, scancel := context.WithTimeout(ctx, time.Minute)
	_, err = sess.Send(sctx, "quote.request", []byte(`{"after":"revocation"}`))
	scancel()
	if err == nil {
		t.Fatal("a revoked agent could still send")
	}
	t.Logf("send after revocation: %v", err)
	if err := held.write(heldFrame); err == nil {
		if line, err := held.line(); err == nil {
			var ack api.RelayAck
			if jerr := json.Unmarshal(line, &ack); jerr != nil || ack.OK {
				t.Fatalf("the connection opened before revocation still relays: %s", line)
			}
			t.Logf("held connection refused: %s", line)
		}
	}
	pctx, pcancel := context.WithTimeout(ctx, time.Minute)
	_, err = w.buyer.Propose(pctx, w.ad.ID, workgroups.Proposal{})
	pcancel()
	if err == nil {
		t.Fatal("a revoked agent could still propose")
	}
	unchanged(t, ctx, provider, v)

	// What was accepted before the revocation is still delivered, and nothing after it.
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	defer rcancel()
	in, err := provider.Receive(rctx)
	if err != nil || string(in.Payload) != `{"before":"revocation"}` {
		t.Fatalf("receive: %q %v", in.Payload, err)
	}
	nothingMore(t, ctx, provider, 1500*time.Millisecond)
}
