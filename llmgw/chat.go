package llmgw

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"

	"github.com/umbra-mesh/umbra/llmgw/budget"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/provider"
	"github.com/umbra-mesh/umbra/llmgw/route"
	"github.com/umbra-mesh/umbra/llmgw/sse"
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
	d := g.authz.decide(p, req.Model, "chat")
	c.decision = &d
	if !d.Allow {
		e := errorf(http.StatusForbidden, "permission_error", codeNotPermitted, "identity %s may not use model %s", p.ID, req.Model)
		e.Param = "model"
		c.fail(KindDenied, e)
		out.fail(c, e)
		return
	}
	if e := g.guardChat(c, req); e != nil {
		c.fail(KindGuardrail, e)
		out.fail(c, e)
		return
	}
	if routing {
		dec, err := g.router.Decide(ctx, routeInput(req), func(name string) bool { return g.allowed(p, name, "chat") })
		c.route = &dec
		if err != nil {
			e := errorf(http.StatusBadRequest, "invalid_request_error", codeNoRoute, "no model the caller may use fits this request")
			c.fail(KindInvalid, e)
			out.fail(c, e)
			return
		}
		g.metrics.routes.WithLabelValues(string(dec.Layer), dec.Model).Inc()
		m = g.models[dec.Model]
		d := g.authz.decide(p, m.Name, "chat")
		c.decision = &d
	}
	c.model = m.Name
	if g.cfg.LogPrompts {
		c.prompt, _ = json.Marshal(req.Messages)
	}
	outEst, ok := req.MaxOutputTokens()
	if !ok {
		outEst = g.cfg.OutputReserve
	}
	res, aerr := g.reserve(ctx, c, m, req.EstimateInputTokens(), outEst)
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

// reserve admits the call against its budgets.
func (g *Gateway) reserve(ctx context.Context, c *call, m *model, in, out int64) (*budget.Reservation, *apiError) {
	est := budget.Estimate{Tokens: in + out, CostNanos: costNanos(in, out, m.maxIn, m.maxOut)}
	res, err := g.limiter.Reserve(ctx, g.claims(c.principal), est)
	var ex *budget.Exceeded
	switch {
	case errors.As(err, &ex):
		c.limit = ex
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
		return nil, e
	case err != nil:
		g.log.Error("llmgw: usage store unavailable", "request_id", c.id, "err", err)
		e := errorf(http.StatusServiceUnavailable, "server_error", codeInternal, "usage accounting is unavailable; retry later")
		c.fail(KindUnavailable, e)
		return nil, e
	}
	return res, nil
}

func (g *Gateway) settle(ctx context.Context, c *call, res *budget.Reservation) {
	used := budget.Counts{InputTokens: c.usage.Input, OutputTokens: c.usage.Output, CostNanos: c.costNanos}
	if err := res.Settle(context.WithoutCancel(ctx), c.model, used); err != nil {
		g.log.Error("llmgw: usage not recorded", "request_id", c.id, "err", err)
	}
}
