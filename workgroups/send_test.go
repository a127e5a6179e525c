package workgroups

import (
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestCheckSend(t *testing.T) {
	base := acceptedSession(t) // consumer acmeAgent, provider globexProv, 1h, 100 msgs, 64 KiB, quote.* and order.place
	now := t0.Add(time.Minute)
	covered := map[ViolationCode]bool{}
	for _, tc := range []struct {
		name     string
		session  func(s *Session)
		header   func(h *Header)
		sender   spiffeid.ID
		accepted uint64
		now      time.Time
		want     ViolationCode // "" for allowed
	}{
		{name: "consumer to provider", want: ""},
		{name: "provider to consumer", header: func(h *Header) { h.From, h.To = globexProv, acmeAgent }, sender: globexProv, want: ""},
		{name: "active session", session: func(s *Session) { _ = s.Activate(acmeAgent, now) }, want: ""},
		{name: "exact type allowed", header: func(h *Header) { h.Type = "order.place" }, want: ""},
		{name: "last message", accepted: 99, want: ""},
		{name: "payload at the limit", header: func(h *Header) { h.Size = 64 << 10 }, want: ""},
		{name: "just before the deadline", now: t0.Add(time.Hour - time.Nanosecond), want: ""},

		{name: "invalid header", header: func(h *Header) { h.Type = "" }, want: ViolationHeaderInvalid},
		{name: "another session", header: func(h *Header) { h.Session = mustSessionID(t, 77) }, want: ViolationSessionMismatch},
		{name: "proposed", session: func(s *Session) { *s = sessionIn(t, StateProposed); s.ID = base.ID }, want: ViolationSessionNotActive},
		{name: "held", session: func(s *Session) { *s = sessionIn(t, StateHeld); s.ID = base.ID }, want: ViolationSessionNotActive},
		{name: "rejected", session: func(s *Session) { *s = sessionIn(t, StateRejected); s.ID = base.ID }, want: ViolationSessionNotActive},
		{name: "closed", session: func(s *Session) { _ = s.Close(controller, CloseAdmin, now, "") }, want: ViolationSessionClosed},
		{name: "forged from", header: func(h *Header) { h.From = globexProv; h.To = acmeAgent }, sender: acmeAgent, want: ViolationSenderForged},
		{name: "unverified sender", sender: spiffeid.ID{}, want: ViolationSenderForged},
		{name: "outsider", header: func(h *Header) { h.From = controller }, sender: controller, want: ViolationNotParty},
		{name: "to self", header: func(h *Header) { h.To = acmeAgent }, want: ViolationWrongRecipient},
		{name: "to outsider", header: func(h *Header) { h.To = controller }, want: ViolationWrongRecipient},
		{name: "at the deadline", now: t0.Add(time.Hour), want: ViolationExpired},
		{name: "messages spent", accepted: 100, want: ViolationMaxMessages},
		{name: "type not allowed", header: func(h *Header) { h.Type = "order.cancel" }, want: ViolationTypeNotAllowed},
		{name: "type prefix without dot", header: func(h *Header) { h.Type = "quotes" }, want: ViolationTypeNotAllowed},
		{name: "payload too large", header: func(h *Header) { h.Size = 64<<10 + 1 }, want: ViolationTooLarge},
		{name: "intent declared, none required", header: func(h *Header) { h.Intent = &Intent{Purpose: "price check"} }, want: ""},
		{name: "intent required and declared", session: func(s *Session) { s.Contract.RequireIntent = true },
			header: func(h *Header) { h.Intent = &Intent{Purpose: "price check"} }, want: ""},
		{name: "intent required, none declared", session: func(s *Session) { s.Contract.RequireIntent = true }, want: ViolationIntentRequired},
		{name: "intent category allowed", session: func(s *Session) { s.Contract.IntentCategories = []string{"procurement"} },
			header: func(h *Header) { h.Intent = &Intent{Purpose: "buy", Category: "procurement"} }, want: ""},
		{name: "intent category not allowed", session: func(s *Session) { s.Contract.IntentCategories = []string{"procurement"} },
			header: func(h *Header) { h.Intent = &Intent{Purpose: "copy the price list", Category: "exfiltration"} }, want: ViolationIntentCategory},
		{name: "intent without a category where categories are listed", session: func(s *Session) { s.Contract.IntentCategories = []string{"procurement"} },
			header: func(h *Header) { h.Intent = &Intent{Purpose: "buy"} }, want: ViolationIntentCategory},
		{name: "intent malformed", header: func(h *Header) { h.Intent = &Intent{Purpose: "line\nbreak"} }, want: ViolationHeaderInvalid},
	} {
		covered[tc.want] = true
		t.Run(tc.name, func(t *testing.T) {
			s := base
			s.History = append([]Transition(nil), base.History...)
			if tc.session != nil {
				tc.session(&s)
			}
			h := sampleHeader(t, base, []byte("payload"))
			if tc.header != nil {
				tc.header(&h)
			}
			sender := acmeAgent
			if tc.sender != (spiffeid.ID{}) || tc.name == "unverified sender" {
				sender = tc.sender
			}
			at := now
			if !tc.now.IsZero() {
				at = tc.now
			}
			err := CheckSend(s, h, sender, tc.accepted, at)
			if tc.want == "" {
				wantErr(t, err, nil)
				return
			}
			var v *Violation
			if !errors.As(err, &v) || v.Code != tc.want {
				t.Fatalf("got %v, want code %s", err, tc.want)
			}
			if !errors.Is(err, ErrContractViolation) {
				t.Fatal("not ErrContractViolation")
			}
			if errors.Is(err, ErrSessionClosed) != (tc.want == ViolationSessionClosed) {
				t.Fatal("ErrSessionClosed match")
			}
			if v.Detail == "" {
				t.Fatal("no detail")
			}
		})
	}
	for _, code := range []ViolationCode{ViolationHeaderInvalid, ViolationSessionMismatch, ViolationSessionNotActive,
		ViolationSessionClosed, ViolationSenderForged, ViolationNotParty, ViolationWrongRecipient, ViolationExpired,
		ViolationMaxMessages, ViolationTypeNotAllowed, ViolationTooLarge, ViolationIntentRequired, ViolationIntentCategory} {
		if !covered[code] {
			t.Errorf("no case for violation code %s", code)
		}
	}
}

// A session that has just been accepted is activated by its first envelope;
// after that the same checks hold.
func TestCheckSendActivation(t *testing.T) {
	s := acceptedSession(t)
	h := sampleHeader(t, s, []byte("x"))
	if err := CheckSend(s, h, acmeAgent, 0, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.Activate(acmeAgent, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := CheckSend(s, h, acmeAgent, 1, t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.Activate(acmeAgent, t0.Add(2*time.Minute)); !errors.Is(err, ErrIllegalTransition) {
		t.Fatal("activated twice")
	}
}
