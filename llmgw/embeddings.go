package llmgw

import (
	"context"
	"net/http"

	"github.com/umbra-mesh/umbra/llmgw/budget"
	"github.com/umbra-mesh/umbra/llmgw/chat"
)

func (g *Gateway) serveEmbeddings(w http.ResponseWriter, r *http.Request) {
	c := newCall("embeddings", "openai")
	out := &openaiResponder{w: w}
	defer func() { g.finish(r.Context(), c) }()
	if !g.admit(r, c, out) {
		return
	}
	fail := func(kind string, e *apiError) {
		c.fail(kind, e)
		out.fail(c, e)
	}
	body, aerr := g.readBody(r)
	if aerr != nil {
		fail(KindInvalid, aerr)
		return
	}
	req, err := chat.ParseEmbeddings(body)
	if err != nil {
		fail(KindInvalid, invalid("%v", err))
		return
	}
	c.requested = req.Model
	m := g.models[req.Model]
	if m == nil {
		e := errorf(http.StatusNotFound, "invalid_request_error", codeModelNotFound, "model %s does not exist", req.Model)
		e.Param = "model"
		fail(KindInvalid, e)
		return
	}
	d := g.authz.decide(c.principal, req.Model, "embeddings", c.intent)
	c.decision = &d
	if !d.Allow {
		e := errorf(http.StatusForbidden, "permission_error", codeNotPermitted, "identity %s may not use model %s: %s",
			c.principal.ID, req.Model, d.Reason())
		e.Param = "model"
		fail(KindDenied, e)
		return
	}
	if texts := req.Texts(); texts != nil {
		out, e := g.guardTexts(c, texts)
		if e != nil {
			fail(KindGuardrail, e)
			return
		}
		req.SetTexts(out)
	}
	c.model = m.Name
	res, aerr := g.reserve(r.Context(), c, budget.Estimate{Tokens: req.EstimateInputTokens(),
		CostNanos: costNanos(req.EstimateInputTokens(), 0, m.maxIn, 0)})
	if aerr != nil {
		out.fail(c, aerr)
		return
	}
	defer g.settle(r.Context(), c, res)
	if e := g.begin(r.Context(), c); e != nil {
		out.fail(c, e)
		return
	}
	resp, ep, err := attempt(r.Context(), g, c, m, func(ctx context.Context, ep *endpoint) (chat.Object, error) {
		return ep.p.Embeddings(ctx, req)
	})
	c.useEndpoint(ep)
	if err != nil {
		c.upstreamFailed(err)
		fail(KindCall, upstreamError(err))
		return
	}
	usage, ok := chat.UsageOf(resp)
	if !ok {
		usage = chat.Usage{Input: req.EstimateInputTokens()}
	}
	c.setUsage(ep, usage)
	resp.Set("model", m.Name)
	g.settle(r.Context(), c, res)
	out.complete(c, resp)
}
