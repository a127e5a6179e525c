package llmgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/route"
)

// newRouter builds the routing model. Its embedding and classifier calls go to the configured models
// directly: they are the gateway's own work, not counted against the caller's budget.
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

func (g *Gateway) embed(ctx context.Context, m *model, texts []string) ([][]float64, error) {
	body := chat.Object{}
	body.Set("model", m.Name)
	body.Set("input", texts)
	body.Set("encoding_format", "float")
	req := &chat.EmbeddingsRequest{Body: body, Model: m.Name}
	resp, _, err := attempt(ctx, g, &call{}, m, func(ctx context.Context, ep *endpoint) (chat.Object, error) {
		return ep.p.Embeddings(ctx, req)
	})
	if err != nil {
		return nil, err
	}
	out := make([][]float64, len(texts))
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
	msgs := []map[string]string{{"role": "system", "content": system}, {"role": "user", "content": user}}
	body := chat.Object{}
	body.Set("model", m.Name)
	body.Set("messages", msgs)
	body.Set("max_tokens", 16)
	body.Set("temperature", 0)
	b, err := body.Encode()
	if err != nil {
		return "", err
	}
	req, err := chat.ParseRequest(b)
	if err != nil {
		return "", err
	}
	resp, _, err := attempt(ctx, g, &call{}, m, func(ctx context.Context, ep *endpoint) (chat.Object, error) {
		return ep.p.Chat(ctx, req)
	})
	if err != nil {
		return "", err
	}
	return completionText(resp), nil
}
