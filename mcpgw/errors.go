package mcpgw

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// JSON-RPC error codes the gateway answers with, in the range JSON-RPC leaves to servers. The error's data
// carries the same as a stable string code, and a reference that also appears in the audit record.
const (
	CodeNotAuthorized    = -32060 // no grant at all, or a call policy refuses
	CodeRateLimited      = -32061 // too many calls per minute
	CodeTooBusy          = -32062 // too many calls in flight
	CodeApproval         = -32063 // a sensitive call was denied, timed out, or its approval does not fit
	CodeTooLarge         = -32064 // request too large
	CodeUnavailable      = -32065 // the gateway cannot decide now (directory or state unavailable)
	CodeAuditUnavailable = -32066 // the request's audit record could not be written, so it was not forwarded
	CodeAuditBudget      = -32067 // the caller's actions already wrote its day's audit budget (the controller's)
)

// ErrNotAuthorized is wrapped by errors about callers refused outright.
var ErrNotAuthorized = errors.New("mcpgw: not authorised")

var codeNames = map[int64]string{
	CodeNotAuthorized:    "not_authorized",
	CodeRateLimited:      "rate_limited",
	CodeTooBusy:          "too_busy",
	CodeApproval:         "approval_required",
	CodeTooLarge:         "too_large",
	CodeUnavailable:      "unavailable",
	CodeAuditUnavailable: "audit_unavailable",
	CodeAuditBudget:      "audit_budget_exhausted",
}

// ErrorData is the data of the gateway's JSON-RPC errors.
type ErrorData struct {
	Code     string `json:"code"`
	Ref      string `json:"ref"`
	Approval string `json:"approval,omitempty"` // the approval request a sensitive call opened
}

func newRef() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// rpcError builds a JSON-RPC error the caller sees; the message is for humans and names the reference.
func rpcError(code int64, ref, approvalID, format string, args ...any) *jsonrpc.Error {
	data, _ := json.Marshal(ErrorData{Code: codeNames[code], Ref: ref, Approval: approvalID})
	return &jsonrpc.Error{Code: code, Message: fmt.Sprintf(format, args...) + " (ref " + ref + ")", Data: data}
}

// unknownTool is exactly what the MCP SDK answers for a tool that does not exist, so that a hidden tool and a
// missing one cannot be told apart.
func unknownTool(name string) *jsonrpc.Error {
	return &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: fmt.Sprintf("unknown tool %q", name)}
}

// unknownPrompt is the SDK's answer for a prompt that does not exist.
func unknownPrompt(name string) *jsonrpc.Error {
	return &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: fmt.Sprintf("unknown prompt %q", name)}
}
