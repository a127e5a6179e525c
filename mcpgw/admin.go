package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/mcpgw/approval"
	"github.com/umbra-mesh/umbra/mcpgw/pin"
	"github.com/umbra-mesh/umbra/mcpgw/scan"
)

// The administration API, JSON over the same handler and the same caller identity as the MCP endpoint:
//
//	GET  /admin/tools                         the tools the caller may see (any caller)
//	GET  /admin/backends                      backend states (administrators)
//	GET  /admin/tool-versions                 tool versions awaiting a decision (administrators)
//	POST /admin/tool-versions/approve         {"backend","tool","digest"} approve a version (administrators)
//	POST /admin/tool-versions/deny            {"backend","tool","digest"} refuse it (administrators)
//	GET  /admin/approvals[?all=1]             call approval requests (administrators)
//	POST /admin/approvals/{id}/approve        {"digest"?} approve a held call (administrators)
//	POST /admin/approvals/{id}/deny           deny it (administrators)
//
// Errors are {"error":{"code","message","ref"}}.

// ToolVersion is a tool definition awaiting an administrator's decision.
type ToolVersion struct {
	Name       string          `json:"name"` // exposed name
	Backend    string          `json:"backend"`
	Tool       string          `json:"tool"` // name on the backend
	State      pin.State       `json:"state"`
	Digest     string          `json:"digest"` // of the version awaiting a decision
	Approved   string          `json:"approved,omitempty"`
	Definition json.RawMessage `json:"definition"`
	Previous   json.RawMessage `json:"previous,omitempty"` // the approved definition, to compare
	Findings   []scan.Finding  `json:"findings,omitempty"`
	Since      time.Time       `json:"since"`
}

func (g *Gateway) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", g.serveMCP)
	mux.HandleFunc("GET /admin/tools", g.admin(false, func(ctx context.Context, id spiffeid.ID, _ *http.Request) (any, error) {
		tools, err := g.Tools(ctx, id)
		if err != nil {
			return nil, err
		}
		return map[string]any{"tools": tools}, nil
	}))
	mux.HandleFunc("GET /admin/backends", g.admin(true, func(ctx context.Context, _ spiffeid.ID, _ *http.Request) (any, error) {
		bs, err := g.Backends(ctx)
		return map[string]any{"backends": bs}, err
	}))
	mux.HandleFunc("GET /admin/tool-versions", g.admin(true, func(ctx context.Context, _ spiffeid.ID, _ *http.Request) (any, error) {
		vs, err := g.PendingTools(ctx)
		return map[string]any{"versions": vs}, err
	}))
	for _, verb := range []string{"approve", "deny"} {
		mux.HandleFunc("POST /admin/tool-versions/"+verb, g.admin(true, func(ctx context.Context, id spiffeid.ID, r *http.Request) (any, error) {
			var req struct{ Backend, Tool, Digest string }
			if err := decodeBody(r, &req); err != nil {
				return nil, err
			}
			rec, err := g.DecideTool(ctx, id, req.Backend, req.Tool, req.Digest, verb == "approve")
			if err != nil {
				return nil, err
			}
			return map[string]any{"backend": rec.Backend, "tool": rec.Tool, "approved": rec.Approved}, nil
		}))
	}
	mux.HandleFunc("GET /admin/approvals", g.admin(true, func(ctx context.Context, _ spiffeid.ID, r *http.Request) (any, error) {
		rs, err := g.approvals.List(ctx, r.URL.Query().Get("all") == "")
		return map[string]any{"approvals": rs}, err
	}))
	for _, verb := range []string{"approve", "deny"} {
		mux.HandleFunc("POST /admin/approvals/{id}/"+verb, g.admin(true, func(ctx context.Context, id spiffeid.ID, r *http.Request) (any, error) {
			var req struct{ Digest string }
			if err := decodeBody(r, &req); err != nil {
				return nil, err
			}
			return g.DecideCall(ctx, id, r.PathValue("id"), verb == "approve", req.Digest)
		}))
	}
	if g.promReg != nil {
		metrics := g.MetricsHandler()
		mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
			id, err := g.cfg.Identify(r)
			if err != nil || !g.isAdmin(r.Context(), id) {
				writeJSONError(w, http.StatusForbidden, "forbidden", "administrators only", newRef())
				return
			}
			metrics.ServeHTTP(w, r)
		})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-g.ready:
			mux.ServeHTTP(w, r)
		default:
			writeJSONError(w, http.StatusServiceUnavailable, "starting", "the gateway is starting", newRef())
		}
	})
}

type adminError struct {
	status int
	code   string
	msg    string
}

func (e *adminError) Error() string { return e.msg }

func decodeBody(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return &adminError{http.StatusBadRequest, "bad_request", "cannot read body"}
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &adminError{http.StatusBadRequest, "bad_request", "body: " + err.Error()}
	}
	return nil
}

// admin wraps an administration endpoint: it identifies the caller, checks rights and writes JSON.
func (g *Gateway) admin(adminOnly bool, h func(context.Context, spiffeid.ID, *http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ref := newRef()
		id, err := g.cfg.Identify(r)
		if err != nil {
			writeJSONError(w, http.StatusUnauthorized, "unauthenticated", "no verified identity", ref)
			return
		}
		if adminOnly && !g.isAdmin(r.Context(), id) {
			writeJSONError(w, http.StatusForbidden, "forbidden", "administrators only", ref)
			return
		}
		out, err := h(r.Context(), id, r)
		if err != nil {
			status, code, msg := http.StatusInternalServerError, "internal", "internal error"
			var ae *adminError
			switch {
			case errors.As(err, &ae):
				status, code, msg = ae.status, ae.code, ae.msg
			case errors.Is(err, ErrNotAuthorized):
				status, code, msg = http.StatusForbidden, "not_authorized", "not authorised: no MCP grant"
			case errors.Is(err, pin.ErrNotFound), errors.Is(err, approval.ErrNotFound):
				status, code, msg = http.StatusNotFound, "not_found", "no such item"
			case errors.Is(err, pin.ErrStale), errors.Is(err, approval.ErrDecided), errors.Is(err, approval.ErrExpired),
				errors.Is(err, approval.ErrMismatch):
				status, code, msg = http.StatusConflict, "conflict", err.Error()
			default:
				g.log.Error("mcpgw: admin request failed", "ref", ref, "path", r.URL.Path, "err", err)
			}
			writeJSONError(w, status, code, msg, ref)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	}
}

// PendingTools lists the tool versions awaiting an administrator's decision.
func (g *Gateway) PendingTools(ctx context.Context) ([]ToolVersion, error) {
	if err := g.started(); err != nil {
		return nil, err
	}
	recs, err := g.pins.All(ctx)
	if err != nil {
		return nil, err
	}
	out := []ToolVersion{}
	for _, r := range recs {
		if r.Pending == "" {
			continue
		}
		out = append(out, ToolVersion{Name: g.exposedName(r.Backend, r.Tool), Backend: r.Backend, Tool: r.Tool,
			State: r.StateOf(r.Pending), Digest: r.Pending, Approved: r.Approved, Definition: r.PendingDef,
			Previous: r.ApprovedDef, Findings: r.Findings, Since: r.PendingSince})
	}
	slices.SortFunc(out, func(a, b ToolVersion) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// DecideTool approves or refuses the version with digest of a tool, as the administrator admin.
func (g *Gateway) DecideTool(ctx context.Context, admin spiffeid.ID, backend, tool, digest string, approve bool) (pin.Record, error) {
	if err := g.started(); err != nil {
		return pin.Record{}, err
	}
	if !g.isAdmin(ctx, admin) {
		return pin.Record{}, ErrNotAuthorized
	}
	var rec pin.Record
	var err error
	decision, reason := audit.DecisionDeny, "tool version refused"
	if approve {
		rec, err = g.pins.Approve(ctx, backend, tool, digest, admin.String())
		decision, reason = audit.DecisionAllow, "tool version approved"
	} else {
		rec, err = g.pins.Deny(ctx, backend, tool, digest, admin.String())
	}
	if err != nil {
		return rec, err
	}
	data, _ := json.Marshal(map[string]string{"tool": g.exposedName(backend, tool), "backend": backend, "digest": digest})
	g.record(ctx, audit.Record{Kind: KindToolDecided, Actor: admin.String(), Decision: decision, Reason: reason, Data: data})
	g.log.Info("mcpgw: "+reason, "tool", g.exposedName(backend, tool), "by", admin, "digest", digest)
	for _, b := range g.backs { // the catalog learns the new state on the backend's next listing: now
		if b.cfg.Name == backend {
			b.poke()
		}
	}
	return rec, nil
}

// DecideCall approves or denies a held call, as the administrator admin. If digest is set it must be the
// call's arguments digest: the decision is about the arguments the administrator reviewed.
func (g *Gateway) DecideCall(ctx context.Context, admin spiffeid.ID, id string, approve bool, digest string) (approval.Request, error) {
	if err := g.started(); err != nil {
		return approval.Request{}, err
	}
	if !g.isAdmin(ctx, admin) {
		return approval.Request{}, ErrNotAuthorized
	}
	r, err := g.approvals.Decide(ctx, id, approve, admin.String(), digest)
	if err != nil {
		return r, err
	}
	decision, reason := audit.DecisionDeny, "call denied"
	if approve {
		decision, reason = audit.DecisionAllow, "call approved"
	}
	data, _ := json.Marshal(map[string]any{"approval": r.ID, "caller": r.Caller, "tool": r.Tool, "args_digest": r.ArgsDigest,
		"valid_until": r.ValidUntil})
	g.record(ctx, audit.Record{Kind: KindApproval, Actor: admin.String(), Decision: decision, Reason: reason,
		PolicyVersion: r.PolicyVersion, Data: data})
	return r, nil
}

// PendingCalls lists the calls waiting for an administrator.
func (g *Gateway) PendingCalls(ctx context.Context) ([]approval.Request, error) {
	if err := g.started(); err != nil {
		return nil, err
	}
	return g.approvals.List(ctx, true)
}

// ErrNotReady is returned by the administration methods before the gateway is Ready.
var ErrNotReady = errors.New("mcpgw: not ready")

func (g *Gateway) started() error {
	select {
	case <-g.ready:
		return nil
	default:
		return ErrNotReady
	}
}
