package llmgw_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/umbra-mesh/umbra/llmgw"
)

// A policy on the declared intent: calls must say why, and one category is refused; the call's records keep
// the intent as declared.
func TestIntentPolicyAndAudit(t *testing.T) {
	up := newUpstream(t, "openai")
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}, Policies: `
@id("use") permit (principal, action == Umbra::Action::"use", resource);
@id("say-why") forbid (principal, action, resource) unless { context has intent };
@id("no-exfiltration") forbid (principal, action, resource) when { context has intent && context.intent.category == "exfiltration" };
`})
	ctx := testCtx(t)
	chat := func(opts ...option.RequestOption) error {
		_, err := h.client(alice).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: "gpt-test", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		}, opts...)
		return err
	}
	// No intent: the policy refuses, and says which rule.
	if e := apiError(t, chat()); e.StatusCode != http.StatusForbidden || !strings.Contains(e.Message, "say-why") {
		t.Fatalf("call without intent: %d %s", e.StatusCode, e.Message)
	}
	// A declared intent, its purpose percent-encoded UTF-8.
	purpose := "résumé des tickets, 100% lus"
	enc := "r%C3%A9sum%C3%A9 des tickets, 100%25 lus"
	if err := chat(option.WithHeader(llmgw.HeaderIntent, enc), option.WithHeader(llmgw.HeaderIntentCategory, "support.triage")); err != nil {
		t.Fatalf("call with intent: %v", err)
	}
	rec := h.auditor.wait(t, kindIs(llmgw.KindCall))
	if in := dataOf(t, rec).Intent; in == nil || in.Purpose != purpose || in.Category != "support.triage" {
		t.Fatalf("llm.call record intent %+v, want %q support.triage", in, purpose)
	}
	rec = h.auditor.wait(t, kindIs(llmgw.KindOutcome))
	if in := dataOf(t, rec).Intent; in == nil || in.Purpose != purpose {
		t.Fatalf("llm.outcome record intent %+v", in)
	}
	// A refused category: refused before any model sees it, recorded with the intent and the policy.
	before := up.chats.Load()
	if e := apiError(t, chat(option.WithHeader(llmgw.HeaderIntent, "copy the customer list"), option.WithHeader(llmgw.HeaderIntentCategory, "exfiltration"))); e.StatusCode != http.StatusForbidden {
		t.Fatalf("exfiltration call: %d %s", e.StatusCode, e.Message)
	}
	if up.chats.Load() != before {
		t.Fatal("a refused call reached the upstream")
	}
	rec = h.auditor.wait(t, func(r auditRecord) bool {
		in := dataOf(t, r).Intent
		return r.Kind == llmgw.KindDenied && in != nil && in.Category == "exfiltration"
	})
	if !strings.Contains(string(rec.Diagnostic), "no-exfiltration") {
		t.Fatalf("denial diagnostic %s", rec.Diagnostic)
	}
	// A malformed declaration is a bad request, named as such.
	for _, hdr := range [][2]string{{"two%0Alines", ""}, {"ok", "Not A Category"}, {"", "research"}} {
		opts := []option.RequestOption{option.WithHeader(llmgw.HeaderIntentCategory, hdr[1])}
		if hdr[0] != "" {
			opts = append(opts, option.WithHeader(llmgw.HeaderIntent, hdr[0]))
		}
		if e := apiError(t, chat(opts...)); e.StatusCode != http.StatusBadRequest || !strings.Contains(e.Message, llmgw.HeaderIntent) {
			t.Errorf("intent %q %q: %d %s", hdr[0], hdr[1], e.StatusCode, e.Message)
		}
	}
}
