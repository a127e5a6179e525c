package llmgw_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"

	"github.com/umbra-mesh/umbra/llmgw"
)

const tieredPolicies = `
@id("research-big")
permit (principal in Umbra::Workgroup::"acme/research", action == Umbra::Action::"use", resource == Umbra::Model::"gpt-big");

@id("acme-small")
permit (principal in Umbra::Org::"acme", action == Umbra::Action::"use", resource)
when { ["gpt-small", "embed"].contains(resource.name) };

@id("no-embed-for-bob")
forbid (principal == Umbra::Identity::"spiffe://acme.test/acme/agent/bob", action, resource == Umbra::Model::"embed");
`

func TestModelsPerIdentityAndForbiddenModelAudited(t *testing.T) {
	up := newUpstream(t, "openai")
	h := newHarness(t, llmgw.Config{
		Models:   []llmgw.Model{oneModel("gpt-big", up), oneModel("gpt-small", up), oneModel("embed", up)},
		Policies: tieredPolicies,
	})
	ctx := testCtx(t)
	list := func(id string) []string {
		page, err := h.client(id).Models.List(ctx)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		var ids []string
		for _, m := range page.Data {
			ids = append(ids, m.ID)
		}
		slices.Sort(ids)
		return ids
	}
	for id, want := range map[string][]string{
		alice: {"embed", "gpt-big", "gpt-small"},
		bob:   {"gpt-small"},
		carol: nil,
	} {
		if got := list(id); !slices.Equal(got, want) {
			t.Errorf("%s sees %v, want %v", id, got, want)
		}
	}
	if _, err := h.client(bob).Models.Get(ctx, "gpt-big"); apiError(t, err).StatusCode != 404 {
		t.Error("bob can look up a model he may not use")
	}

	before := up.chats.Load()
	_, err := h.client(bob).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "gpt-big", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	})
	e := apiError(t, err)
	if e.StatusCode != http.StatusForbidden || e.Code != "model_not_permitted" || e.Type != "permission_error" || e.Param != "model" {
		t.Errorf("refusal %d %s %s %s", e.StatusCode, e.Code, e.Type, e.Param)
	}
	if up.chats.Load() != before {
		t.Error("a refused call reached the upstream")
	}
	rec := h.auditor.wait(t, func(r auditRecord) bool { return r.Kind == llmgw.KindDenied && r.Actor == bob })
	if rec.Decision != "deny" || !strings.Contains(string(rec.Diagnostic), "no policy permits use of model gpt-big") ||
		dataOf(t, rec).ModelRequested != "gpt-big" || rec.PolicyVersion == "" {
		t.Errorf("denial record %+v diagnostic %s", rec, rec.Diagnostic)
	}

	// A forbid names itself in the diagnostic.
	_, err = h.client(bob).Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "embed",
		Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("x")}})
	if apiError(t, err).StatusCode != http.StatusForbidden {
		t.Errorf("bob used embed: %v", err)
	}
	rec = h.auditor.wait(t, func(r auditRecord) bool {
		return r.Kind == llmgw.KindDenied && r.Actor == bob && dataOf(t, r).ModelRequested == "embed"
	})
	if !strings.Contains(string(rec.Diagnostic), "no-embed-for-bob") {
		t.Errorf("diagnostic %s does not name the forbid", rec.Diagnostic)
	}

	// Alice, in the research workgroup, may use the big model.
	if _, err := h.client(alice).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "gpt-big", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	}); err != nil {
		t.Fatal(err)
	}
	if h.metric("umbra_llmgw_requests_total", map[string]string{"caller": bob, "outcome": "model_not_permitted"}) != 2 {
		t.Error("refusals not counted")
	}
}

func TestMetricsForAdministratorsOnly(t *testing.T) {
	up := newUpstream(t, "openai")
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}})
	if status, _, _ := h.do(alice, http.MethodGet, "/metrics", ""); status != http.StatusForbidden {
		t.Errorf("non-administrator got metrics: %d", status)
	}
	status, body, _ := h.do(admin, http.MethodGet, "/metrics", "")
	if status != 200 || !strings.Contains(body, "umbra_llmgw_endpoint_up") {
		t.Errorf("administrator: %d %.200s", status, body)
	}
}
