package workgroups

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// sessionIn returns a session driven to state by legal transitions.
func sessionIn(t *testing.T, state State) Session {
	t.Helper()
	s, err := NewSession(mustSessionID(t, 9), mustAdID(t, 7), acmeAgent, globexProv, wgID("acme/trade"),
		sampleTerms().Admit(Proposal{}).Contract, t0)
	if err != nil {
		t.Fatal(err)
	}
	at := t0.Add(time.Second)
	steps := map[State][]func() error{
		StateProposed: nil,
		StateHeld:     {func() error { return s.Hold(controller, at, "outside terms") }},
		StateAccepted: {func() error { return s.Accept(controller, at, "within terms") }},
		StateActive: {
			func() error { return s.Accept(controller, at, "within terms") },
			func() error { return s.Activate(acmeAgent, at) },
		},
		StateClosed: {
			func() error { return s.Accept(controller, at, "within terms") },
			func() error { return s.Close(globexProv, CloseByProvider, at, "") },
		},
		StateRejected: {func() error { return s.Reject(controller, at, "outside terms") }},
	}
	for _, step := range steps[state] {
		if err := step(); err != nil {
			t.Fatalf("driving to %s: %v", state, err)
		}
	}
	if s.State != state {
		t.Fatalf("in %s, want %s", s.State, state)
	}
	return s
}

func TestCanTransition(t *testing.T) {
	all := []State{"", StateProposed, StateHeld, StateAccepted, StateActive, StateClosed, StateRejected}
	legal := map[[2]State]bool{
		{"", StateProposed}:            true,
		{StateProposed, StateHeld}:     true,
		{StateProposed, StateAccepted}: true,
		{StateProposed, StateRejected}: true,
		{StateHeld, StateAccepted}:     true,
		{StateHeld, StateRejected}:     true,
		{StateAccepted, StateActive}:   true,
		{StateAccepted, StateClosed}:   true,
		{StateActive, StateClosed}:     true,
	}
	for _, from := range all {
		for _, to := range all {
			if got := CanTransition(from, to); got != legal[[2]State{from, to}] {
				t.Errorf("CanTransition(%q, %q) = %v", from, to, got)
			}
		}
	}
	if CanTransition("bogus", StateClosed) {
		t.Error("unknown state has transitions")
	}
}

// TestSessionTransitions tries every operation from every state, with an
// actor entitled to it, and checks exactly the legal ones succeed.
func TestSessionTransitions(t *testing.T) {
	at := t0.Add(time.Minute)
	ops := []struct {
		name string
		to   State
		do   func(s *Session) error
	}{
		{"hold", StateHeld, func(s *Session) error { return s.Hold(controller, at, "r") }},
		{"accept", StateAccepted, func(s *Session) error { return s.Accept(globexProv, at, "r") }},
		{"reject", StateRejected, func(s *Session) error { return s.Reject(globexProv, at, "r") }},
		{"activate", StateActive, func(s *Session) error { return s.Activate(acmeAgent, at) }},
		{"close", StateClosed, func(s *Session) error { return s.Close(acmeAgent, CloseByConsumer, at, "") }},
	}
	legal := map[State][]State{
		StateProposed: {StateHeld, StateAccepted, StateRejected},
		StateHeld:     {StateAccepted, StateRejected},
		StateAccepted: {StateActive, StateClosed},
		StateActive:   {StateClosed},
	}
	for _, from := range []State{StateProposed, StateHeld, StateAccepted, StateActive, StateClosed, StateRejected} {
		for _, op := range ops {
			t.Run(string(from)+"/"+op.name, func(t *testing.T) {
				s := sessionIn(t, from)
				before := len(s.History)
				err := op.do(&s)
				ok := false
				for _, to := range legal[from] {
					ok = ok || to == op.to
				}
				if ok {
					if err != nil {
						t.Fatalf("legal transition refused: %v", err)
					}
					last := s.History[len(s.History)-1]
					if s.State != op.to || len(s.History) != before+1 || last.From != from || last.To != op.to || !last.At.Equal(at) || last.Actor.IsZero() {
						t.Fatalf("not recorded: %+v", s.History)
					}
					wantErr(t, s.Validate(), nil)
					return
				}
				var te *TransitionError
				if !errors.As(err, &te) || !errors.Is(err, ErrIllegalTransition) || te.From != from || te.To != op.to {
					t.Fatalf("illegal transition: error %v", err)
				}
				if errors.Is(err, ErrSessionClosed) != from.Terminal() {
					t.Fatalf("ErrSessionClosed match = %v from %s", errors.Is(err, ErrSessionClosed), from)
				}
				if s.State != from || len(s.History) != before {
					t.Fatal("a refused transition changed the session")
				}
			})
		}
	}
}

func TestSessionActors(t *testing.T) {
	at := t0.Add(time.Minute)
	for _, tc := range []struct {
		name string
		from State
		do   func(s *Session) error
		ok   bool
	}{
		{"consumer cannot accept", StateProposed, func(s *Session) error { return s.Accept(acmeAgent, at, "") }, false},
		{"controller accepts on the contract", StateProposed, func(s *Session) error { return s.Accept(controller, at, "") }, true},
		{"controller cannot accept held", StateHeld, func(s *Session) error { return s.Accept(controller, at, "") }, false},
		{"provider accepts held", StateHeld, func(s *Session) error { return s.Accept(globexProv, at, "") }, true},
		{"consumer cannot hold", StateProposed, func(s *Session) error { return s.Hold(acmeAgent, at, "") }, false},
		{"consumer withdraws", StateHeld, func(s *Session) error { return s.Reject(acmeAgent, at, "withdrawn") }, true},
		{"controller expires held", StateHeld, func(s *Session) error { return s.Reject(controller, at, "expired") }, true},
		{"no actor", StateProposed, func(s *Session) error { return s.Reject(spiffeid.ID{}, at, "") }, false},
		{"zero time", StateProposed, func(s *Session) error { return s.Reject(controller, time.Time{}, "") }, false},
		{"stranger cannot activate", StateAccepted, func(s *Session) error { return s.Activate(controller, at) }, false},
		{"provider activates", StateAccepted, func(s *Session) error { return s.Activate(globexProv, at) }, true},
		{"provider cannot close as consumer", StateActive, func(s *Session) error { return s.Close(globexProv, CloseByConsumer, at, "") }, false},
		{"consumer cannot close as provider", StateActive, func(s *Session) error { return s.Close(acmeAgent, CloseByProvider, at, "") }, false},
		{"party cannot claim expiry", StateActive, func(s *Session) error { return s.Close(acmeAgent, CloseExpired, at, "") }, false},
		{"unknown reason", StateActive, func(s *Session) error { return s.Close(controller, CloseReason("bored"), at, "") }, false},
		{"controller closes for expiry", StateActive, func(s *Session) error { return s.Close(controller, CloseExpired, at, "") }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := sessionIn(t, tc.from)
			err := tc.do(&s)
			if tc.ok {
				wantErr(t, err, nil)
				return
			}
			wantErr(t, err, ErrIllegalTransition)
			if s.State != tc.from {
				t.Fatal("refused transition changed the state")
			}
		})
	}
}

func TestSessionCloseReasons(t *testing.T) {
	for _, r := range []CloseReason{CloseByConsumer, CloseByProvider, CloseMaxMessages, CloseExpired,
		CloseMembershipRemoved, CloseIdentityRevoked, CloseIdentitySuspended, CloseWorkgroupDeleted, CloseAdmin} {
		t.Run(string(r), func(t *testing.T) {
			s := sessionIn(t, StateActive)
			actor := controller
			switch r {
			case CloseByConsumer:
				actor = acmeAgent
			case CloseByProvider:
				actor = globexProv
			}
			if err := s.Close(actor, r, t0.Add(time.Hour), "detail"); err != nil {
				t.Fatal(err)
			}
			if s.CloseReason != r || s.History[len(s.History)-1].Reason != string(r)+": detail" {
				t.Fatalf("reason not recorded: %+v", s)
			}
			wantErr(t, s.Validate(), nil)
			wantErr(t, s.Close(actor, r, t0.Add(time.Hour), ""), ErrSessionClosed)
		})
	}
}

func TestNewSessionErrors(t *testing.T) {
	c := sampleTerms().Admit(Proposal{}).Contract
	sid, aid, wg := mustSessionID(t, 1), mustAdID(t, 2), wgID("acme/trade")
	for _, tc := range []struct {
		name string
		err  func() error
	}{
		{"no id", func() error { _, err := NewSession(SessionID{}, aid, acmeAgent, globexProv, wg, c, t0); return err }},
		{"no ad", func() error {
			_, err := NewSession(sid, AdvertisementID{}, acmeAgent, globexProv, wg, c, t0)
			return err
		}},
		{"bad consumer", func() error { _, err := NewSession(sid, aid, spiffeid.ID{}, globexProv, wg, c, t0); return err }},
		{"bad provider", func() error { _, err := NewSession(sid, aid, acmeAgent, spiffeid.ID{}, wg, c, t0); return err }},
		{"self", func() error { _, err := NewSession(sid, aid, acmeAgent, acmeAgent, wg, c, t0); return err }},
		{"bad workgroup", func() error { _, err := NewSession(sid, aid, acmeAgent, globexProv, WorkgroupID{}, c, t0); return err }},
		{"zero time", func() error { _, err := NewSession(sid, aid, acmeAgent, globexProv, wg, c, time.Time{}); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) { wantErr(t, tc.err(), ErrInvalid) })
	}
	s, err := NewSession(sid, aid, acmeAgent, globexProv, wg, c, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Contract.Requires(wg) {
		t.Fatal("session workgroup not added to required workgroups")
	}
	if s.State != StateProposed || len(s.History) != 1 || s.History[0].From != "" || s.History[0].Actor != acmeAgent {
		t.Fatalf("first transition: %+v", s.History)
	}
	// Accepting an invalid contract is refused.
	bad, _ := NewSession(sid, aid, acmeAgent, globexProv, wg, Contract{}, t0)
	wantErr(t, bad.Accept(controller, t0, ""), ErrIllegalTransition)
}

func TestPropose(t *testing.T) {
	ad := sampleAd(t)
	wg := wgID("acme/trade")
	s, adm, err := Propose(mustSessionID(t, 1), ad, acmeAgent, wg, Proposal{MaxMessages: 10}, controller, t0)
	if err != nil || !adm.Accepted() || s.State != StateAccepted || s.Contract.MaxMessages != 10 {
		t.Fatalf("%v %+v %v", err, adm, s.State)
	}
	if s.History[1].Actor != controller || s.History[1].Reason != "within the advertised terms" {
		t.Fatalf("acceptance record: %+v", s.History[1])
	}
	s, adm, err = Propose(mustSessionID(t, 2), ad, acmeAgent, wg, Proposal{MaxMessages: 1000}, controller, t0)
	if err != nil || adm.Verdict != VerdictReject || s.State != StateRejected || s.History[1].Reason != adm.Reason() {
		t.Fatalf("%v %+v %v", err, adm, s.State)
	}
	ad.Terms.HoldForProvider = true
	s, adm, err = Propose(mustSessionID(t, 3), ad, acmeAgent, wg, Proposal{MaxMessages: 1000}, controller, t0)
	if err != nil || adm.Verdict != VerdictHold || s.State != StateHeld {
		t.Fatalf("%v %+v %v", err, adm, s.State)
	}
	wantErr(t, s.Accept(globexProv, t0.Add(time.Minute), "approved"), nil)
	if s.Contract.MaxMessages != 1000 {
		t.Fatal("the held contract is what the provider approves")
	}
	_, _, err = Propose(mustSessionID(t, 4), ad, acmeAgent, wgID("acme/other"), Proposal{}, controller, t0)
	wantErr(t, err, ErrInvalid)
	_, _, err = Propose(mustSessionID(t, 5), ad, globexProv, wg, Proposal{}, controller, t0)
	wantErr(t, err, ErrInvalid)
	ad.ID = AdvertisementID{}
	_, _, err = Propose(mustSessionID(t, 6), ad, acmeAgent, wg, Proposal{}, controller, t0)
	wantErr(t, err, ErrInvalid)
}

func TestDeadlineAndDueClose(t *testing.T) {
	s := acceptedSession(t) // accepted at t0, max 1h, 100 messages
	if !s.Deadline().Equal(t0.Add(time.Hour)) {
		t.Fatalf("deadline %v", s.Deadline())
	}
	if !sessionIn(t, StateProposed).Deadline().IsZero() {
		t.Fatal("an unaccepted session has no deadline")
	}
	for _, tc := range []struct {
		accepted uint64
		now      time.Time
		reason   CloseReason
		due      bool
	}{
		{0, t0, "", false},
		{99, t0.Add(time.Hour - time.Nanosecond), "", false},
		{100, t0, CloseMaxMessages, true},
		{0, t0.Add(time.Hour), CloseExpired, true},
		{100, t0.Add(2 * time.Hour), CloseExpired, true},
	} {
		r, due := s.DueClose(tc.accepted, tc.now)
		if r != tc.reason || due != tc.due {
			t.Errorf("DueClose(%d, %v) = %q %v", tc.accepted, tc.now, r, due)
		}
	}
	if _, due := sessionIn(t, StateClosed).DueClose(1000, t0.Add(48*time.Hour)); due {
		t.Fatal("closed session due to close")
	}
}

func TestSessionValidateAndJSON(t *testing.T) {
	s := sessionIn(t, StateClosed)
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back Session
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	wantErr(t, back.Validate(), nil)
	if !reflect.DeepEqual(back.Contract, s.Contract) || len(back.History) != len(s.History) || back.CloseReason != s.CloseReason {
		t.Fatalf("round trip: %s", b)
	}
	for _, tc := range []struct {
		name   string
		mutate func(s *Session)
	}{
		{"state disagrees", func(s *Session) { s.State = StateActive }},
		{"skipped step", func(s *Session) { s.History = append(s.History[:1], s.History[2:]...) }},
		{"no history", func(s *Session) { s.History = nil }},
		{"accepted_at disagrees", func(s *Session) { s.AcceptedAt = s.AcceptedAt.Add(time.Second) }},
		{"close reason missing", func(s *Session) { s.CloseReason = "" }},
		{"bad close reason", func(s *Session) { s.CloseReason = "x" }},
		{"no actor", func(s *Session) { s.History[1].Actor = spiffeid.ID{} }},
		{"bad contract", func(s *Session) { s.Contract.MaxMessages = 0 }},
		{"self", func(s *Session) { s.Provider = s.Consumer }},
		{"no id", func(s *Session) { s.ID = SessionID{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := s
			c.History = append([]Transition(nil), s.History...)
			tc.mutate(&c)
			wantErr(t, c.Validate(), ErrInvalid)
		})
	}
	open := sessionIn(t, StateActive)
	open.CloseReason = CloseAdmin
	wantErr(t, open.Validate(), ErrInvalid)
}

func TestPeer(t *testing.T) {
	s := acceptedSession(t)
	if p, ok := s.Peer(acmeAgent); !ok || p != globexProv {
		t.Fatal("consumer's peer")
	}
	if p, ok := s.Peer(globexProv); !ok || p != acmeAgent {
		t.Fatal("provider's peer")
	}
	if _, ok := s.Peer(controller); ok {
		t.Fatal("stranger has a peer")
	}
	if _, ok := (Session{}).Peer(spiffeid.ID{}); ok {
		t.Fatal("zero ID is a party of the zero session")
	}
}
