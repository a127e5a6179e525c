package workgroups

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// State is a session's place in its life cycle:
//
//	proposed ──► accepted ──► active ──► closed
//	   │  ▲          │                     ▲
//	   │  └─ held ───┤                     │
//	   ▼      │      └─────────────────────┘
//	rejected ◄┘
//
// held is a proposal outside the terms, awaiting its provider. closed and
// rejected are terminal.
type State string

const (
	StateProposed State = "proposed"
	StateHeld     State = "held"
	StateAccepted State = "accepted"
	StateActive   State = "active"
	StateClosed   State = "closed"
	StateRejected State = "rejected"
)

// Terminal reports whether no transition leaves s.
func (s State) Terminal() bool { return s == StateClosed || s == StateRejected }

// CanTransition reports whether the state machine has an edge from → to.
// The empty state is the origin of the first transition, into proposed.
func CanTransition(from, to State) bool {
	switch from {
	case "":
		return to == StateProposed
	case StateProposed:
		return to == StateAccepted || to == StateRejected || to == StateHeld
	case StateHeld:
		return to == StateAccepted || to == StateRejected
	case StateAccepted:
		return to == StateActive || to == StateClosed
	case StateActive:
		return to == StateClosed
	}
	return false
}

// CloseReason says why a session closed.
type CloseReason string

const (
	CloseByConsumer        CloseReason = "by_consumer"
	CloseByProvider        CloseReason = "by_provider"
	CloseMaxMessages       CloseReason = "max_messages"
	CloseExpired           CloseReason = "expired"
	CloseMembershipRemoved CloseReason = "membership_removed"
	CloseIdentityRevoked   CloseReason = "identity_revoked"
	CloseIdentitySuspended CloseReason = "identity_suspended"
	CloseWorkgroupDeleted  CloseReason = "workgroup_deleted"
	CloseAdmin             CloseReason = "admin"
)

func (r CloseReason) valid() bool {
	switch r {
	case CloseByConsumer, CloseByProvider, CloseMaxMessages, CloseExpired,
		CloseMembershipRemoved, CloseIdentityRevoked, CloseIdentitySuspended, CloseWorkgroupDeleted, CloseAdmin:
		return true
	}
	return false
}

// Transition is one recorded step of a session.
type Transition struct {
	From   State       `json:"from"`
	To     State       `json:"to"`
	Actor  spiffeid.ID `json:"actor"`
	At     time.Time   `json:"at"`
	Reason string      `json:"reason"`
}

// TransitionError is returned when a transition is refused. It matches
// [ErrIllegalTransition], and also [ErrSessionClosed] when the session is
// already in a terminal state.
type TransitionError struct {
	Session SessionID
	From    State
	To      State
	Detail  string
}

func (e *TransitionError) Error() string {
	msg := fmt.Sprintf("workgroups: session %s: cannot go from %s to %s", e.Session, e.From, e.To)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// Is matches ErrIllegalTransition, and ErrSessionClosed from a terminal state.
func (e *TransitionError) Is(target error) bool {
	return target == ErrIllegalTransition || target == ErrSessionClosed && e.From.Terminal()
}

// Session is an engagement between a consumer and a provider inside one
// workgroup, under a contract. Every change of State is appended to History;
// methods with a pointer receiver either record a transition or return an
// error and change nothing. Actors are the SPIFFE IDs of whoever acts: a
// party, or the controller acting on the contract's or an admin's behalf.
type Session struct {
	ID            SessionID       `json:"id"`
	Advertisement AdvertisementID `json:"advertisement"`
	Consumer      spiffeid.ID     `json:"consumer"`
	Provider      spiffeid.ID     `json:"provider"`
	Workgroup     WorkgroupID     `json:"workgroup"`
	// Contract is what was asked while proposed or held, and frozen once
	// accepted.
	Contract Contract `json:"contract"`
	// Intent is the purpose the consumer declared in its proposal, if any.
	Intent      *Intent      `json:"intent,omitempty"`
	State       State        `json:"state"`
	AcceptedAt  time.Time    `json:"accepted_at,omitzero"`
	CloseReason CloseReason  `json:"close_reason,omitempty"`
	History     []Transition `json:"history"`
}

// NewSession records a proposal by consumer to the provider of advertisement
// ad in workgroup wg. The session's workgroup is added to the contract's
// required workgroups if missing.
func NewSession(id SessionID, ad AdvertisementID, consumer, provider spiffeid.ID, wg WorkgroupID, c Contract, now time.Time) (Session, error) {
	if id.IsZero() || ad.IsZero() {
		return Session{}, fmt.Errorf("%w: session: no id or advertisement", ErrInvalid)
	}
	if _, err := ParseIdentity(consumer); err != nil {
		return Session{}, fmt.Errorf("session %s consumer: %w", id, err)
	}
	if _, err := ParseIdentity(provider); err != nil {
		return Session{}, fmt.Errorf("session %s provider: %w", id, err)
	}
	if consumer == provider {
		return Session{}, fmt.Errorf("%w: session %s: consumer and provider are the same identity", ErrInvalid, id)
	}
	if err := wg.Validate(); err != nil {
		return Session{}, fmt.Errorf("session %s: %w", id, err)
	}
	if now.IsZero() {
		return Session{}, fmt.Errorf("%w: session %s: zero time", ErrInvalid, id)
	}
	if !c.Requires(wg) {
		c.RequiredWorkgroups = unionWorkgroups(c.RequiredWorkgroups, []WorkgroupID{wg})
	}
	s := Session{ID: id, Advertisement: ad, Consumer: consumer, Provider: provider, Workgroup: wg, Contract: c}
	if err := s.transition(StateProposed, consumer, now, "proposed"); err != nil {
		return Session{}, err
	}
	return s, nil
}

// Propose is the usual way a proposal is made: it checks that the consumer
// proposes within the advertisement's scope, admits the proposal against the
// advertised terms, and records the outcome with actor (normally the
// controller's own identity) as the one who accepted, held or rejected it.
func Propose(id SessionID, ad Advertisement, consumer spiffeid.ID, wg WorkgroupID, p Proposal, actor spiffeid.ID, now time.Time) (Session, Admission, error) {
	if err := ad.Validate(); err != nil {
		return Session{}, Admission{}, err
	}
	if !ad.InScope(wg) {
		return Session{}, Admission{}, fmt.Errorf("%w: advertisement %s is not scoped to workgroup %s", ErrInvalid, ad.ID, wg)
	}
	adm := ad.Terms.Admit(p)
	s, err := NewSession(id, ad.ID, consumer, ad.Provider, wg, adm.Contract, now)
	if err != nil {
		return Session{}, Admission{}, err
	}
	if p.Intent != nil && p.Validate() == nil {
		in := *p.Intent
		s.Intent = &in
	}
	switch adm.Verdict {
	case VerdictAccept:
		err = s.Accept(actor, now, adm.Reason())
	case VerdictHold:
		err = s.Hold(actor, now, adm.Reason())
	default:
		err = s.Reject(actor, now, adm.Reason())
	}
	if err != nil {
		return Session{}, Admission{}, err
	}
	return s, adm, nil
}

func (s *Session) transition(to State, actor spiffeid.ID, at time.Time, reason string) error {
	if !CanTransition(s.State, to) {
		return &TransitionError{Session: s.ID, From: s.State, To: to}
	}
	if actor.IsZero() {
		return &TransitionError{Session: s.ID, From: s.State, To: to, Detail: "no actor"}
	}
	if at.IsZero() {
		return &TransitionError{Session: s.ID, From: s.State, To: to, Detail: "zero time"}
	}
	s.History = append(s.History, Transition{From: s.State, To: to, Actor: actor, At: at, Reason: reason})
	s.State = to
	return nil
}

func (s *Session) refuse(to State, detail string) error {
	return &TransitionError{Session: s.ID, From: s.State, To: to, Detail: detail}
}

// Hold parks a proposal outside the terms for the provider to decide.
func (s *Session) Hold(actor spiffeid.ID, at time.Time, reason string) error {
	if actor == s.Consumer {
		return s.refuse(StateHeld, "the consumer cannot hold its own proposal")
	}
	return s.transition(StateHeld, actor, at, reason)
}

// Accept freezes the contract. The consumer never accepts its own proposal;
// a held proposal is accepted only by the provider. The contract must be
// valid.
func (s *Session) Accept(actor spiffeid.ID, at time.Time, reason string) error {
	switch {
	case !CanTransition(s.State, StateAccepted):
		return s.refuse(StateAccepted, "")
	case actor == s.Consumer:
		return s.refuse(StateAccepted, "the consumer cannot accept its own proposal")
	case s.State == StateHeld && actor != s.Provider:
		return s.refuse(StateAccepted, "only the provider accepts a held proposal")
	}
	if err := s.Contract.Validate(); err != nil {
		return s.refuse(StateAccepted, err.Error())
	}
	if err := s.transition(StateAccepted, actor, at, reason); err != nil {
		return err
	}
	s.AcceptedAt = at
	return nil
}

// Reject ends a proposed or held session: the provider declining, the
// consumer withdrawing, or the controller (outside the terms, or a held
// proposal that waited too long).
func (s *Session) Reject(actor spiffeid.ID, at time.Time, reason string) error {
	return s.transition(StateRejected, actor, at, reason)
}

// Activate records the first envelope, sent by actor, which must be a party.
func (s *Session) Activate(actor spiffeid.ID, at time.Time) error {
	if !s.isParty(actor) {
		return s.refuse(StateActive, "only a party activates a session")
	}
	return s.transition(StateActive, actor, at, "first envelope")
}

// Close ends an accepted or active session. by_consumer must be closed by the
// consumer and by_provider by the provider; other reasons are the
// controller's or an admin's, and no party may claim them.
func (s *Session) Close(actor spiffeid.ID, reason CloseReason, at time.Time, detail string) error {
	if !reason.valid() {
		return s.refuse(StateClosed, fmt.Sprintf("unknown close reason %q", clip(string(reason))))
	}
	switch reason {
	case CloseByConsumer:
		if actor != s.Consumer {
			return s.refuse(StateClosed, "by_consumer needs the consumer")
		}
	case CloseByProvider:
		if actor != s.Provider {
			return s.refuse(StateClosed, "by_provider needs the provider")
		}
	default:
		if s.isParty(actor) {
			return s.refuse(StateClosed, "a party closes with by_consumer or by_provider")
		}
	}
	text := string(reason)
	if detail != "" {
		text += ": " + detail
	}
	if err := s.transition(StateClosed, actor, at, text); err != nil {
		return err
	}
	s.CloseReason = reason
	return nil
}

func (s Session) isParty(id spiffeid.ID) bool {
	return !id.IsZero() && (id == s.Consumer || id == s.Provider)
}

// Peer returns the other party, or false if id is not a party.
func (s Session) Peer(id spiffeid.ID) (spiffeid.ID, bool) {
	switch {
	case id.IsZero():
		return spiffeid.ID{}, false
	case id == s.Consumer:
		return s.Provider, true
	case id == s.Provider:
		return s.Consumer, true
	}
	return spiffeid.ID{}, false
}

// Deadline is the acceptance time plus the contract's max_duration, or the
// zero time if the session was never accepted.
func (s Session) Deadline() time.Time {
	if s.AcceptedAt.IsZero() {
		return time.Time{}
	}
	return s.AcceptedAt.Add(time.Duration(s.Contract.MaxDuration))
}

// DueClose reports whether an open session must be closed now, given the
// envelopes it has accepted: max_messages once the count is reached, expired
// once the deadline has passed.
func (s Session) DueClose(accepted uint64, now time.Time) (CloseReason, bool) {
	if s.State != StateAccepted && s.State != StateActive {
		return "", false
	}
	if !now.Before(s.Deadline()) {
		return CloseExpired, true
	}
	if accepted >= s.Contract.MaxMessages {
		return CloseMaxMessages, true
	}
	return "", false
}

// Validate checks a session read from storage: its identities, and that its
// history is a walk of the state machine ending in State.
func (s Session) Validate() error {
	if s.ID.IsZero() || s.Advertisement.IsZero() {
		return fmt.Errorf("%w: session: no id or advertisement", ErrInvalid)
	}
	if _, err := ParseIdentity(s.Consumer); err != nil {
		return fmt.Errorf("session %s consumer: %w", s.ID, err)
	}
	if _, err := ParseIdentity(s.Provider); err != nil {
		return fmt.Errorf("session %s provider: %w", s.ID, err)
	}
	if s.Consumer == s.Provider {
		return fmt.Errorf("%w: session %s: consumer is provider", ErrInvalid, s.ID)
	}
	if err := s.Workgroup.Validate(); err != nil {
		return fmt.Errorf("session %s: %w", s.ID, err)
	}
	if s.Intent != nil {
		if err := s.Intent.Validate(); err != nil {
			return fmt.Errorf("%w: session %s: intent: %w", ErrInvalid, s.ID, err)
		}
	}
	var from State
	accepted := false
	for i, t := range s.History {
		if t.From != from || !CanTransition(t.From, t.To) || t.Actor.IsZero() || t.At.IsZero() {
			return fmt.Errorf("%w: session %s: history step %d (%s to %s) is not a legal transition", ErrInvalid, s.ID, i, t.From, t.To)
		}
		if t.To == StateAccepted {
			accepted = true
			if !t.At.Equal(s.AcceptedAt) {
				return fmt.Errorf("%w: session %s: accepted_at disagrees with history", ErrInvalid, s.ID)
			}
		}
		from = t.To
	}
	if from != s.State || s.State == "" {
		return fmt.Errorf("%w: session %s: state %q disagrees with history", ErrInvalid, s.ID, s.State)
	}
	if accepted != !s.AcceptedAt.IsZero() {
		return fmt.Errorf("%w: session %s: accepted_at disagrees with history", ErrInvalid, s.ID)
	}
	if accepted {
		if err := s.Contract.Validate(); err != nil {
			return fmt.Errorf("session %s: %w", s.ID, err)
		}
	}
	if (s.State == StateClosed) != s.CloseReason.valid() || s.State != StateClosed && s.CloseReason != "" {
		return fmt.Errorf("%w: session %s: close reason %q in state %s", ErrInvalid, s.ID, clip(string(s.CloseReason)), s.State)
	}
	return nil
}
