package llmgw

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/umbra-mesh/umbra/llmgw/provider"
)

// apiError is what a caller is told: a status, an OpenAI error type, a stable code and a message that never
// carries internal detail. The request ID in the message also appears in the audit record.
type apiError struct {
	Status     int
	Type       string
	Code       string
	Message    string
	Param      string
	RetryAfter time.Duration
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

// Error codes callers can branch on.
const (
	codeUnauthenticated  = "unauthenticated"
	codeForbidden        = "identity_not_permitted"
	codeUnavailable      = "directory_unavailable"
	codeInvalid          = "invalid_request"
	codeTooLarge         = "request_too_large"
	codeModelNotFound    = "model_not_found"
	codeNotPermitted     = "model_not_permitted"
	codeNoRoute          = "no_route"
	codeGuardrail        = "guardrail_blocked"
	codeRateLimited      = "rate_limit_exceeded"
	codeBudgetExceeded   = "budget_exceeded"
	codeUpstream         = "upstream_error"
	codeUpstreamRate     = "upstream_rate_limited"
	codeInternal         = "internal_error"
	codeAuditUnavailable = "audit_unavailable"
	codeAuditBudget      = "audit_budget_exhausted" // the caller's actions already wrote its day's audit budget
	codeNotFound         = "not_found"
)

func errorf(status int, typ, code, format string, args ...any) *apiError {
	return &apiError{Status: status, Type: typ, Code: code, Message: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *apiError {
	return errorf(http.StatusBadRequest, "invalid_request_error", codeInvalid, format, args...)
}

// upstreamError turns a failure of the last upstream attempt into what the caller sees. An upstream's 400
// message is passed on (it explains what is wrong with the request); anything else is summarised, because
// it may describe the gateway's own credentials.
func upstreamError(err error) *apiError {
	var pe *provider.Error
	if !errors.As(err, &pe) {
		return errorf(http.StatusBadGateway, "server_error", codeUpstream, "the model endpoint could not be reached")
	}
	switch {
	case pe.Status == http.StatusBadRequest || pe.Status == http.StatusUnprocessableEntity:
		msg := pe.Message
		if msg == "" {
			msg = "the model endpoint refused the request"
		}
		e := errorf(pe.Status, "invalid_request_error", codeInvalid, "%s", msg)
		return e
	case pe.Status == http.StatusTooManyRequests:
		e := errorf(http.StatusTooManyRequests, "rate_limit_error", codeUpstreamRate, "every endpoint of the model is rate limited; retry later")
		e.RetryAfter = pe.RetryAfter
		return e
	case pe.Status == 0:
		return errorf(http.StatusBadGateway, "server_error", codeUpstream, "the model endpoint could not be reached")
	}
	return errorf(http.StatusBadGateway, "server_error", codeUpstream, "the model endpoint failed (status %d)", pe.Status)
}

// openAIError is the body of an error in the OpenAI shape.
func openAIError(e *apiError, requestID string) []byte {
	var param any
	if e.Param != "" {
		param = e.Param
	}
	b, _ := json.Marshal(map[string]any{"error": map[string]any{
		"message": e.Message + " (request " + requestID + ")",
		"type":    e.Type,
		"code":    e.Code,
		"param":   param,
	}})
	return b
}

// writeJSON sends a whole answer at once: the call's audit record is written after it, and the caller need
// not wait for that.
func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

func setRetryAfter(w http.ResponseWriter, d time.Duration) {
	if d > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((d+time.Second-1)/time.Second)))
	}
}
