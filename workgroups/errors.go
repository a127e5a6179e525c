package workgroups

import (
	"errors"

	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// Sentinel errors. Every error returned by this package wraps exactly one of
// these (a [*Violation] matches [ErrContractViolation], and also
// [ErrSessionClosed] when the session is over), so callers can branch with
// errors.Is and map them to their own stable codes.
var (
	// ErrInvalid: a value is well-formed but breaks a rule (a bad name, a
	// contract maximum of zero, an unknown role).
	ErrInvalid = errors.New("workgroups: invalid")

	// ErrMalformed: input could not be decoded at all (bad JSON, unknown or
	// duplicate fields, a truncated or corrupt frame).
	ErrMalformed = errors.New("workgroups: malformed")

	// ErrTooLarge: input exceeds a hard size limit. It is reported before any
	// buffer of the declared size is allocated.
	ErrTooLarge = errors.New("workgroups: too large")

	// ErrUnsupportedVersion: a frame carries a version this code does not speak.
	ErrUnsupportedVersion = errors.New("workgroups: unsupported frame version")

	// ErrNotAuthorized: the acting identity may not do this.
	// It is [authz.ErrNotAuthorized], which every denying [Decision] wraps.
	ErrNotAuthorized = authz.ErrNotAuthorized

	// ErrNotFound: the member or invitation does not exist.
	ErrNotFound = errors.New("workgroups: not found")

	// ErrConflict: the operation contradicts the current state (already a
	// member, invitation already answered, workgroup no longer pending).
	ErrConflict = errors.New("workgroups: conflict")

	// ErrLastAdmin: removing or demoting this member would leave its
	// organisation without an admin in the workgroup.
	ErrLastAdmin = errors.New("workgroups: would remove the last admin")

	// ErrIllegalTransition: the session state machine does not allow this
	// transition, or not by this actor.
	ErrIllegalTransition = errors.New("workgroups: illegal session transition")

	// ErrSessionClosed: the session has reached a terminal state (closed or
	// rejected).
	ErrSessionClosed = errors.New("workgroups: session closed")

	// ErrContractViolation: an envelope breaks the session or its contract.
	// The concrete error is a [*Violation] carrying a stable code.
	ErrContractViolation = errors.New("workgroups: contract violation")
)
