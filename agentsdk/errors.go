package agentsdk

import (
	"errors"
	"fmt"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// Sentinel errors callers branch on.
var (
	// ErrNotAuthorized: the controller or the overlay refused this identity (unknown, revoked, suspended, or not
	// allowed).
	ErrNotAuthorized = errors.New("not authorized")
	// ErrServiceNotFound: the service does not exist or this identity may not use it; the two are
	// indistinguishable by design.
	ErrServiceNotFound = errors.New("service not found")
	// ErrClosed: the agent has been closed.
	ErrClosed = errors.New("agent closed")
	// ErrNotSent: a request to the controller's API was never sent, because no connection to it could be made (no
	// router reachable, the API not hosted, mutual TLS refused), or, for AppendAudit, no try wrote its whole
	// request to one. Nothing of it took effect, so it may be made again later; any other failure of a request
	// leaves that unknown.
	ErrNotSent = errors.New("not sent to the controller")
	// ErrSessionClosed: the A2A session is closed (the relay refuses it with code session_closed). It is
	// workgroups.ErrSessionClosed, so either matches.
	ErrSessionClosed = workgroups.ErrSessionClosed
)

// notSentError is a failed connection to the controller's API: ErrNotSent, and the cause.
type notSentError struct{ err error }

func (e notSentError) Error() string   { return e.err.Error() }
func (e notSentError) Unwrap() []error { return []error{ErrNotSent, e.err} }

// APIError is an error answered by the controller: a stable code, a message, and an ID that also appears in
// the controller's log.
type APIError struct {
	Status  int
	Code    string
	Message string
	ID      string
	// RetryAfter is the controller's Retry-After (a rate or a budget that resets), zero when it sent none.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: %s (error id %s)", e.Code, e.Message, e.ID)
}

// Is makes errors.Is(err, ErrNotAuthorized) true for refusals of the caller's identity.
func (e *APIError) Is(target error) bool {
	if target == ErrNotAuthorized {
		switch e.Code {
		case api.CodeUnauthenticated, api.CodeForbidden, api.CodeRevoked, api.CodeSuspended, api.CodeReenrollRequired:
			return true
		}
	}
	return false
}
