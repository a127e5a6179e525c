package llmgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/umbra-mesh/umbra/llmgw/budget"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/route"
)

// newRouter builds the routing model. Its embedding and classifier calls go to the configured models
// directly, each reserved against and billed to the budgets of the caller being routed (see routeBill).
func (g *Gateway) newRouter() (*route.Router, error) {
	rc := g.cfg.Router
	var embed route.Embedder
	if rc.EmbeddingModel != "" {
		m := g.models[rc.EmbeddingModel]
		embed = func(ctx context.Context, texts []string) ([][]float64, error) { return g.embed(ctx, m, texts) }
	}
	var classify route.Classifier
	if rc.ClassifierModel != "" {
		m := g.models[rc.ClassifierModel]
		classify = func(ctx context.Context, system, user string) (string, error) {
			return g.classify(ctx, m, system, user)
		}
	}
	return route.New(route.Config{Rules: rc.Rules, Routes: rc.Routes, MinSimilarity: rc.MinSimilarity, Default: rc.Default},
		embed, classify)
}

// routeBill carries, in the context of a routing decision, the call being routed: the router's own model
// calls are reserved against its budgets before they run and settled with their usage.
type routeBill struct {
	c       *call
	refused *apiError // a router call the caller's budget refused: the request is refused with it
	usage   chat.Usage
	cost    int64
}

type routeBillKey struct{}

func withRouteBill(ctx context.Context, b *routeBill) context.Context {
	return context.WithValue(ctx, routeBillKey{}, b)
}

// errRouteBudget is what the router sees when one of its calls is refused for the caller (its budget, or its
// llm.call record could not be written).
var errRouteBudget = errors.New("refused for the caller")

// billed runs a router call to model m reserved against the routed caller's budgets (est tokens in, out
// tokens at most) and settles the usage it reports.
func billed[T any](ctx context.Context, g *Gateway, m *model, in, out int64, run func() (T, chat.Usage, *endpoint, error)) (T, error) {
	b, _ := ctx.Value(routeBillKey{}).(*routeBill)
	if b == nil {
		v, _, _, err := run()
		return v, err
	}
	var zero T
	if b.refused != nil {
		return zero, errRouteBudget
	}
	res, e := g.reserve(ctx, b.c, budget.Estimate{Tokens: in + out, CostNanos: costNanos(in, out, m.maxIn, m.maxOut)})
	if e != nil {
		b.refused = e
		return zero, errRouteBudget
	}
	// The call reaches a model here: its llm.call record is written first, as for the call itself.
	if e := g.begin(ctx, b.c); e != nil {
		b.refused = e
		_ = res.Settle(context.WithoutCancel(ctx), m.Name, budget.Counts{})
		return zero, errRouteBudget
	}
	v, u, ep, err := run()
	var cost int64
	if ep != nil {
		cost = costNanos(u.Input, u.Output, ep.cfg.InputPrice, ep.cfg.OutputPrice)
	}
	b.usage.Input += u.Input
	b.usage.Output += u.Output
	b.cost += cost
	if serr := res.Settle(context.WithoutCancel(ctx), m.Name, budget.Counts{InputTokens: u.Input, OutputTokens: u.Output,
		CostNanos: cost}); serr != nil {
		g.log.Error("llmgw: router usage not recorded", "request_id", b.c.id, "err", serr)
	}
	return v, err
}

func (g *Gateway) embed(ctx context.Context, m *model, texts []string) ([][]float64, error) {
	var in int64
	for _, t := range texts {
		in += int64(len(t))/3 + 1
	}
	return billed(ctx, g, m, in, 0, func() ([][]float64, chat.Usage, *endpoint, error) {
		resp, ep, err := g.embedOnce(ctx, m, texts)
		if err != nil {
			return nil, chat.Usage{}, ep, err
		}
		u, ok := chat.UsageOf(resp)
		if !ok {
			u = chat.Usage{Input: in}
		}
		v, err := vectorsOf(resp, len(texts))
		return v, u, ep, err
	})
}

func (g *Gateway) embedOnce(ctx context.Context, m *model, texts []string) (chat.Object, *endpoint, error) {
	body := chat.Object{}
	body.Set("model", m.Name)
	body.Set("input", texts)
	body.Set("encoding_format", "float")
	req := &chat.EmbeddingsRequest{Body: body, Model: m.Name}
	return attempt(ctx, g, &call{}, m, func(ctx context.Context, ep *endpoint) (chat.Object, error) {
		return ep.p.Embeddings(ctx, req)
	})
}

func vectorsOf(resp chat.Object, n int) ([][]float64, error) {
	out := make([][]float64, n)
	for _, d := range resp.Objs("data") {
		i, ok := d.Int("index")
		if !ok || i < 0 || int(i) >= len(out) {
			return nil, errors.New("embedding response has a bad index")
		}
		var v []float64
		if err := json.Unmarshal(d["embedding"], &v); err != nil {
			return nil, fmt.Errorf("embedding response: %w", err)
		}
		out[i] = v
	}
	return out, nil
}

func (g *Gateway) classify(ctx context.Context, m *model, system, user string) (string, error) {
	in := int64(len(system)+len(user))/3 + 11
	return billed(ctx, g, m, in, classifierMaxTokens, func() (string, chat.Usage, *endpoint, error) {
		resp, ep, err := g.classifyOnce(ctx, m, system, user)
		if err != nil {
			return "", chat.Usage{}, ep, err
		}
		u, ok := chat.UsageOf(resp)
		if !ok {
			u = chat.Usage{Input: in, Output: classifierMaxTokens}
		}
		return completionText(resp), u, ep, nil
	})
}

// classifierMaxTokens caps the classifier's answer, a route name.
const classifierMaxTokens = 16

func (g *Gateway) classifyOnce(ctx context.Context, m *model, system, user string) (chat.Object, *endpoint, error) {
	msgs := []map[string]string{{"role": "system", "content": system}, {"role": "user", "content": user}}
	body := chat.Object{}
	body.Set("model", m.Name)
	body.Set("messages", msgs)
	body.Set("max_tokens", classifierMaxTokens)
	body.Set("temperature", 0)
	b, err := body.Encode()
	if err != nil {
		return nil, nil, err
	}
	req, err := chat.ParseRequest(b)
	if err != nil {
		return nil, nil, err
	}
	return attempt(ctx, g, &call{}, m, func(ctx context.Context, ep *endpoint) (chat.Object, error) {
		return ep.p.Chat(ctx, req)
	})
}
