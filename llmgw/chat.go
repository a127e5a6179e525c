package llmgw

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strings"

	"github.com/umbra-mesh/umbra/llmgw/budget"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/provider"
	"github.com/umbra-mesh/umbra/llmgw/route"
	"github.com/umbra-mesh/umbra/llmgw/sse"
	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// responder writes a call's outcome in the shape of the API the caller used. The core works in the OpenAI
// format; the Anthropic ingress translates on the way out.
type responder interface {
	fail(c *call, e *apiError)          // nothing was sent yet
	complete(c *call, resp chat.Object) // a whole completion
	chunk(c *call, ch chat.Object) error
	end(c *call)                // after the last chunk
	abort(c *call, e *apiError) // the stream broke after it started
}

func setCallHeaders(w http.ResponseWriter, c *call) {
	h := w.Header()
	h.Set("X-Request-Id", c.id)
	if c.model != "" {
		h.Set("X-Umbra-Model", c.model)
	}
	if c.route != nil {
		h.Set("X-Umbra-Route", string(c.route.Layer))
	}
}

// openaiResponder answers in the OpenAI format.
type openaiResponder struct {
	w   http.ResponseWriter
	sse *sse.Writer
}

func (o *openaiResponder) fail(c *call, e *apiError) {
	setCallHeaders(o.w, c)
	setRetryAfter(o.w, e.RetryAfter)
	writeJSON(o.w, e.Status, openAIError(e, c.id))
}

func (o *openaiResponder) complete(c *call, resp chat.Object) {
	b, err := resp.Encode()
	if err != nil {
		o.fail(c, errorf(http.StatusBadGateway, "server_error", codeUpstream, "the model endpoint sent an unusable response"))
		return
	}
	setCallHeaders(o.w, c)
	writeJSON(o.w, http.StatusOK, b)
}

func (o *openaiResponder) chunk(c *call, ch chat.Object) error {
	if o.sse == nil {
		setCallHeaders(o.w, c)
		o.sse = sse.NewWriter(o.w)
	}
	b, err := ch.Encode()
	if err != nil {
		return err
	}
	return o.sse.Write("", b)
}

func (o *openaiResponder) end(c *call) {
	if o.sse == nil {
		setCallHeaders(o.w, c)
		o.sse = sse.NewWriter(o.w)
	}
	_ = o.sse.Write("", []byte("[DONE]"))
}

func (o *openaiResponder) abort(c *call, e *apiError) {
	if o.sse == nil {
		o.fail(c, e)
		return
	}
	_ = o.sse.Write("", openAIError(e, c.id))
}

func (g *Gateway) serveChat(w http.ResponseWriter, r *http.Request) {
	c := newCall("chat", "openai")
	out := &openaiResponder{w: w}
	defer func() { g.finish(r.Context(), c) }()
	if !g.admit(r, c, out) {
		return
	}
	body, aerr := g.readBody(r)
	if aerr != nil {
		c.fail(KindInvalid, aerr)
		out.fail(c, aerr)
		return
	}
	req, err := chat.ParseRequest(body)
	if err != nil {
		e := invalid("%v", err)
		c.fail(KindInvalid, e)
		out.fail(c, e)
		return
	}
	g.chat(r.Context(), c, req, out, req.IncludeUsage())
}

// admit authenticates the caller; on failure it answers and returns false.
func (g *Gateway) admit(r *http.Request, c *call, out responder) bool {
	p, aerr := g.authenticate(r)
	c.principal, c.known = p, !p.ID.IsZero()
	if aerr != nil {
		c.fail(KindDenied, aerr)
		out.fail(c, aerr)
		return false
	}
	in, err := authz.ParseIntentHeader(r.Header.Get(HeaderIntent), r.Header.Get(HeaderIntentCategory))
	if err != nil {
		e := invalid("%s header: %v", HeaderIntent, err)
		c.fail(KindInvalid, e)
		out.fail(c, e)
		return false
	}
	c.intent = in
	return true
}

// chat runs a chat completion: model and policy, guardrails, routing, budget, upstream, response.
func (g *Gateway) chat(ctx context.Context, c *call, req *chat.Request, out responder, wantUsage bool) {
	c.requested, c.stream = req.Model, req.Stream
	p := c.principal
	routing := g.router != nil && req.Model == g.cfg.Router.Name
	m := g.models[req.Model]
	if m == nil && !routing {
		e := errorf(http.StatusNotFound, "invalid_request_error", codeModelNotFound, "model %s does not exist", req.Model)
		e.Param = "model"
		c.fail(KindInvalid, e)
		out.fail(c, e)
		return
	}
	if e := g.permitModel(c, req.Model); e != nil {
		out.fail(c, e)
		return
	}
	if e := g.guardChat(c, req); e != nil {
		c.fail(KindGuardrail, e)
		out.fail(c, e)
		return
	}
	if routing {
		// The router's embedding and classifier calls are the caller's: refused before they run when the
		// caller is over budget, and billed to the caller when they do.
		if e := g.checkBudget(ctx, c); e != nil {
			out.fail(c, e)
			return
		}
		if g.cfg.LogPrompts {
			c.prompt, _ = json.Marshal(req.Messages)
		}
		bill := &routeBill{c: c}
		dec, err := g.router.Decide(withRouteBill(ctx, bill), routeInput(req), func(name string) bool { return g.allowed(p, name, "chat", c.intent) })
		c.route = &dec
		if bill.usage != (chat.Usage{}) || bill.cost != 0 {
			c.routerUsage = &routerUsage{InputTokens: bill.usage.Input, OutputTokens: bill.usage.Output,
				CostUSD: float64(bill.cost) / 1e9}
		}
		if bill.refused != nil {
			out.fail(c, bill.refused)
			return
		}
		if err != nil {
			e := errorf(http.StatusBadRequest, "invalid_request_error", codeNoRoute, "no model the caller may use fits this request")
			c.fail(KindInvalid, e)
			out.fail(c, e)
			return
		}
		g.metrics.routes.WithLabelValues(string(dec.Layer), dec.Model).Inc()
		m = g.models[dec.Model]
		d := g.authz.decide(p, m.Name, "chat", c.intent)
		c.decision = &d
	}
	c.model = m.Name
	if g.cfg.LogPrompts && !c.begun {
		c.prompt, _ = json.Marshal(req.Messages)
	}
	res, aerr := g.reserveChat(ctx, c, m, req)
	if aerr != nil {
		out.fail(c, aerr)
		return
	}
	defer g.settle(ctx, c, res) // settles once; the paths below settle before answering, so usage reads are current
	if e := g.begin(ctx, c); e != nil {
		out.fail(c, e)
		return
	}
	if req.Stream {
		g.streamChat(ctx, c, m, req, out, wantUsage, res)
		return
	}
	resp, ep, err := attempt(ctx, g, c, m, func(ctx context.Context, ep *endpoint) (chat.Object, error) {
		return ep.p.Chat(ctx, req)
	})
	c.useEndpoint(ep)
	if err != nil {
		c.upstreamFailed(err)
		e := upstreamError(err)
		c.fail(KindCall, e)
		out.fail(c, e)
		return
	}
	usage, ok := chat.UsageOf(resp)
	if !ok {
		usage = chat.Usage{Input: req.EstimateInputTokens(), Output: int64(len(completionText(resp)))/4 + 1}
	}
	c.setUsage(ep, usage)
	g.guardCompletion(c, resp)
	resp.Set("model", m.Name)
	if g.cfg.LogPrompts {
		c.completion = completionText(resp)
	}
	g.settle(ctx, c, res)
	out.complete(c, resp)
}

func routeInput(req *chat.Request) route.Input {
	return route.Input{Prompt: req.PromptText(), LastUser: req.LastUserText(), Tools: req.HasTools(), Images: req.HasImages()}
}

// upstreamFailed notes the status of the last failed attempt for the audit record.
func (c *call) upstreamFailed(err error) {
	var pe *provider.Error
	if errors.As(err, &pe) {
		c.upstreamStatus = pe.Status
	}
}

func (c *call) useEndpoint(ep *endpoint) {
	if ep != nil {
		c.provider, c.upstream, c.endpoint = ep.cfg.Provider, ep.cfg.Model, ep.label
	}
}

// setUsage records usage and its cost at the endpoint's prices.
func (c *call) setUsage(ep *endpoint, u chat.Usage) {
	c.usage = u
	if ep != nil {
		c.costNanos = costNanos(u.Input, u.Output, ep.cfg.InputPrice, ep.cfg.OutputPrice)
	}
}

// costNanos prices tokens: USD per million tokens is nano-USD per thousandth of a token.
func costNanos(in, out int64, inPrice, outPrice float64) int64 {
	return int64(math.Round(float64(in)*inPrice*1000 + float64(out)*outPrice*1000))
}

func completionText(resp chat.Object) string {
	var s string
	for _, ch := range resp.Objs("choices") {
		if m := ch.Obj("message"); m != nil {
			s += m.Str("content")
		}
	}
	return s
}

// claims lists the budgets a principal is counted against: its own (or the default for identities without
// one) and its organisation's, when there is one.
func (g *Gateway) claims(p Principal) []budget.Claim {
	id := p.ID.String()
	var own, def, org budget.Limits
	hasOwn, hasOrg := false, false
	for _, b := range g.cfg.Budgets {
		lim := budget.Limits{RequestsPerMinute: b.RequestsPerMinute, TokensPerMinute: b.TokensPerMinute,
			TokensPerDay: b.TokensPerDay, TokensPerMonth: b.TokensPerMonth, CostPerDay: b.CostPerDay,
			CostPerMonth: b.CostPerMonth, MaxConcurrent: b.MaxConcurrent}
		switch {
		case b.Identity == id:
			own, hasOwn = own.Tighter(lim), true
		case b.Identity == "" && b.Org == "":
			def = def.Tighter(lim)
		case b.Org != "" && b.Org == p.Org:
			org, hasOrg = org.Tighter(lim), true
		}
	}
	if !hasOwn {
		own = def
	}
	claims := []budget.Claim{{Subject: "id:" + id, Limits: own}}
	if hasOrg {
		claims = append(claims, budget.Claim{Subject: "org:" + p.Org, Limits: org})
	}
	return claims
}

// reserveChat admits a chat call against its budgets and caps its output upstream at what they grant: the
// caller's max_completion_tokens or max_tokens (else OutputReserve) per choice, times n, clamped to the room
// left in every token and cost budget. The cap is written into the request (max_completion_tokens and
// max_tokens as the caller set them; when it set neither, max_completion_tokens for a model served only by
// OpenAI, max_tokens otherwise), so that the call cannot use more than it reserved. A call for which the budgets
// cannot grant one token per choice is refused. Without token or cost budgets the request is left as it is.
func (g *Gateway) reserveChat(ctx context.Context, c *call, m *model, req *chat.Request) (*budget.Reservation, *apiError) {
	per, capped := req.MaxOutputTokens()
	if !capped {
		per = g.cfg.OutputReserve
	}
	n, ok := req.Body.Int("n")
	if !ok || n < 1 {
		n = 1
	}
	in := req.EstimateInputTokens()
	res, e := g.reserve(ctx, c, budget.Estimate{Tokens: in, CostNanos: costNanos(in, 0, m.maxIn, 0),
		Output: per * n, OutputNanos: m.maxOut * 1000, MinOutput: n})
	if e != nil {
		return nil, e
	}
	granted, bounded := res.Output()
	if !bounded {
		return res, nil
	}
	limit := granted / n
	if limit >= per && capped {
		return res, nil
	}
	set := false
	for _, k := range []string{"max_completion_tokens", "max_tokens"} {
		if v, ok := req.Body.Int(k); ok && v > 0 {
			req.Body.Set(k, min(v, limit))
			set = true
		}
	}
	if !set {
		key := "max_completion_tokens"
		for _, ep := range m.endpoints {
			if ep.cfg.Provider != "openai" {
				key = "max_tokens"
			}
		}
		req.Body.Set(key, limit)
	}
	return res, nil
}

// checkBudget refuses a call whose caller is over a budget or rate limit now, reserving nothing.
func (g *Gateway) checkBudget(ctx context.Context, c *call) *apiError {
	return g.budgetError(c, g.limiter.Check(ctx, g.claims(c.principal)))
}

// reserve admits the call against its budgets.
func (g *Gateway) reserve(ctx context.Context, c *call, est budget.Estimate) (*budget.Reservation, *apiError) {
	res, err := g.limiter.Reserve(ctx, g.claims(c.principal), est)
	if e := g.budgetError(c, err); e != nil {
		return nil, e
	}
	return res, nil
}

// subjectKind labels a budget subject ("id:..." or "org:...") without naming it.
func subjectKind(subject string) string {
	if strings.HasPrefix(subject, "org:") {
		return "org"
	}
	return "identity"
}

// budgetError turns a limiter's refusal into what the caller is told, and records it on the call.
func (g *Gateway) budgetError(c *call, err error) *apiError {
	var ex *budget.Exceeded
	switch {
	case errors.As(err, &ex):
		c.limit = ex
		g.metrics.refusals.WithLabelValues(ex.Limit, subjectKind(ex.Subject)).Inc()
		var e *apiError
		if ex.Rate {
			e = errorf(http.StatusTooManyRequests, "rate_limit_error", codeRateLimited, "rate limit reached for %s: %s",
				ex.Subject, ex.Limit)
			c.fail(KindRateLimited, e)
		} else {
			e = errorf(http.StatusPaymentRequired, "insufficient_quota", codeBudgetExceeded, "budget exhausted for %s: %s",
				ex.Subject, ex.Limit)
			c.fail(KindBudgetExceeded, e)
		}
		e.RetryAfter = ex.RetryAfter
		return e
	case err != nil:
		g.log.Error("llmgw: usage store unavailable", "request_id", c.id, "err", err)
		e := errorf(http.StatusServiceUnavailable, "server_error", codeInternal, "usage accounting is unavailable; retry later")
		c.fail(KindUnavailable, e)
		return e
	}
	return nil
}

func (g *Gateway) settle(ctx context.Context, c *call, res *budget.Reservation) {
	used := budget.Counts{InputTokens: c.usage.Input, OutputTokens: c.usage.Output, CostNanos: c.costNanos}
	if err := res.Settle(context.WithoutCancel(ctx), c.model, used); err != nil {
		g.log.Error("llmgw: usage not recorded", "request_id", c.id, "err", err)
	}
}

// permitModel asks the policy whether the caller may use model for chat, keeps the decision with the call, and
// returns the refusal (already recorded on the call) when it may not.
func (g *Gateway) permitModel(c *call, model string) *apiError {
	d := g.authz.decide(c.principal, model, "chat", c.intent)
	c.decision = &d
	if d.Allow {
		return nil
	}
	e := errorf(http.StatusForbidden, "permission_error", codeNotPermitted, "identity %s may not use model %s: %s",
		c.principal.ID, model, d.Reason())
	e.Param = "model"
	c.fail(KindDenied, e)
	return e
}
