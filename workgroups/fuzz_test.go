package workgroups

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// Seed corpora live in testdata/fuzz/<FuzzName>/; the f.Add calls below
// only cover the smallest cases.

var fuzzLimits = FrameLimits{MaxHeaderBytes: 4 << 10, MaxPayloadBytes: 64 << 10}

func FuzzDecodeFrame(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("UME\x01\x00\x00\x00\x02{}\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		h, payload, err := DecodeFrame(r, fuzzLimits)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrUnsupportedVersion) {
				t.Fatalf("untyped error: %v", err)
			}
			if errors.Is(err, io.EOF) && len(data) != 0 {
				t.Fatalf("io.EOF with %d bytes of input", len(data))
			}
			return
		}
		// What was accepted is valid and describes its payload.
		if err := h.Validate(); err != nil {
			t.Fatalf("accepted an invalid header: %v", err)
		}
		sum := sha256.Sum256(payload)
		if h.Size != uint64(len(payload)) || h.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatal("accepted a payload its header does not describe")
		}
		if len(payload) > int(fuzzLimits.MaxPayloadBytes) {
			t.Fatal("payload over the limit")
		}
		// Round trip: encode -> decode gives the same envelope.
		frame, err := AppendFrame(nil, h, payload)
		if err != nil {
			t.Fatalf("cannot re-encode an accepted frame: %v", err)
		}
		h2, p2, err := DecodeFrame(bytes.NewReader(frame), fuzzLimits)
		if err != nil {
			t.Fatalf("cannot decode a re-encoded frame: %v", err)
		}
		if !equalHeaders(h, h2) || !bytes.Equal(payload, p2) {
			t.Fatal("round trip changed the envelope")
		}
		// Encoding is deterministic once decoded.
		frame2, _ := AppendFrame(nil, h2, p2)
		if !bytes.Equal(frame, frame2) {
			t.Fatal("encoding is not stable")
		}
	})
}

// roundTrip checks marshal(parse(marshal(v))) == marshal(v).
func roundTrip[T any](t *testing.T, v T, parse func([]byte) (T, error)) {
	t.Helper()
	b1, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	v2, err := parse(b1)
	if err != nil {
		t.Fatalf("re-parse of %s: %v", b1, err)
	}
	b2, err := json.Marshal(v2)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	if !bytes.Equal(b1, b2) {
		t.Fatalf("round trip:\n%s\n%s", b1, b2)
	}
}

func checkParseError(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLarge) {
		t.Fatalf("untyped error: %v", err)
	}
}

func FuzzParseTerms(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tm, err := ParseTerms(data)
		if err != nil {
			checkParseError(t, err)
			return
		}
		roundTrip(t, tm, ParseTerms)
		// The offer itself is always within the offer.
		if adm := tm.Admit(Proposal{}); !adm.Accepted() {
			t.Fatalf("empty proposal not accepted: %s", adm.Reason())
		}
	})
}

func FuzzParseContract(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseContract(data)
		if err != nil {
			checkParseError(t, err)
			return
		}
		roundTrip(t, c, ParseContract)
	})
}

func FuzzParseProposal(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseProposal(data)
		if err != nil {
			checkParseError(t, err)
			return
		}
		roundTrip(t, p, ParseProposal)
	})
}

// FuzzAdmit checks the admission rules on arbitrary terms and proposals:
// an accepted contract is valid and within every offered maximum and type;
// anything else names at least one deviation, and is held exactly when the
// terms say so and the proposal was valid.
func FuzzAdmit(f *testing.F) {
	f.Add([]byte(`{"max_duration":"1h","max_messages":10,"allowed_message_types":["a.*"],"max_envelope_bytes":100}`), []byte(`{"max_messages":11}`))
	f.Fuzz(func(t *testing.T, termsJSON, proposalJSON []byte) {
		tm, err := ParseTerms(termsJSON)
		if err != nil {
			return
		}
		p, err := ParseProposal(proposalJSON)
		if err != nil {
			return
		}
		adm := tm.Admit(p)
		switch adm.Verdict {
		case VerdictAccept:
			c := adm.Contract
			if err := c.Validate(); err != nil {
				t.Fatalf("accepted an invalid contract: %v", err)
			}
			if c.MaxDuration > tm.MaxDuration || c.MaxMessages > tm.MaxMessages || c.MaxEnvelopeBytes > tm.MaxEnvelopeBytes {
				t.Fatalf("accepted beyond the offer: %+v vs %+v", c, tm)
			}
			for _, typ := range c.AllowedMessageTypes {
				if !patternCovered(tm.AllowedMessageTypes, typ) {
					t.Fatalf("accepted type %q not offered", typ)
				}
			}
			for _, wg := range tm.RequiredWorkgroups {
				if !c.Requires(wg) {
					t.Fatalf("dropped required workgroup %s", wg)
				}
			}
			if len(adm.Deviations) != 0 {
				t.Fatal("accepted with deviations")
			}
		case VerdictHold, VerdictReject:
			if len(adm.Deviations) == 0 {
				t.Fatal("refused without a reason")
			}
			invalid := adm.Deviations[0].Term == "contract"
			if (adm.Verdict == VerdictHold) != (tm.HoldForProvider && !invalid) {
				t.Fatalf("verdict %s with hold_for_provider=%v", adm.Verdict, tm.HoldForProvider)
			}
		default:
			t.Fatalf("verdict %q", adm.Verdict)
		}
	})
}

func FuzzParseAdvertisement(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ad, err := ParseAdvertisement(data)
		if err != nil {
			checkParseError(t, err)
			return
		}
		roundTrip(t, ad, ParseAdvertisement)
		// Visibility never exceeds the scope.
		ms := []Membership{{Workgroup: WorkgroupID{Org: "fuzz", Name: "member"}, Role: RoleMember, Active: true}}
		if got := Visible(ms, []Advertisement{ad}); len(got) == 1 != ad.InScope(ms[0].Workgroup) {
			t.Fatal("Visible disagrees with InScope")
		}
	})
}

// FuzzParseIDs checks that every accepted spelling is canonical.
func FuzzParseIDs(f *testing.F) {
	f.Add("ses_aaaaaaaaaaaaaaaaaaaaaaaaaa")
	f.Fuzz(func(t *testing.T, s string) {
		if id, err := ParseSessionID(s); err == nil && id.String() != s {
			t.Fatalf("session id %q reads back as %q", s, id)
		}
		if id, err := ParseAdvertisementID(s); err == nil && id.String() != s {
			t.Fatalf("advertisement id %q reads back as %q", s, id)
		}
		if id, err := ParseEnvelopeID(s); err == nil && id.String() != s {
			t.Fatalf("envelope id %q reads back as %q", s, id)
		}
		if id, err := ParseWorkgroupID(s); err == nil && id.String() != s {
			t.Fatalf("workgroup id %q reads back as %q", s, id)
		}
		if ValidateMessageType(s) == nil && ValidateTypePattern(s) != nil {
			t.Fatalf("type %q is not a valid pattern", s)
		}
		if ValidateTypePattern(s) == nil && strings.HasSuffix(s, ".*") && TypeAllowed([]string{s}, strings.TrimSuffix(s, ".*")) {
			t.Fatalf("pattern %q matches its own prefix", s)
		}
	})
}

// FuzzParseConditions checks that Cedar text is either refused with
// ErrInvalid or yields forbid policies that never grant anything.
func FuzzParseConditions(f *testing.F) {
	f.Add(`forbid (principal, action, resource);`)
	a, err := NewAuthorizer()
	if err != nil {
		f.Fatal(err)
	}
	s, adm, err := Propose(mustSessionID(f, 1), sampleAd(f), acmeAgent, wgID("acme/trade"), Proposal{}, controller, t0)
	if err != nil || !adm.Accepted() {
		f.Fatal(err)
	}
	outsider := Request{Principal: principal(acmeOther), Action: ActionSend, Resource: SessionResource(s), At: t0.Add(time.Minute)}
	f.Fuzz(func(t *testing.T, text string) {
		c, err := ParseConditions(text)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		r := outsider
		r.Conditions = c
		if a.Decide(r).Allow {
			t.Fatal("conditions granted a send to a non-party")
		}
	})
}
