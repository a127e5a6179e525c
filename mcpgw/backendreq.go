package mcpgw

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/internal/audit"
)

// Requests a backend sends the gateway's client while serving a call (sampling/createMessage,
// elicitation/create) are forwarded to the one caller whose call caused them, and to nobody else:
//
//   - on a backend spawned per client, the backend session belongs to one caller: that caller;
//   - on a shared backend session, the caller with tool calls in flight on it, if there is exactly one. MCP
//     gives a backend's request no link to the call it serves, so when calls of two client sessions are in
//     flight the request cannot be attributed and is refused (spawn such backends per client);
//   - the caller's client must have declared the capability (sampling, elicitation) when it connected, else
//     the backend gets an error saying so.
//
// Each forwarded or refused request is an mcp.backend_request record with the caller as actor.

// KindBackendRequest records a backend-initiated request (sampling, elicitation) forwarded or refused.
const KindBackendRequest = "mcp.backend_request"

// errNoCaller and friends are what the backend sees; they name no other caller.
var (
	errNoCaller      = &jsonrpc.Error{Code: CodeNotAuthorized, Message: "the gateway forwards this request only during a tool call of one caller"}
	errAmbiguous     = &jsonrpc.Error{Code: CodeNotAuthorized, Message: "calls of several callers are in flight on this shared backend session: the request cannot be attributed to one (spawn the backend per client)"}
	errNoSampling    = &jsonrpc.Error{Code: CodeNotAuthorized, Message: "the caller's client did not declare the sampling capability"}
	errNoElicitation = &jsonrpc.Error{Code: CodeNotAuthorized, Message: "the caller's client did not declare the elicitation capability"}
)

// requester returns the client session of the one caller a request arriving on the backend session cs may
// reach.
func (b *backendConn) requester(cs *mcp.ClientSession) (*mcp.ServerSession, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ss, sp := range b.perClient {
		if sp.cs == cs {
			return ss, nil
		}
	}
	if cs != b.cs {
		return nil, errNoCaller
	}
	var ss *mcp.ServerSession
	for _, f := range b.flights {
		switch {
		case ss == nil:
			ss = f.ss
		case f.ss != ss:
			return nil, errAmbiguous
		}
	}
	if ss == nil {
		return nil, errNoCaller
	}
	return ss, nil
}

func (b *backendConn) onCreateMessage(ctx context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
	ss, err := b.requester(req.Session)
	if err == nil {
		if caps := clientCaps(ss); caps == nil || caps.Sampling == nil {
			err = errNoSampling
		}
	}
	b.recordBackendRequest(ctx, "sampling/createMessage", ss, err)
	if err != nil {
		return nil, err
	}
	return ss.CreateMessage(ctx, req.Params)
}

func (b *backendConn) onElicit(ctx context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
	ss, err := b.requester(req.Session)
	if err == nil {
		if caps := clientCaps(ss); caps == nil || caps.Elicitation == nil {
			err = errNoElicitation
		}
	}
	b.recordBackendRequest(ctx, "elicitation/create", ss, err)
	if err != nil {
		return nil, err
	}
	return ss.Elicit(ctx, req.Params)
}

func clientCaps(ss *mcp.ServerSession) *mcp.ClientCapabilities {
	if p := ss.InitializeParams(); p != nil {
		return p.Capabilities
	}
	return nil
}

// recordBackendRequest writes the audit record of a backend's request; the actor is the caller it was for,
// or the gateway when there was none.
func (b *backendConn) recordBackendRequest(ctx context.Context, method string, ss *mcp.ServerSession, err error) {
	g := b.g
	actor, decision, reason := g.self, audit.DecisionAllow, "forwarded to the caller whose call caused it"
	if ss != nil {
		if c := g.callerOf(ss); c != nil {
			actor = c.id.String()
		}
	}
	if err != nil {
		decision, reason = audit.DecisionDeny, err.Error()
		var we *jsonrpc.Error
		if errors.As(err, &we) {
			reason = we.Message
		}
	}
	data, _ := json.Marshal(map[string]string{"method": method, "backend": b.cfg.Name})
	g.record(ctx, audit.Record{Kind: KindBackendRequest, Actor: actor, Decision: decision, Reason: reason, Data: data})
}

// callerOf returns the caller a client session belongs to, or nil.
func (g *Gateway) callerOf(ss *mcp.ServerSession) *caller {
	g.callersMu.Lock()
	cs := make([]*caller, 0, len(g.callers))
	for _, c := range g.callers {
		cs = append(cs, c)
	}
	g.callersMu.Unlock()
	for _, c := range cs {
		if c.owns(ss.ID()) {
			return c
		}
	}
	return nil
}
