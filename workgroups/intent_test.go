package workgroups

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/workgroups/authz"
)

func TestAdmitIntent(t *testing.T) {
	ad := sampleAd(t)
	ad.Terms.RequireIntent = true
	ad.Terms.IntentCategories = []string{"procurement", "support.billing"}
	for _, tc := range []struct {
		name    string
		intent  *Intent
		hold    bool
		verdict Verdict
		term    string
	}{
		{"declared, listed category", &Intent{Purpose: "restock widgets", Category: "procurement"}, false, VerdictAccept, ""},
		{"none declared", nil, false, VerdictReject, "require_intent"},
		{"none declared, held", nil, true, VerdictHold, "require_intent"},
		{"category not listed", &Intent{Purpose: "copy the price list", Category: "exfiltration"}, false, VerdictReject, "intent_categories"},
		{"no category", &Intent{Purpose: "restock"}, false, VerdictReject, "intent_categories"},
		{"malformed", &Intent{Purpose: "two\nlines", Category: "procurement"}, false, VerdictReject, "proposal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := ad
			a.Terms.HoldForProvider = tc.hold
			s, adm, err := Propose(mustSessionID(t, 9), a, acmeAgent, wgID("acme/trade"), Proposal{Intent: tc.intent}, controller, t0)
			if err != nil {
				t.Fatal(err)
			}
			if adm.Verdict != tc.verdict {
				t.Fatalf("verdict %s (%s), want %s", adm.Verdict, adm.Reason(), tc.verdict)
			}
			if tc.term != "" && (len(adm.Deviations) != 1 || adm.Deviations[0].Term != tc.term) {
				t.Fatalf("deviations %+v, want one on %s", adm.Deviations, tc.term)
			}
			if adm.Verdict == VerdictAccept {
				if s.Intent == nil || *s.Intent != *tc.intent {
					t.Fatalf("session intent %+v, want %+v", s.Intent, tc.intent)
				}
				if !s.Contract.RequireIntent || !slices.Equal(s.Contract.IntentCategories, ad.Terms.IntentCategories) {
					t.Fatalf("contract lost the intent terms: %+v", s.Contract)
				}
				if err := s.Validate(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestIntentTermsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cats []string
		ok   bool
	}{
		{"none", nil, true},
		{"two", []string{"research", "support.billing"}, true},
		{"upper case", []string{"Research"}, false},
		{"twice", []string{"research", "research"}, false},
		{"empty", []string{""}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			terms := sampleTerms()
			terms.IntentCategories = tc.cats
			err := terms.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok %v", err, tc.ok)
			}
			if err != nil && (!errors.Is(err, ErrInvalid) || strings.Contains(err.Error(), "\n")) {
				t.Fatalf("error %q: want one line wrapping ErrInvalid", err)
			}
		})
	}
	// Terms with intent fields round-trip through strict JSON.
	terms := sampleTerms()
	terms.RequireIntent, terms.IntentCategories = true, []string{"research"}
	got, err := ParseTerms([]byte(`{"max_duration":"1h","max_messages":100,"allowed_message_types":["quote.*"],"max_envelope_bytes":1024,"require_intent":true,"intent_categories":["research"]}`))
	if err != nil || !got.RequireIntent || !slices.Equal(got.IntentCategories, []string{"research"}) {
		t.Fatalf("ParseTerms: %+v, %v", got, err)
	}
}

func TestFrameCarriesIntent(t *testing.T) {
	s := acceptedSession(t)
	h := sampleHeader(t, s, []byte("p"))
	h.Intent = &Intent{Purpose: "prix du café ☕", Category: "procurement"}
	var buf bytes.Buffer
	if err := EncodeFrame(&buf, h, []byte("p")); err != nil {
		t.Fatal(err)
	}
	got, _, err := DecodeFrame(&buf, FrameLimits{})
	if err != nil || got.Intent == nil || *got.Intent != *h.Intent {
		t.Fatalf("decoded %+v, %v", got.Intent, err)
	}
	// A malformed intent is refused by the sender's own framing.
	h.Intent = &Intent{Purpose: "bidi \u202e override"}
	if err := EncodeFrame(&buf, h, []byte("p")); !errors.Is(err, ErrInvalid) || !errors.Is(err, authz.ErrInvalidIntent) {
		t.Fatalf("EncodeFrame with a bidi override: %v", err)
	}
}

// One policy per A2A request: an organisation forbids proposals and envelopes whose declared intent is in a
// category it does not want, and proposals that declare none.
func TestAuthorizerIntent(t *testing.T) {
	a := mustAuthorizer(t, OrgPolicy{Org: "globex", Name: "intent", Text: `
		@id("no-exfiltration")
		forbid (principal, action in [Umbra::Action::"propose", Umbra::Action::"send"], resource)
		when { context has intent && context.intent.category == "exfiltration" };
		@id("say-why")
		forbid (principal, action == Umbra::Action::"propose", resource) unless { context has intent };`})
	ad := AdvertisementResource(sampleAd(t))
	propose := func(in *Intent) Decision {
		return a.Decide(Request{Principal: principal(acmeAgent, "acme/trade"), Action: ActionPropose, Resource: ad,
			Context: ProposalContext(Proposal{Intent: in})})
	}
	if d := propose(&Intent{Purpose: "restock", Category: "procurement"}); !d.Allow {
		t.Fatalf("procurement proposal denied: %+v", d.Diagnostic)
	}
	if d := propose(&Intent{Purpose: "restock"}); !d.Allow {
		t.Fatalf("proposal without a category denied: %+v", d.Diagnostic)
	}
	if d := propose(nil); d.Allow || !slices.Equal(d.Diagnostic.Policies, []string{"org/globex/intent/say-why"}) {
		t.Fatalf("proposal without intent: %+v", d)
	}
	if d := propose(&Intent{Purpose: "dump it", Category: "exfiltration"}); d.Allow ||
		!slices.Equal(d.Diagnostic.Policies, []string{"org/globex/intent/no-exfiltration"}) {
		t.Fatalf("exfiltration proposal: %+v", d)
	}
	s := acceptedSession(t)
	send := func(in *Intent) Decision {
		h := sampleHeader(t, s, []byte("x"))
		h.Intent = in
		return a.Decide(Request{Principal: principal(acmeAgent, "acme/trade"), Action: ActionSend, Resource: SessionResource(s),
			Context: EnvelopeContext(h, 0)})
	}
	if d := send(nil); !d.Allow {
		t.Fatalf("envelope without intent denied: %+v", d.Diagnostic)
	}
	if d := send(&Intent{Purpose: "dump it", Category: "exfiltration"}); d.Allow || len(d.Diagnostic.Errors) > 0 {
		t.Fatalf("exfiltration envelope: %+v", d)
	}
}

// BenchmarkIntentEnvelope is what a declared intent costs the relay per envelope: decoding a 256-byte frame
// that carries one, the contract's check, and a decision with a policy that tests it. Compare with
// BenchmarkDecodeFrame/256B, BenchmarkCheckSend and BenchmarkDecideSend.
func BenchmarkIntentEnvelope(b *testing.B) {
	s := acceptedSession(b)
	s.Contract.RequireIntent, s.Contract.IntentCategories = true, []string{"procurement"}
	payload := bytes.Repeat([]byte("x"), 256)
	h := sampleHeader(b, s, payload)
	h.Intent = &Intent{Purpose: "restock widgets for the Lyon shop", Category: "procurement"}
	frame, err := AppendFrame(nil, h, payload)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		r := bytes.NewReader(frame)
		for b.Loop() {
			r.Reset(frame)
			if _, _, err := DecodeFrame(r, FrameLimits{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("checksend", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := CheckSend(s, h, acmeAgent, 5, t0.Add(time.Minute)); err != nil {
				b.Fatal(err)
			}
		}
	})
	a, err := NewAuthorizer(OrgPolicy{Org: "globex", Name: "intent", Text: `forbid (principal, action, resource)
		when { context has intent && context.intent.category == "exfiltration" };`})
	if err != nil {
		b.Fatal(err)
	}
	req := Request{Principal: principal(acmeAgent, "acme/trade"), Action: ActionSend, Resource: SessionResource(s), Context: EnvelopeContext(h, 5), At: t0}
	b.Run("decide", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !a.Decide(req).Allow {
				b.Fatal("denied")
			}
		}
	})
}
