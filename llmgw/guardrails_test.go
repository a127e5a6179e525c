package llmgw_test

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"

	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
)

type corpusCase struct {
	Name      string   `json:"name"`
	Text      string   `json:"text"`
	Detectors []string `json:"detectors"`
	Redacted  string   `json:"redacted"`
	Chunks    []string `json:"chunks"`
	Injection bool     `json:"injection"`
}

func loadCorpus(t *testing.T) []corpusCase {
	t.Helper()
	b, err := os.ReadFile("testdata/guardrails.json")
	if err != nil {
		t.Fatal(err)
	}
	var cs []corpusCase
	if err := json.Unmarshal(b, &cs); err != nil {
		t.Fatal(err)
	}
	return cs
}

func guardHarness(t *testing.T, mode guard.Mode, up *upstream) *harness {
	return newHarness(t, llmgw.Config{
		Models:     []llmgw.Model{oneModel("gpt-test", up)},
		Guardrails: llmgw.Guardrails{PII: mode, Secrets: mode, Injection: mode, Responses: true},
		LogPrompts: true,
	})
}

func TestGuardrailsOnRequests(t *testing.T) {
	corpus := loadCorpus(t)
	ctx := testCtx(t)
	t.Run("redact", func(t *testing.T) {
		up := newUpstream(t, "openai")
		h := guardHarness(t, guard.Redact, up)
		for _, c := range corpus {
			_, err := h.client(alice).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-test",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("system text is scanned too"), openai.UserMessage(c.Text)}})
			if err != nil {
				t.Fatalf("%s: %v", c.Name, err)
			}
			if got := up.last().Objs("messages")[1].Str("content"); got != c.Redacted {
				t.Errorf("%s: upstream saw %q, want %q", c.Name, got, c.Redacted)
			}
		}
		// Findings are counted per kind, so that a prompt full of them still fits an audit record.
		many := strings.Repeat("write to someone@example.com ", 3000)
		if _, err := h.client(bob).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-test",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(many)}}); err != nil {
			t.Fatal(err)
		}
		rec := h.auditor.wait(t, func(r auditRecord) bool { return r.Actor == bob })
		if d := dataOf(t, rec); len(d.Guardrails) != 1 || d.Guardrails[0].Count != 3000 || len(rec.Data) > 64<<10+4096 {
			t.Errorf("findings %+v in %d bytes", d.Guardrails, len(rec.Data))
		}
		// The audit record names what was found, never the text itself, and logs the prompt as sent.
		rec = h.auditor.wait(t, func(r auditRecord) bool { return strings.Contains(string(r.Data), "us_ssn") })
		d := dataOf(t, rec)
		if rec.Kind != llmgw.KindCall || !strings.Contains(string(d.Prompt), "[REDACTED:us_ssn]") || strings.Contains(string(rec.Data), "6789") {
			t.Errorf("record %s", rec.Data)
		}
	})
	t.Run("block", func(t *testing.T) {
		up := newUpstream(t, "openai")
		h := guardHarness(t, guard.Block, up)
		for _, c := range corpus {
			_, err := h.client(bob).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-test",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(c.Text)}})
			if len(c.Detectors) == 0 {
				if err != nil {
					t.Errorf("%s: clean text refused: %v", c.Name, err)
				}
				continue
			}
			if e := apiError(t, err); e.StatusCode != 400 || e.Code != "guardrail_blocked" {
				t.Errorf("%s: %d %s", c.Name, e.StatusCode, e.Code)
			}
		}
		if n := up.chats.Load(); n != 2 {
			t.Errorf("%d requests reached the upstream, want only the 2 clean ones", n)
		}
		rec := h.auditor.wait(t, kindIs(llmgw.KindGuardrail))
		if d := dataOf(t, rec); rec.Decision != "deny" || len(d.Guardrails) == 0 || d.Guardrails[0].Direction != "request" ||
			d.Guardrails[0].Mode != "block" || len(d.Prompt) != 0 {
			t.Errorf("guardrail record %+v", d)
		}
	})
}

func TestGuardrailsOnResponses(t *testing.T) {
	ctx := testCtx(t)
	var cases []corpusCase
	for _, c := range loadCorpus(t) {
		if !c.Injection {
			cases = append(cases, c)
		}
	}
	answer := func(c corpusCase) func(chat.Object) reply {
		pieces := c.Chunks
		if pieces == nil {
			pieces = []string{c.Text}
		}
		return func(chat.Object) reply { return reply{Pieces: append([]string{"Sure. "}, pieces...)} }
	}
	streamed := func(h *harness) (string, string, error) {
		s := h.client(alice).Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "gpt-test",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("tell me")}})
		acc := openai.ChatCompletionAccumulator{}
		for s.Next() {
			acc.AddChunk(s.Current())
		}
		if len(acc.Choices) == 0 {
			return "", "", s.Err()
		}
		return acc.Choices[0].Message.Content, acc.Choices[0].FinishReason, s.Err()
	}

	t.Run("redact", func(t *testing.T) {
		up := newUpstream(t, "openai")
		h := guardHarness(t, guard.Redact, up)
		for _, c := range cases {
			up.Reply = answer(c)
			got, finish, err := streamed(h)
			if err != nil || got != "Sure. "+c.Redacted || finish != "stop" {
				t.Errorf("%s streamed: %q finish %q err %v; want %q", c.Name, got, finish, err, c.Redacted)
			}
			resp, err := h.client(alice).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-test",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("tell me")}})
			if err != nil || resp.Choices[0].Message.Content != "Sure. "+c.Redacted {
				t.Errorf("%s: %v %+v", c.Name, err, resp)
			}
		}
		rec := h.auditor.wait(t, func(r auditRecord) bool {
			d := dataOf(t, r)
			return d.Stream && slices.ContainsFunc(d.Guardrails, func(g guardFinding) bool {
				return g.Direction == "response" && g.Detector == "iban" && g.Count == 1
			})
		})
		if d := dataOf(t, rec); !strings.Contains(d.Completion, "[REDACTED:iban]") || strings.Contains(d.Completion, "4051") {
			t.Errorf("logged completion %q", d.Completion)
		}
	})

	t.Run("block", func(t *testing.T) {
		up := newUpstream(t, "openai")
		h := guardHarness(t, guard.Block, up)
		for _, c := range cases {
			up.Reply = answer(c)
			got, finish, err := streamed(h)
			if err != nil {
				t.Fatalf("%s: %v", c.Name, err)
			}
			if len(c.Detectors) == 0 {
				if got != "Sure. "+c.Text || finish != "stop" {
					t.Errorf("%s: clean answer changed: %q %q", c.Name, got, finish)
				}
				continue
			}
			if finish != "content_filter" || len(got) >= len("Sure. ")+len(c.Text)/2 {
				t.Errorf("%s: finish %q, let through %q", c.Name, finish, got)
			}
			resp, err := h.client(alice).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-test",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("tell me")}})
			if err != nil || resp.Choices[0].Message.Content != "" || resp.Choices[0].FinishReason != "content_filter" {
				t.Errorf("%s: %v %+v", c.Name, err, resp.Choices)
			}
		}
	})
}
