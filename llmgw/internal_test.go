package llmgw

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
)

func TestWeightedShuffleDistribution(t *testing.T) {
	m := &model{}
	for _, w := range []int{1, 2, 7} {
		ep := &endpoint{cfg: Endpoint{Weight: w}}
		ep.healthy.Store(true)
		m.endpoints = append(m.endpoints, ep)
	}
	const draws = 30000
	first := map[int]int{}
	second := map[[2]int]int{}
	for range draws {
		order := m.order(time.Now())
		if len(order) != 3 {
			t.Fatalf("order has %d endpoints", len(order))
		}
		first[order[0].cfg.Weight]++
		second[[2]int{order[0].cfg.Weight, order[1].cfg.Weight}]++
	}
	// The standard deviation of each share is below 0.003; 0.015 is five of them.
	for w, n := range first {
		if got, want := float64(n)/draws, float64(w)/10; math.Abs(got-want) > 0.015 {
			t.Errorf("weight %d first in %.4f of orders, want %.2f", w, got, want)
		}
	}
	// Without replacement: after weight 7 comes weight 2 with probability 2/3.
	if got := float64(second[[2]int{7, 2}]) / float64(first[7]); math.Abs(got-2.0/3) > 0.02 {
		t.Errorf("after 7, 2 came second in %.4f, want 0.667", got)
	}
}

func TestOrderPutsDownEndpointsLast(t *testing.T) {
	m := &model{}
	for range 3 {
		ep := &endpoint{cfg: Endpoint{Weight: 1}}
		ep.healthy.Store(true)
		m.endpoints = append(m.endpoints, ep)
	}
	m.endpoints[0].healthy.Store(false)                                  // failed its probe
	m.endpoints[1].downUntil.Store(time.Now().Add(time.Hour).UnixNano()) // failed a request
	for range 50 {
		if o := m.order(time.Now()); o[0] != m.endpoints[2] {
			t.Fatal("an endpoint that is down came first")
		}
	}
}

func TestFilterChunkFlushesIntoAChoiceWithoutDelta(t *testing.T) {
	g, err := New(Config{Guardrails: Guardrails{PII: guard.Redact, Responses: true}})
	if err != nil {
		t.Fatal(err)
	}
	rs := g.newResponseStreams()
	c := newCall("chat", "openai")
	parse := func(s string) chat.Object {
		o, err := chat.ParseObject([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	var text strings.Builder
	for _, s := range []string{
		`{"choices":[{"index":0,"delta":{"content":"mail me at a@b.exa"}}],"usage":null}`,
		`{"choices":[{"index":0,"delta":{"content":"mple.com"}}]}`,
		`{"choices":[{"index":0,"finish_reason":"stop"}]}`,
		`{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}`,
	} {
		out, _ := g.filterChunk(c, "pub", parse(s), rs, false, nil)
		if out == nil {
			continue
		}
		if out.Str("model") != "pub" {
			t.Errorf("model %q", out.Str("model"))
		}
		if _, ok := out["usage"]; ok {
			t.Error("usage passed to a caller that did not ask")
		}
		for _, ch := range out.Objs("choices") {
			text.WriteString(ch.Obj("delta").Str("content"))
		}
	}
	if text.String() != "mail me at [REDACTED:email]" {
		t.Errorf("caller got %q", text.String())
	}
	if len(c.findings) != 1 || c.findings[0].Direction != "response" || c.findings[0].Count != 1 {
		t.Errorf("findings %+v", c.findings)
	}
}
