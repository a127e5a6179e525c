package workgroups

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ViolationCode is a stable, machine-readable reason an envelope was refused.
// The relay records it with the rejected envelope.
type ViolationCode string

const (
	ViolationHeaderInvalid    ViolationCode = "header_invalid"     // the header is not well-formed
	ViolationSessionMismatch  ViolationCode = "session_mismatch"   // the header names another session
	ViolationSessionNotActive ViolationCode = "session_not_active" // proposed, held or rejected
	ViolationSessionClosed    ViolationCode = "session_closed"     // closed
	ViolationSenderForged     ViolationCode = "sender_forged"      // from is not the verified sender
	ViolationNotParty         ViolationCode = "not_party"          // the sender is not a party
	ViolationWrongRecipient   ViolationCode = "wrong_recipient"    // to is not the other party
	ViolationExpired          ViolationCode = "expired"            // past the deadline
	ViolationMaxMessages      ViolationCode = "max_messages"       // the message budget is spent
	ViolationTypeNotAllowed   ViolationCode = "type_not_allowed"   // the contract does not allow the type
	ViolationTooLarge         ViolationCode = "envelope_too_large" // payload over max_envelope_bytes
	ViolationIntentRequired   ViolationCode = "intent_required"    // the contract requires an intent; none declared
	ViolationIntentCategory   ViolationCode = "intent_category"    // the intent's category is not one the contract allows
)

// Violation is why an envelope was refused. It matches
// [ErrContractViolation], and [ErrSessionClosed] when the session is closed.
// Detail is for people; branch on Code.
type Violation struct {
	Code   ViolationCode `json:"code"`
	Detail string        `json:"detail"`
}

func (v *Violation) Error() string {
	return fmt.Sprintf("workgroups: contract violation: %s: %s", v.Code, v.Detail)
}

// Is matches ErrContractViolation, and ErrSessionClosed for session_closed.
func (v *Violation) Is(target error) bool {
	return target == ErrContractViolation || target == ErrSessionClosed && v.Code == ViolationSessionClosed
}

func violation(code ViolationCode, format string, args ...any) *Violation {
	return &Violation{Code: code, Detail: fmt.Sprintf(format, args...)}
}

// CheckSend decides whether the relay may accept envelope header h in session
// s, from verifiedSender (the identity the connection proved, never the
// header's claim), when the session has accepted `accepted` envelopes so far,
// at time now. It returns nil or a [*Violation]. The checks run in a fixed
// order, so one envelope always gets the same code.
//
// A session in state accepted passes; the caller then records
// [Session.Activate] with the first envelope it appends. Whether the sender
// is still a member of the session's workgroups is the Authorizer's question
// (action send), asked alongside.
func CheckSend(s Session, h Header, verifiedSender spiffeid.ID, accepted uint64, now time.Time) error {
	if err := h.Validate(); err != nil {
		return violation(ViolationHeaderInvalid, "%v", err)
	}
	if h.Session != s.ID || s.ID.IsZero() {
		return violation(ViolationSessionMismatch, "header names session %s, checked against %s", h.Session, s.ID)
	}
	switch s.State {
	case StateAccepted, StateActive:
	case StateClosed:
		return violation(ViolationSessionClosed, "session %s is closed (%s)", s.ID, s.CloseReason)
	default:
		return violation(ViolationSessionNotActive, "session %s is %s", s.ID, s.State)
	}
	if verifiedSender.IsZero() || h.From != verifiedSender {
		return violation(ViolationSenderForged, "header from %s, connection proved %s", h.From, verifiedSender)
	}
	peer, ok := s.Peer(verifiedSender)
	if !ok {
		return violation(ViolationNotParty, "%s is not a party of session %s", verifiedSender, s.ID)
	}
	if h.To != peer {
		return violation(ViolationWrongRecipient, "header to %s, the other party is %s", h.To, peer)
	}
	if deadline := s.Deadline(); deadline.IsZero() || !now.Before(deadline) {
		return violation(ViolationExpired, "deadline %s passed at %s", deadline.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if accepted >= s.Contract.MaxMessages {
		return violation(ViolationMaxMessages, "%d of %d messages used", accepted, s.Contract.MaxMessages)
	}
	if !s.Contract.Allows(h.Type) {
		return violation(ViolationTypeNotAllowed, "type %q is not allowed by the contract", h.Type)
	}
	if s.Contract.MaxEnvelopeBytes < 0 || h.Size > uint64(s.Contract.MaxEnvelopeBytes) {
		return violation(ViolationTooLarge, "payload %d bytes, contract allows %d", h.Size, s.Contract.MaxEnvelopeBytes)
	}
	return s.Contract.CheckIntent(h.Intent)
}
