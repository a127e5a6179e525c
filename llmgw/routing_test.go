package llmgw_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/route"
)

// failoverModel has a strongly preferred first endpoint and a second one.
func failoverModel(first, second llmgw.Endpoint) llmgw.Model {
	first.Weight, second.Weight = 1_000_000, 1
	return llmgw.Model{Name: "gpt-test", Endpoints: []llmgw.Endpoint{first, second}, Backoff: time.Millisecond,
		HealthInterval: -1}
}

func ask(t *testing.T, h *harness, stream bool) (string, error) {
	t.Helper()
	ctx := testCtx(t)
	params := openai.ChatCompletionNewParams{Model: "gpt-test", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}
	if !stream {
		resp, err := h.client(alice).Chat.Completions.New(ctx, params)
		if err != nil {
			return "", err
		}
		return resp.Choices[0].Message.Content, nil
	}
	s := h.client(alice).Chat.Completions.NewStreaming(ctx, params)
	acc := openai.ChatCompletionAccumulator{}
	for s.Next() {
		acc.AddChunk(s.Current())
	}
	if len(acc.Choices) == 0 {
		return "", s.Err()
	}
	return acc.Choices[0].Message.Content, s.Err()
}

func closedPortURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr + "/v1"
}

func TestFailover(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream bool
		break1 func(t *testing.T, u *upstream, ep *llmgw.Endpoint)
	}{
		{"500", false, func(_ *testing.T, u *upstream, _ *llmgw.Endpoint) { u.failNext.Store(1); u.failStatus.Store(500) }},
		{"429", false, func(_ *testing.T, u *upstream, _ *llmgw.Endpoint) { u.failNext.Store(1); u.failStatus.Store(429) }},
		{"503 streamed", true, func(_ *testing.T, u *upstream, _ *llmgw.Endpoint) { u.failNext.Store(1); u.failStatus.Store(503) }},
		{"connection refused", false, func(t *testing.T, _ *upstream, ep *llmgw.Endpoint) { ep.BaseURL = closedPortURL(t) }},
		{"connection refused streamed", true, func(t *testing.T, _ *upstream, ep *llmgw.Endpoint) { ep.BaseURL = closedPortURL(t) }},
		{"stream dies before its first chunk", true, func(_ *testing.T, u *upstream, _ *llmgw.Endpoint) {
			u.Reply = func(chat.Object) reply { return reply{Pieces: []string{"x"}, DieAfter: -1} }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, second := newUpstream(t, "openai"), newUpstream(t, "openai")
			second.Reply = func(chat.Object) reply { return reply{Pieces: []string{"from the second"}} }
			ep1 := endpointOf(first, "m")
			tc.break1(t, first, &ep1)
			h := newHarness(t, llmgw.Config{Models: []llmgw.Model{failoverModel(ep1, endpointOf(second, "m"))}})
			got, err := ask(t, h, tc.stream)
			if err != nil || got != "from the second" {
				t.Fatalf("got %q, %v", got, err)
			}
			rec := h.auditor.wait(t, kindIs(llmgw.KindOutcome))
			if d := dataOf(t, rec); d.Attempts != 2 || d.Status != 200 {
				t.Errorf("attempts %d status %d", d.Attempts, d.Status)
			}
			// The failed endpoint now goes last: the next call goes straight to the second.
			before := first.chats.Load()
			if got, err := ask(t, h, tc.stream); err != nil || got != "from the second" || first.chats.Load() != before {
				t.Errorf("after failure: %q %v, first endpoint called %d more times", got, err, first.chats.Load()-before)
			}
		})
	}

	t.Run("not after a stream has started", func(t *testing.T) {
		first, second := newUpstream(t, "openai"), newUpstream(t, "openai")
		first.Reply = func(chat.Object) reply { return reply{Pieces: []string{"partial ", "answer"}, DieAfter: 1} }
		h := newHarness(t, llmgw.Config{Models: []llmgw.Model{failoverModel(endpointOf(first, "m"), endpointOf(second, "m"))}})
		got, err := ask(t, h, true)
		if err == nil || !strings.Contains(err.Error(), "upstream_error") || got != "partial " {
			t.Errorf("got %q, %v; want the partial answer and an error event", got, err)
		}
		if second.chats.Load() != 0 {
			t.Error("a stream the caller had seen part of was retried elsewhere")
		}
	})

	t.Run("not on a 400", func(t *testing.T) {
		first, second := newUpstream(t, "openai"), newUpstream(t, "openai")
		first.failNext.Store(1)
		first.failStatus.Store(400)
		h := newHarness(t, llmgw.Config{Models: []llmgw.Model{failoverModel(endpointOf(first, "m"), endpointOf(second, "m"))}})
		_, err := ask(t, h, false)
		if e := apiError(t, err); e.StatusCode != 400 || !strings.Contains(e.Message, "induced failure 400") || second.chats.Load() != 0 {
			t.Errorf("%d %q, second called %d times", e.StatusCode, e.Message, second.chats.Load())
		}
	})

	t.Run("retries run out", func(t *testing.T) {
		first, second := newUpstream(t, "openai"), newUpstream(t, "openai")
		for _, u := range []*upstream{first, second} {
			u.failNext.Store(100)
			u.failStatus.Store(503)
		}
		m := failoverModel(endpointOf(first, "m"), endpointOf(second, "m"))
		m.Retries = 3
		h := newHarness(t, llmgw.Config{Models: []llmgw.Model{m}})
		_, err := ask(t, h, false)
		e := apiError(t, err)
		if e.StatusCode != http.StatusBadGateway || e.Code != "upstream_error" || strings.Contains(e.Message, "induced") {
			t.Errorf("%d %s %q", e.StatusCode, e.Code, e.Message)
		}
		if n := first.chats.Load() + second.chats.Load(); n != 4 {
			t.Errorf("%d attempts, want 1 + 3 retries", n)
		}
		if d := dataOf(t, h.auditor.wait(t, kindIs(llmgw.KindOutcome))); d.UpstreamStatus != 503 || d.Attempts != 4 || d.Status != 502 {
			t.Errorf("audit %+v", d)
		}
	})
}

func TestHealthChecksBringAnEndpointBack(t *testing.T) {
	first, second := newUpstream(t, "openai"), newUpstream(t, "openai")
	first.Reply = func(chat.Object) reply { return reply{Pieces: []string{"first"}} }
	second.Reply = func(chat.Object) reply { return reply{Pieces: []string{"second"}} }
	m := failoverModel(endpointOf(first, "m"), endpointOf(second, "m"))
	m.HealthInterval = 20 * time.Millisecond
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{m}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.gw.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	up := func() float64 {
		return h.metric("umbra_llmgw_endpoint_up", map[string]string{"endpoint": first.srv.Listener.Addr().String() + "/m"})
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	first.health.Store(503)
	waitFor("the first endpoint is down", func() bool { return up() == 0 })
	if got, err := ask(t, h, false); err != nil || got != "second" {
		t.Fatalf("while the first is down: %q %v", got, err)
	}
	first.health.Store(200)
	waitFor("the first endpoint is back", func() bool { return up() == 1 })
	if got, err := ask(t, h, false); err != nil || got != "first" {
		t.Errorf("after recovery: %q %v", got, err)
	}
}

func TestWeightedEndpoints(t *testing.T) {
	a, b := newUpstream(t, "openai"), newUpstream(t, "openai")
	ea, eb := endpointOf(a, "m"), endpointOf(b, "m")
	ea.Weight, eb.Weight = 3, 1
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{{Name: "gpt-test", Endpoints: []llmgw.Endpoint{ea, eb}, HealthInterval: -1}}})
	const n = 400
	for range n {
		if _, err := ask(t, h, false); err != nil {
			t.Fatal(err)
		}
	}
	// Three quarters to a; the standard deviation of the share is about 0.022, so 0.1 is over 4.5 of them.
	share := float64(a.chats.Load()) / n
	t.Logf("a took %.3f of %d calls", share, n)
	if share < 0.75-0.1 || share > 0.75+0.1 || a.chats.Load()+b.chats.Load() != n {
		t.Errorf("a took %.3f (%d + %d calls), want 0.75", share, a.chats.Load(), b.chats.Load())
	}
}

// topics embeds text as a vector of topic words, so that similarity is predictable.
func topics(text string) []float64 {
	t := strings.ToLower(text)
	v := []float64{0, 0, 0.1}
	for _, w := range []string{"python", "function", "compile", "code"} {
		if strings.Contains(t, w) {
			v[0]++
		}
	}
	for _, w := range []string{"recipe", "bake", "cook", "pasta"} {
		if strings.Contains(t, w) {
			v[1]++
		}
	}
	return v
}

func TestAutoRouterLayers(t *testing.T) {
	up := newUpstream(t, "openai")
	up.Embed = topics
	up.Reply = func(body chat.Object) reply {
		if body.Str("model") == "up-clf" {
			// The classifier: it sees the route labels in the system prompt and the request as the user prompt.
			msgs := body.Objs("messages")
			if !strings.Contains(msgs[0].Str("content"), "- poetry: poems and verse") {
				return reply{Pieces: []string{"no labels given"}}
			}
			if strings.Contains(msgs[1].Str("content"), "poem") {
				return reply{Pieces: []string{"Poetry."}}
			}
			return reply{Pieces: []string{"none of these"}}
		}
		return reply{Pieces: []string{"answered by " + body.Str("model")}}
	}
	var models []llmgw.Model
	for _, name := range []string{"coder", "chef", "poet", "vision", "general", "embed", "clf"} {
		models = append(models, oneModel(name, up))
	}
	h := newHarness(t, llmgw.Config{
		Models: models,
		Policies: policyAll + `
@id("bob-no-coder")
forbid (principal == Umbra::Identity::"spiffe://acme.test/acme/agent/bob", action, resource == Umbra::Model::"coder");`,
		Router: llmgw.Router{
			Rules: []route.Rule{
				{Name: "code-fence", Model: "coder", Contains: []string{"```"}},
				{Name: "pictures", Model: "vision", Images: true},
			},
			Routes: []route.Route{
				{Name: "coding", Model: "coder", Description: "programming", Examples: []string{"write a python function", "fix this compile error"}},
				{Name: "cooking", Model: "chef", Description: "food", Examples: []string{"a recipe to bake a cake", "how long to cook pasta"}},
				{Name: "poetry", Model: "poet", Description: "poems and verse"},
			},
			EmbeddingModel:  "embed",
			ClassifierModel: "clf",
			Default:         "general",
		},
	})
	ctx := testCtx(t)
	for _, tc := range []struct {
		name, id  string
		msg       openai.ChatCompletionMessageParamUnion
		model     string
		layer     route.Layer
		reasonHas string
	}{
		{"rule", alice, openai.UserMessage("what does ```x := 1``` do"), "coder", route.LayerRule, `contains "` + "```" + `"`},
		{"rule on images", alice, openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{openai.TextContentPart("what is this"),
			openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: "https://example.com/cat.png"})}), "vision", route.LayerRule, "has images"},
		{"embedding", alice, openai.UserMessage("share a recipe to bake bread"), "chef", route.LayerEmbedding, "route cooking"},
		{"classifier", alice, openai.UserMessage("compose a poem about the sea"), "poet", route.LayerClassifier, `classifier answered "Poetry."`},
		{"default", alice, openai.UserMessage("what time is it"), "general", route.LayerDefault, "default"},
		{"rule skipped for a forbidden model", bob, openai.UserMessage("what does ```x := 1``` do"), "general", route.LayerDefault, "default"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr http.Header
			resp, err := h.client(tc.id).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "auto",
				Messages: []openai.ChatCompletionMessageParamUnion{tc.msg}}, optionResponseHeader(&hdr))
			if err != nil {
				t.Fatal(err)
			}
			if resp.Model != tc.model || resp.Choices[0].Message.Content != "answered by up-"+tc.model {
				t.Errorf("model %s said %q, want %s", resp.Model, resp.Choices[0].Message.Content, tc.model)
			}
			if hdr.Get("X-Umbra-Route") != string(tc.layer) {
				t.Errorf("route header %q", hdr.Get("X-Umbra-Route"))
			}
			rec := h.auditor.wait(t, func(r auditRecord) bool {
				return r.Kind == llmgw.KindOutcome && dataOf(t, r).RequestID == hdr.Get("X-Request-Id")
			})
			d := dataOf(t, rec)
			if d.Route == nil || d.Route.Layer != string(tc.layer) || d.Route.Model != tc.model || !strings.Contains(d.Route.Reason, tc.reasonHas) ||
				d.ModelRequested != "auto" || d.Model != tc.model {
				t.Errorf("audit route %+v, model %s", d.Route, d.Model)
			}
		})
	}
	// Route examples were embedded once and cached; later requests embed only new prompts.
	before := countModel(up, "up-embed")
	if _, err := h.client(alice).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "auto",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("share a recipe to bake bread")}}); err != nil {
		t.Fatal(err)
	}
	if n := countModel(up, "up-embed") - before; n != 0 {
		t.Errorf("%d embedding calls for a prompt seen before", n)
	}
	// Only callers permitted "auto" see it.
	page, err := h.client(carol).Models.List(ctx)
	if err != nil || page.Data[0].ID != "auto" {
		t.Errorf("models %v %v", page, err)
	}
}

func countModel(u *upstream, model string) int {
	n := 0
	for _, b := range u.requests() {
		if b.Str("model") == model {
			n++
		}
	}
	return n
}
