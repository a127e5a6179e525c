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
	"github.com/umbra-mesh/umbra/internal/gatewayadmin"
	"github.com/umbra-mesh/umbra/mcpgw/approval"
	"github.com/umbra-mesh/umbra/mcpgw/pin"
	"github.com/umbra-mesh/umbra/mcpgw/scan"
)

// The administration API, JSON over the same handler and the same caller identity as the MCP endpoint:
//
//	GET  /admin/tools                         the tools the caller may see (any caller)
//	GET  /admin/backends                      backend states (administrators)
//	GET  /admin/tool-versions                 tool, prompt and resource versions awaiting a decision (administrators)
//	POST /admin/tool-versions/approve         {"kind"?,"backend","tool","digest","reason"?} approve a version (administrators)
//	POST /admin/tool-versions/deny            {"kind"?,"backend","tool","digest","reason"?} refuse it (administrators)
//
// "kind" is "tool" (the default), "prompt" or "resource"; "tool" is then the prompt's name or the resource's
// URI (template) on the backend.
//	GET  /admin/approvals[?all=1]             call approval requests (administrators)
//	POST /admin/approvals/{id}/approve        {"digest"?,"reason"?} approve a held call (administrators)
//	POST /admin/approvals/{id}/deny           {"digest"?,"reason"?} deny it (administrators)
//
// "reason" is the administrator's own words for the decision; it goes into the decision's audit record.
//
// Errors are {"error":{"code","message","ref"}}.

// ToolVersion is a definition of a tool, prompt or resource awaiting an administrator's decision.
type ToolVersion struct {
	Kind       pin.Kind        `json:"kind"` // tool, prompt or resource
	Name       string          `json:"name"` // exposed name (for a resource its exposed URI)
	Backend    string          `json:"backend"`
	Tool       string          `json:"tool"` // name on the backend (for a resource its URI)
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
	mux.HandleFunc("GET /admin/tools", g.admin(anyCaller, "list tools", func(ctx context.Context, id spiffeid.ID, _ gatewayadmin.Access, _ *http.Request) (any, error) {
		tools, err := g.Tools(ctx, id)
		if err != nil {
			return nil, err
		}
		return map[string]any{"tools": tools}, nil
	}))
	mux.HandleFunc("GET /admin/backends", g.admin(gatewayWide, "read backend states", func(ctx context.Context, _ spiffeid.ID, _ gatewayadmin.Access, _ *http.Request) (any, error) {
		bs, err := g.Backends(ctx)
		return map[string]any{"backends": bs}, err
	}))
	mux.HandleFunc("GET /admin/tool-versions", g.admin(gatewayWide, "list tool versions", func(ctx context.Context, _ spiffeid.ID, _ gatewayadmin.Access, _ *http.Request) (any, error) {
		vs, err := g.PendingTools(ctx)
		return map[string]any{"versions": vs}, err
	}))
	for _, verb := range []string{"approve", "deny"} {
		// DecideTool and DecideCall check the administrator themselves, for callers of the Go API too.
		mux.HandleFunc("POST /admin/tool-versions/"+verb, g.admin(anyCaller, verb+" tool versions", func(ctx context.Context, id spiffeid.ID, _ gatewayadmin.Access, r *http.Request) (any, error) {
			var req struct{ Kind, Backend, Tool, Digest, Reason string }
			if err := decodeBody(r, &req); err != nil {
				return nil, err
			}
			kind, err := pin.ParseKind(req.Kind)
			if err != nil {
				return nil, &adminError{status: http.StatusBadRequest, code: "bad_request", msg: err.Error()}
			}
			if err := checkNote(req.Reason); err != nil {
				return nil, err
			}
			rec, err := g.decideVersion(ctx, id, pin.Ref{Kind: kind, Backend: req.Backend, Name: req.Tool}, req.Digest, verb == "approve", req.Reason)
			if err != nil {
				return nil, err
			}
			return map[string]any{"kind": kind, "backend": rec.Backend, "tool": rec.Tool, "approved": rec.Approved}, nil
		}))
	}
	mux.HandleFunc("GET /admin/approvals", g.admin(scoped, "list held calls", func(ctx context.Context, _ spiffeid.ID, acc gatewayadmin.Access, r *http.Request) (any, error) {
		rs, err := g.approvals.List(ctx, r.URL.Query().Get("all") == "")
		if err != nil {
			return nil, err
		}
		mine := []approval.Request{}
		for _, req := range rs {
			if acc.Covers(g.orgOf(ctx, req.Caller)) {
				mine = append(mine, req)
			}
		}
		return map[string]any{"approvals": mine}, nil
	}))
	for _, verb := range []string{"approve", "deny"} {
		mux.HandleFunc("POST /admin/approvals/{id}/"+verb, g.admin(anyCaller, verb+" held calls", func(ctx context.Context, id spiffeid.ID, _ gatewayadmin.Access, r *http.Request) (any, error) {
			var req struct{ Digest, Reason string }
			if err := decodeBody(r, &req); err != nil {
				return nil, err
			}
			if err := checkNote(req.Reason); err != nil {
				return nil, err
			}
			return g.decideCall(ctx, id, r.PathValue("id"), verb == "approve", req.Digest, req.Reason)
		}))
	}
	if g.promReg != nil {
		metrics := g.MetricsHandler()
		mux.HandleFunc("GET /metrics", g.admin(gatewayWide, "read metrics", func(context.Context, spiffeid.ID, gatewayadmin.Access, *http.Request) (any, error) {
			return metrics, nil
		}))
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

// need is what an administration endpoint asks of its caller.
type need int

const (
	anyCaller   need = iota // any caller with a verified identity
	scoped                  // an administrator of this gateway, of any scope (package gatewayadmin)
	gatewayWide             // an administrator of the gateway itself: Access.Gateway
)

type adminError struct {
	status int
	code   string
	msg    string
	err    error // what errors.Is finds, or nil
}

func (e *adminError) Error() string { return e.msg }
func (e *adminError) Unwrap() error { return e.err }

// refuseAdmin records an administration request refused to admin and returns the error it sees: 403 and reason.
func (g *Gateway) refuseAdmin(ctx context.Context, admin spiffeid.ID, action, reason string, extra map[string]any) error {
	d := map[string]any{"action": action}
	for k, v := range extra {
		d[k] = v
	}
	data, _ := json.Marshal(d)
	g.record(ctx, audit.Record{Kind: KindAdminRefused, Actor: admin.String(), Decision: audit.DecisionDeny,
		Reason: reason, Data: data})
	return &adminError{http.StatusForbidden, "forbidden", reason, ErrNotAuthorized}
}

// adminAs checks that admin has the access n needs, recording a refusal.
func (g *Gateway) adminAs(ctx context.Context, admin spiffeid.ID, n need, action string) (gatewayadmin.Access, error) {
	if n == anyCaller {
		return gatewayadmin.Access{}, nil
	}
	acc := g.access(ctx, admin)
	switch {
	case !acc.Granted():
		return acc, g.refuseAdmin(ctx, admin, action, acc.Reason, nil)
	case n == gatewayWide && !acc.Gateway:
		return acc, g.refuseAdmin(ctx, admin, action, "only administrators of the gateway's own organisation, and identities its admins name, may "+action, nil)
	}
	return acc, nil
}

// checkNote refuses an administrator's reason too long for an audit record.
func checkNote(note string) error {
	if len(note) > 500 {
		return &adminError{status: http.StatusBadRequest, code: "bad_request", msg: "the reason is too long: keep it under 500 bytes"}
	}
	return nil
}

// withNote adds the administrator's own reason to a decision's audit reason.
func withNote(reason, note string) string {
	if note = strings.TrimSpace(note); note != "" {
		return reason + ": " + note
	}
	return reason
}

func decodeBody(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return &adminError{status: http.StatusBadRequest, code: "bad_request", msg: "cannot read body"}
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &adminError{status: http.StatusBadRequest, code: "bad_request", msg: "body: " + err.Error()}
	}
	return nil
}

// admin wraps an administration endpoint: it identifies the caller, checks that the caller has what n needs and
// writes JSON. A handler may answer with an http.Handler, which then serves the request.
func (g *Gateway) admin(n need, action string, h func(context.Context, spiffeid.ID, gatewayadmin.Access, *http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ref := newRef()
		id, err := g.cfg.Identify(r)
		if err != nil {
			writeJSONError(w, http.StatusUnauthorized, "unauthenticated", "no verified identity", ref)
			return
		}
		acc, err := g.adminAs(r.Context(), id, n, action)
		var out any
		if err == nil {
			out, err = h(r.Context(), id, acc, r)
		}
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
		if hh, ok := out.(http.Handler); ok {
			hh.ServeHTTP(w, r)
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
		ref := r.Ref()
		out = append(out, ToolVersion{Kind: ref.Kind, Name: g.exposed(ref), Backend: r.Backend, Tool: r.Tool,
			State: r.StateOf(r.Pending), Digest: r.Pending, Approved: r.Approved, Definition: r.PendingDef,
			Previous: r.ApprovedDef, Findings: r.Findings, Since: r.PendingSince})
	}
	slices.SortFunc(out, func(a, b ToolVersion) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// exposed is the name callers see an item under.
func (g *Gateway) exposed(ref pin.Ref) string {
	if ref.Kind == pin.Resource {
		return exposedURI(ref.Backend, ref.Name)
	}
	return g.exposedName(ref.Backend, ref.Name)
}

// DecideTool approves or refuses the version with digest of a tool, as the administrator admin.
func (g *Gateway) DecideTool(ctx context.Context, admin spiffeid.ID, backend, tool, digest string, approve bool) (pin.Record, error) {
	return g.DecideVersion(ctx, admin, pin.Ref{Kind: pin.Tool, Backend: backend, Name: tool}, digest, approve)
}

// DecideVersion approves or refuses the version with digest of a tool, prompt or resource, as the
// administrator admin.
func (g *Gateway) DecideVersion(ctx context.Context, admin spiffeid.ID, ref pin.Ref, digest string, approve bool) (pin.Record, error) {
	return g.decideVersion(ctx, admin, ref, digest, approve, "")
}

// decideVersion is DecideVersion with the administrator's reason, which goes into the audit record.
func (g *Gateway) decideVersion(ctx context.Context, admin spiffeid.ID, ref pin.Ref, digest string, approve bool, note string) (pin.Record, error) {
	if ref.Kind == "" {
		ref.Kind = pin.Tool
	}
	backend := ref.Backend
	if err := g.started(); err != nil {
		return pin.Record{}, err
	}
	verb := "deny"
	if approve {
		verb = "approve"
	}
	acc, err := g.adminAs(ctx, admin, gatewayWide, verb+" tool versions")
	if err != nil {
		return pin.Record{}, err
	}
	action := gatewayadmin.ActionRefuseTool
	if approve {
		action = gatewayadmin.ActionReleaseTool
	}
	pd := g.grant.Decide(g.adminCaller(ctx, admin), action, g.grant.ToolTarget(g.exposed(ref), backend, digest))
	if !pd.Allow {
		return pin.Record{}, g.refuseAdmin(ctx, admin, verb+" tool versions", pd.Reason(),
			map[string]any{"name": g.exposed(ref), "item": string(ref.Kind), "policies": pd.Diagnostic.Policies})
	}
	var rec pin.Record
	decision, reason := audit.DecisionDeny, string(ref.Kind)+" version refused"
	if approve {
		rec, err = g.pins.Approve(ctx, ref, digest, admin.String())
		decision, reason = audit.DecisionAllow, string(ref.Kind)+" version approved"
	} else {
		rec, err = g.pins.Deny(ctx, ref, digest, admin.String())
	}
	if err != nil {
		return rec, err
	}
	kind, d := KindToolDecided, map[string]string{"tool": g.exposed(ref), "backend": backend, "digest": digest, "admin_basis": acc.Basis}
	if ref.Kind != pin.Tool {
		kind, d = KindItemDecided, map[string]string{"item": string(ref.Kind), "name": g.exposed(ref), "backend": backend,
			"backend_name": ref.Name, "digest": digest, "admin_basis": acc.Basis}
	}
	data, _ := json.Marshal(d)
	g.record(ctx, audit.Record{Kind: kind, Actor: admin.String(), Decision: decision, Reason: withNote(reason, note),
		Diagnostic: pd.JSON(), Data: data})
	g.log.Info("mcpgw: "+reason, "name", g.exposed(ref), "by", admin, "digest", digest)
	for _, b := range g.backs { // the catalog learns the new state on the backend's next listing: now
		if b.cfg.Name == backend {
			b.poke()
		}
	}
	return rec, nil
}

// DecideCall approves or denies a held call, as the administrator admin. If digest is set it must be the
// call's arguments digest: the decision is about the arguments the administrator reviewed. An administrator
// decides only the calls of the organisations its access covers (package gatewayadmin) and never approves a
// call of its own; a refusal wraps ErrNotAuthorized and is recorded.
func (g *Gateway) DecideCall(ctx context.Context, admin spiffeid.ID, id string, approve bool, digest string) (approval.Request, error) {
	return g.decideCall(ctx, admin, id, approve, digest, "")
}

// decideCall is DecideCall with the administrator's reason, which goes into the audit record.
func (g *Gateway) decideCall(ctx context.Context, admin spiffeid.ID, id string, approve bool, digest, note string) (approval.Request, error) {
	if err := g.started(); err != nil {
		return approval.Request{}, err
	}
	verb := "deny"
	if approve {
		verb = "approve"
	}
	acc, err := g.adminAs(ctx, admin, scoped, verb+" held calls")
	if err != nil {
		return approval.Request{}, err
	}
	held, err := g.approvals.Get(ctx, id)
	if err != nil {
		return held, err
	}
	about := map[string]any{"approval": held.ID, "caller": held.Caller, "tool": held.Tool}
	action := gatewayadmin.ActionDenyCall
	if approve {
		action = gatewayadmin.ActionApproveCall
	}
	callerID, _ := spiffeid.FromString(held.Caller)
	d := g.grant.Decide(g.adminCaller(ctx, admin), action,
		g.grant.HeldCallTarget(held.ID, callerID, g.orgOf(ctx, held.Caller), held.Tool))
	if !d.Allow {
		about["policies"] = d.Diagnostic.Policies
		reason := d.Reason()
		switch {
		case slices.Contains(d.Diagnostic.Policies, gatewayadmin.PolicyNoSelfApproval):
			reason = "you cannot approve your own held call: another administrator must (policy " + gatewayadmin.PolicyNoSelfApproval + ")"
		case len(d.Diagnostic.Policies) == 0 && len(d.Diagnostic.Errors) == 0:
			reason = "this held call is by a caller outside the organisation you administer here (" + reason + ")"
		}
		return approval.Request{}, g.refuseAdmin(ctx, admin, verb+" a held call", reason, about)
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
		"valid_until": r.ValidUntil, "admin_basis": acc.Basis})
	g.record(ctx, audit.Record{Kind: KindApproval, Actor: admin.String(), Decision: decision, Reason: withNote(reason, note),
		PolicyVersion: r.PolicyVersion, Diagnostic: d.JSON(), Data: data})
	return r, nil
}

// PendingCalls lists the calls waiting for an administrator, of every organisation: the operator's view. The
// administration API shows each administrator only the calls its access covers.
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
