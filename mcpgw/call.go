package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/yosida95/uritemplate/v3"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/mcpgw/approval"
	"github.com/umbra-mesh/umbra/mcpgw/canon"
	"github.com/umbra-mesh/umbra/mcpgw/pin"
	"github.com/umbra-mesh/umbra/mcpgw/policy"
	"github.com/umbra-mesh/umbra/mcpgw/redact"
	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// MetaApproval is the _meta key under which a client names an approval request when it retries a sensitive
// call after giving up waiting (the request ID is in the error data of the first attempt).
const MetaApproval = "umbra/approval"

// MetaIntent is the _meta key under which a client declares the intent of a tool call: an object
// {"purpose": "...", "category": "..."} (see authz.Intent). Policies see it as context.intent; the call's
// records keep it.
const MetaIntent = "umbra/intent"

// metaIntent reads the declared intent of a request's _meta: nil when there is none.
func metaIntent(meta mcp.Meta) (*authz.Intent, error) {
	v, ok := meta[MetaIntent]
	if !ok {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w: not JSON", authz.ErrInvalidIntent)
	}
	in, err := authz.ParseIntentJSON(b)
	if err != nil {
		return nil, err
	}
	return &in, nil
}

// The order of checks for a tool call: arguments are canonicalised (what policy sees, what an approval is
// bound to and what the backend receives are the same bytes); the tool must exist, be approved and be visible
// to the caller, else it is unknown; the call itself must be permitted; the caller's limits apply; a sensitive
// call waits for an approval; the call's record is written and confirmed by the audit trail (else the call is
// refused); then the backend is called under the per-call timeout, the result's size is checked and the
// outcome is recorded.

func (g *Gateway) toolHandler(c *caller, name string) mcp.ToolHandler {
	return func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		res, err := g.callTool(ctx, c, name, req)
		if err != nil {
			var we *jsonrpc.Error
			if errors.As(err, &we) {
				return nil, we // not wrapped: the SDK must see a *jsonrpc.Error to send it as is
			}
		}
		return res, err
	}
}

func (g *Gateway) callTool(ctx context.Context, c *caller, name string, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	o := g.newOp("tool", c, req.Session.ID(), name)
	raw := []byte(req.Params.Arguments)
	if len(raw) == 0 || string(raw) == "null" {
		raw = []byte("{}")
	}
	digest, args, err := canon.Digest(raw)
	if err != nil || args[0] != '{' {
		msg := "arguments must be a JSON object"
		if err != nil {
			msg = err.Error()
		}
		return nil, o.refuse(ctx, "invalid_arguments", "invalid arguments: "+msg,
			&jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "invalid arguments: " + msg})
	}
	o.digest, o.args = digest, args
	if o.intent, err = metaIntent(req.Params.Meta); err != nil {
		msg := "_meta." + MetaIntent + ": " + err.Error()
		return nil, o.refuse(ctx, "invalid_intent", msg, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: msg})
	}

	e, ok := g.catalog.tool(name)
	if !ok || e.state != pin.Approved {
		reason := "no such tool"
		if ok {
			reason = "tool " + string(e.state)
		}
		return nil, o.refuse(ctx, "hidden", reason, unknownTool(name))
	}
	o.backend, o.original = e.backend.cfg.Name, e.def.Name

	p, err := g.principal(ctx, c.id)
	if err != nil {
		g.log.Warn("mcpgw: caller lookup failed", "caller", c.id, "ref", o.ref, "err", redact.String(err.Error()))
		return nil, o.refuse(ctx, "unavailable", "caller lookup failed", rpcError(CodeUnavailable, o.ref, "", "cannot look the caller up now"))
	}
	if p.Revoked {
		return nil, o.refuse(ctx, "revoked", "identity revoked", rpcError(CodeNotAuthorized, o.ref, "", "not authorised"))
	}
	eng := g.engine()
	o.version = eng.Version()
	pp := toPolicy(p)
	d := eng.Decide(policy.Request{Principal: pp, Action: policy.ListTool, Item: e.item})
	if !d.Allow {
		o.diag = &d.Diagnostic
		return nil, o.refuse(ctx, "hidden", "tool not visible to caller", unknownTool(name))
	}
	d = eng.Decide(policy.Request{Principal: pp, Action: policy.CallTool, Item: e.item, Arguments: args, Intent: o.intent})
	o.diag = &d.Diagnostic
	if !d.Allow {
		return nil, o.refuse(ctx, "policy", "call not permitted: "+d.Reason(),
			rpcError(CodeNotAuthorized, o.ref, "", "not authorised to call %s with these arguments: %s", name, d.Reason()))
	}

	release, code := g.limits.acquire(c.id.String())
	if code != 0 {
		return nil, o.refuse(ctx, codeNames[code], codeNames[code], limitError(code, o.ref))
	}
	defer release()

	if d.Sensitive {
		if err := g.approve(ctx, req, o, d); err != nil {
			return nil, err
		}
	}

	cs, blocked, err := e.backend.session(ctx, req.Session)
	if err != nil {
		if aerr := o.begin(ctx); aerr != nil {
			return nil, aerr
		}
		o.done(ctx, statusUnavailable, err.Error())
		return errorResult("%s is unavailable (ref %s)", o.backend, o.ref), nil
	}
	if blocked[o.original] {
		return nil, o.refuse(ctx, "hidden", "definition differs in this client's backend session", unknownTool(name))
	}
	if err := o.begin(ctx); err != nil {
		return nil, err
	}
	params := &mcp.CallToolParams{Name: o.original, Arguments: json.RawMessage(args)}
	if tok := req.Params.GetProgressToken(); tok != nil {
		key, drop := g.progress.add(ctx, req.Session, tok)
		defer drop()
		params.SetProgressToken(key)
	}
	leave := e.backend.enter(ctx, req.Session)
	defer leave()
	cctx, cancel := g.callContext(ctx)
	defer cancel()
	bctx, span := g.startBackend(cctx, o, "tools/call")
	res, err := cs.CallTool(bctx, params)
	g.endBackend(span, err, err == nil && res.IsError)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		o.done(ctx, statusCancelled, "")
		return nil, ctx.Err()
	case cctx.Err() != nil:
		o.done(ctx, statusTimeout, "")
		return errorResult("%s timed out after %s (ref %s)", name, g.cfg.Limits.CallTimeout, o.ref), nil
	case isRPCError(err):
		var we *jsonrpc.Error
		errors.As(err, &we)
		o.done(ctx, statusRPCError, we.Message)
		return nil, we
	default:
		e.backend.broken(cs)
		o.done(ctx, statusUnavailable, err.Error())
		return errorResult("%s failed during the call (ref %s)", o.backend, o.ref), nil
	}
	o.size = encodedSize(res)
	if n := o.size; g.cfg.Limits.MaxResponse > 0 && n > g.cfg.Limits.MaxResponse {
		o.done(ctx, statusTooLarge, fmt.Sprintf("%d bytes", n))
		return errorResult("the result of %d bytes exceeds the gateway's limit of %d bytes (ref %s)", n, g.cfg.Limits.MaxResponse, o.ref), nil
	}
	if res.Content == nil {
		res.Content = []mcp.Content{} // "content" is required
	}
	status := statusOK
	if res.IsError {
		status = statusToolError
	}
	o.done(ctx, status, "")
	return res, nil
}

// callContext bounds a forwarded call by the per-call timeout, if there is one.
func (g *Gateway) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if g.cfg.Limits.CallTimeout > 0 {
		return context.WithTimeout(ctx, g.cfg.Limits.CallTimeout)
	}
	return context.WithCancel(ctx)
}

func limitError(code int64, ref string) *jsonrpc.Error {
	if code == CodeRateLimited {
		return rpcError(code, ref, "", "rate limit exceeded; slow down")
	}
	return rpcError(code, ref, "", "too many calls in flight for this identity")
}

func errorResult(format string, args ...any) *mcp.CallToolResult {
	return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprintf(format, args...)}}}
}

func encodedSize(v any) int64 {
	b, err := json.Marshal(v)
	if err != nil {
		return 1 << 62
	}
	return int64(len(b))
}

// approve holds a sensitive call until an administrator decides, or uses an approval already given. It returns
// nil when the call may proceed.
func (g *Gateway) approve(ctx context.Context, req *mcp.CallToolRequest, o *op, d policy.Decision) *jsonrpc.Error {
	b := approval.Binding{Caller: o.caller.String(), Tool: o.name, ArgsDigest: o.digest, PolicyVersion: o.version}
	record := func(decision, reason, id string) {
		data, _ := json.Marshal(map[string]any{"ref": o.ref, "approval": id, "tool": o.name, "backend": o.backend, "args_digest": o.digest})
		g.record(ctx, audit.Record{Kind: KindApproval, Actor: o.caller.String(), Decision: decision, Reason: reason,
			PolicyVersion: o.version, Diagnostic: diagJSON(o.diag), Data: data})
	}
	refuse := func(id, reason string) *jsonrpc.Error {
		g.metrics.denied.WithLabelValues(o.caller.String(), "approval").Inc()
		traceRefused(ctx, o, "approval", reason)
		record(audit.DecisionDeny, reason, id)
		return rpcError(CodeApproval, o.ref, id, "%s", reason)
	}
	redeem := func(id string) *jsonrpc.Error {
		if _, err := g.approvals.Redeem(ctx, id, b); err != nil {
			return refuse(id, "approval "+id+" refused: "+strings.TrimPrefix(err.Error(), "approval: "))
		}
		o.approval = id
		record(audit.DecisionAllow, "approval used", id)
		return nil
	}
	// A retry naming an approval must fit it exactly.
	if id, ok := req.Params.Meta[MetaApproval].(string); ok && id != "" {
		return redeem(id)
	}
	// A retry with the same binding uses an approval given after the first attempt gave up, or waits for the
	// decision the first attempt asked for.
	r, found, err := g.approvals.Find(ctx, b)
	switch {
	case err == nil && found && r.Status == approval.Approved:
		return redeem(r.ID)
	case err == nil && found:
	default:
		r, err = g.approvals.Open(ctx, b, o.backend, redact.JSON(o.args), strings.Join(d.Diagnostic.Reasons, "; "))
		if err != nil {
			g.log.Error("mcpgw: cannot open approval request", "ref", o.ref, "err", err)
			return refuse("", "cannot ask for approval now; denied")
		}
		record("", "approval requested", r.ID)
		g.log.Info("mcpgw: call awaits approval", "approval", r.ID, "tool", o.name, "caller", o.caller)
	}
	if tok := req.Params.GetProgressToken(); tok != nil {
		_ = req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok,
			Message: "awaiting approval " + r.ID})
	}
	id := r.ID
	waitStart := time.Now()
	wctx, stop := ctx, context.CancelFunc(func() {})
	if hold := g.cfg.Approvals.Hold; hold > 0 {
		wctx, stop = context.WithTimeout(ctx, hold)
	}
	r, err = g.approvals.Wait(wctx, id)
	stop()
	if err != nil && ctx.Err() != nil {
		// The call was cancelled, or its client went away, before a decision: withdraw the request, so that
		// an approval given from now on runs nothing.
		traceApproval(ctx, id, time.Since(waitStart), string(approval.Cancelled))
		actx := context.WithoutCancel(ctx)
		if _, withdrawn, err := g.approvals.Cancel(actx, id); err != nil {
			g.log.Warn("mcpgw: cannot withdraw the approval request of a cancelled call", "approval", id, "ref", o.ref, "err", err)
		} else if withdrawn {
			record(audit.DecisionDeny, "call cancelled by the caller before a decision; approval request withdrawn", id)
		}
		return rpcError(CodeApproval, o.ref, id, "call cancelled; approval request %s withdrawn", id)
	}
	if err != nil {
		traceApproval(ctx, id, time.Since(waitStart), "pending")
		return refuse(id, "no decision yet on approval "+id+"; retry naming it in _meta."+MetaApproval)
	}
	traceApproval(ctx, id, time.Since(waitStart), string(r.Status))
	switch r.Status {
	case approval.Approved:
		// The binding must still hold: policies replaced during the wait void the approval.
		b.PolicyVersion = g.engine().Version()
		return redeem(r.ID)
	case approval.Denied:
		return refuse(r.ID, "call denied by "+r.DecidedBy)
	case approval.Cancelled:
		return refuse(r.ID, "approval "+r.ID+" was withdrawn: a call waiting on it was cancelled; call again to ask anew")
	default:
		return refuse(r.ID, fmt.Sprintf("no decision within %s: denied", r.Deadline.Sub(r.Created).Round(time.Millisecond)))
	}
}

func (g *Gateway) promptHandler(c *caller, name string) mcp.PromptHandler {
	return func(ctx context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
		o := g.newOp("prompt", c, req.Session.ID(), name)
		e, ok := g.catalog.prompt(name)
		if !ok || e.state != pin.Approved {
			return nil, o.refuse(ctx, "hidden", "no such prompt", unknownPrompt(name))
		}
		o.backend, o.original = e.backend.cfg.Name, e.def.Name
		args, _ := json.Marshal(req.Params.Arguments)
		if req.Params.Arguments == nil {
			args = []byte("{}")
		}
		o.digest, o.args, _ = canon.Digest(args)
		if err := g.authorize(ctx, o, c, policy.ListPrompt, policy.GetPrompt, e.item, e.item, o.args, unknownPrompt(name)); err != nil {
			return nil, err
		}
		release, code := g.limits.acquire(c.id.String())
		if code != 0 {
			return nil, o.refuse(ctx, codeNames[code], codeNames[code], limitError(code, o.ref))
		}
		defer release()
		cs, _, err := e.backend.session(ctx, req.Session)
		if err != nil {
			if aerr := o.begin(ctx); aerr != nil {
				return nil, aerr
			}
			o.done(ctx, statusUnavailable, err.Error())
			return nil, rpcError(CodeUnavailable, o.ref, "", "%s is unavailable", o.backend)
		}
		if err := o.begin(ctx); err != nil {
			return nil, err
		}
		cctx, cancel := g.callContext(ctx)
		defer cancel()
		bctx, span := g.startBackend(cctx, o, "prompts/get")
		res, err := cs.GetPrompt(bctx, &mcp.GetPromptParams{Name: o.original, Arguments: req.Params.Arguments})
		g.endBackend(span, err, false)
		if err != nil {
			return nil, g.forwardError(ctx, o, e.backend, cs, cctx, err)
		}
		// The messages must be the pinned ones: checked on this result when the prompt takes no arguments,
		// else on a get with the placeholders the pin was taken with.
		probe, perr := res, error(nil)
		if len(e.def.Arguments) > 0 || len(req.Params.Arguments) > 0 {
			probe, perr = promptProbe(cctx, cs, e.def)
			if perr != nil && !isRPCError(perr) {
				return nil, g.forwardError(ctx, o, e.backend, cs, cctx, perr)
			}
		}
		if err := g.verifyItem(ctx, o, e.backend, pin.Ref{Kind: pin.Prompt, Backend: o.backend, Name: o.original}, name, e.digest,
			promptDef(e.def, probe, perr)); err != nil {
			return nil, err
		}
		o.size = encodedSize(res)
		if n := o.size; g.cfg.Limits.MaxResponse > 0 && n > g.cfg.Limits.MaxResponse {
			o.done(ctx, statusTooLarge, fmt.Sprintf("%d bytes", n))
			return nil, rpcError(CodeTooLarge, o.ref, "", "result of %d bytes exceeds the limit of %d", n, g.cfg.Limits.MaxResponse)
		}
		o.done(ctx, statusOK, "")
		return res, nil
	}
}

// readHandler serves reads of the resource or template registered under key.
func (g *Gateway) readHandler(c *caller, key string) mcp.ResourceHandler {
	return func(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
		uri := req.Params.URI
		o := g.newOp("resource", c, req.Session.ID(), uri)
		e, ok := g.catalog.resource(key)
		backend, original, okURI := backendURI(uri)
		if !ok || !okURI || backend != e.backend.cfg.Name || e.state != pin.Approved {
			return nil, o.refuse(ctx, "hidden", "no such resource", mcp.ResourceNotFoundError(uri))
		}
		o.backend, o.original = backend, original
		item := e.item
		if e.tmpl != nil {
			item.Name, item.Original = uri, original
		}
		if err := g.authorize(ctx, o, c, policy.ListResource, policy.ReadResource, e.item, item, nil, mcp.ResourceNotFoundError(uri)); err != nil {
			return nil, err
		}
		release, code := g.limits.acquire(c.id.String())
		if code != 0 {
			return nil, o.refuse(ctx, codeNames[code], codeNames[code], limitError(code, o.ref))
		}
		defer release()
		cs, _, err := e.backend.session(ctx, req.Session)
		if err != nil {
			if aerr := o.begin(ctx); aerr != nil {
				return nil, aerr
			}
			o.done(ctx, statusUnavailable, err.Error())
			return nil, rpcError(CodeUnavailable, o.ref, "", "%s is unavailable", o.backend)
		}
		if err := o.begin(ctx); err != nil {
			return nil, err
		}
		cctx, cancel := g.callContext(ctx)
		defer cancel()
		bctx, span := g.startBackend(cctx, o, "resources/read")
		res, err := cs.ReadResource(bctx, &mcp.ReadResourceParams{URI: original})
		g.endBackend(span, err, false)
		if err != nil {
			return nil, g.forwardError(ctx, o, e.backend, cs, cctx, err)
		}
		if e.res != nil { // a static resource's contents are pinned
			if err := g.verifyItem(ctx, o, e.backend, pin.Ref{Kind: pin.Resource, Backend: backend, Name: e.res.URI}, e.uri, e.digest,
				resourceDef(e.res, res, nil)); err != nil {
				return nil, err
			}
		}
		for _, rc := range res.Contents {
			if rc != nil && rc.URI != "" {
				rc.URI = exposedURI(backend, rc.URI)
			}
		}
		o.size = encodedSize(res)
		if n := o.size; g.cfg.Limits.MaxResponse > 0 && n > g.cfg.Limits.MaxResponse {
			o.done(ctx, statusTooLarge, fmt.Sprintf("%d bytes", n))
			return nil, rpcError(CodeTooLarge, o.ref, "", "result of %d bytes exceeds the limit of %d", n, g.cfg.Limits.MaxResponse)
		}
		o.done(ctx, statusOK, "")
		return res, nil
	}
}

// authorize checks that the caller may see the listed item (else hidden is the answer: it does not exist for
// the caller) and use the item asked for (the listed one, or a URI expanded from a listed template) with args.
func (g *Gateway) authorize(ctx context.Context, o *op, c *caller, see, use policy.Action, listed, asked policy.Item, args json.RawMessage, hidden error) error {
	p, err := g.principal(ctx, c.id)
	if err != nil {
		return o.refuse(ctx, "unavailable", "caller lookup failed", rpcError(CodeUnavailable, o.ref, "", "cannot look the caller up now"))
	}
	if p.Revoked {
		return o.refuse(ctx, "revoked", "identity revoked", rpcError(CodeNotAuthorized, o.ref, "", "not authorised"))
	}
	eng := g.engine()
	o.version = eng.Version()
	d := eng.Decide(policy.Request{Principal: toPolicy(p), Action: see, Item: listed})
	if !d.Allow {
		o.diag = &d.Diagnostic
		return o.refuse(ctx, "hidden", "not visible to caller", hidden)
	}
	d = eng.Decide(policy.Request{Principal: toPolicy(p), Action: use, Item: asked, Arguments: args, Intent: o.intent})
	o.diag = &d.Diagnostic
	if !d.Allow {
		return o.refuse(ctx, "policy", "not permitted: "+d.Reason(), rpcError(CodeNotAuthorized, o.ref, "", "not authorised: %s", d.Reason()))
	}
	return nil
}

// authorizeUnlisted decides on a read of a URI that is no resource listed for the caller: it may expand a
// template the caller sees (the SDK then finds the template's handler, which decides), or be refused as
// unknown, and recorded.
func (g *Gateway) authorizeUnlisted(ctx context.Context, o *op, c *caller) error {
	c.mu.Lock()
	var templates []string
	for key, v := range c.resources {
		if strings.HasPrefix(v, "t") {
			templates = append(templates, key)
		}
	}
	c.mu.Unlock()
	for _, key := range templates {
		if e, ok := g.catalog.resource(key); ok && e.tmpl != nil && templateMatches(key, o.name) {
			return nil
		}
	}
	return o.refuse(ctx, "hidden", "no such resource", mcp.ResourceNotFoundError(o.name))
}

// templateMatches reports whether uri expands the exposed template key, as the SDK will decide when it routes
// the read.
func templateMatches(key, uri string) bool {
	t, err := uritemplate.New(key)
	return err == nil && t.Regexp().MatchString(uri)
}

// forwardError turns a failed prompt get or resource read into what the caller sees.
func (g *Gateway) forwardError(ctx context.Context, o *op, b *backendConn, cs *mcp.ClientSession, cctx context.Context, err error) error {
	var we *jsonrpc.Error
	switch {
	case ctx.Err() != nil:
		o.done(ctx, statusCancelled, "")
		return ctx.Err()
	case cctx.Err() != nil:
		o.done(ctx, statusTimeout, "")
		return rpcError(CodeUnavailable, o.ref, "", "%s timed out after %s", o.backend, g.cfg.Limits.CallTimeout)
	case errors.As(err, &we):
		o.done(ctx, statusRPCError, we.Message)
		return we
	default:
		b.broken(cs)
		o.done(ctx, statusUnavailable, err.Error())
		return rpcError(CodeUnavailable, o.ref, "", "%s failed", o.backend)
	}
}
