package llmgw_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"

	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/chat"
)

func TestCompletionsStreamsAndEmbeddingsThroughGateway(t *testing.T) {
	up := newUpstream(t, "openai")
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}})
	ctx := testCtx(t)
	client := h.client(alice)

	t.Run("completion", func(t *testing.T) {
		resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:    "gpt-test",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("be brief"), openai.UserMessage("hi")},
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Choices[0].Message.Content; got != "Hello from openai." {
			t.Errorf("content %q", got)
		}
		if resp.Model != "gpt-test" {
			t.Errorf("model %q, want the public name", resp.Model)
		}
		if resp.Usage.PromptTokens == 0 || resp.Usage.CompletionTokens == 0 {
			t.Errorf("usage %+v", resp.Usage)
		}
		if got := up.last().Str("model"); got != "up-gpt-test" {
			t.Errorf("upstream saw model %q, want the upstream name", got)
		}
		start := h.auditor.wait(t, func(r llmAudit) bool { return r.Kind == llmgw.KindCall && !dataOf(t, r).Stream })
		if d := dataOf(t, start); start.Actor != alice || start.Decision != "allow" || d.Model != "gpt-test" || len(d.Prompt) != 0 {
			t.Errorf("call record %+v data %+v", start, d)
		}
		if !strings.Contains(string(start.Diagnostic), "policy0") {
			t.Errorf("diagnostic %s does not name the permitting policy", start.Diagnostic)
		}
		rec := h.auditor.wait(t, func(r llmAudit) bool {
			return r.Kind == llmgw.KindOutcome && dataOf(t, r).RequestID == dataOf(t, start).RequestID
		})
		d := dataOf(t, rec)
		if rec.Actor != alice || d.Status != 200 || d.Model != "gpt-test" || d.Provider != "openai" ||
			d.UpstreamModel != "up-gpt-test" || d.InputTokens != resp.Usage.PromptTokens || d.CostUSD <= 0 {
			t.Errorf("outcome record %+v data %+v", rec, d)
		}
		if len(d.Prompt) != 0 || len(d.Completion) != 0 {
			t.Errorf("prompt or answer logged without LogPrompts: %s", rec.Data)
		}
	})

	t.Run("stream", func(t *testing.T) {
		stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model:         "gpt-test",
			Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		})
		acc := openai.ChatCompletionAccumulator{}
		chunks := 0
		for stream.Next() {
			acc.AddChunk(stream.Current())
			chunks++
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if got := acc.Choices[0].Message.Content; got != "Hello from openai." {
			t.Errorf("streamed content %q", got)
		}
		if chunks < 4 {
			t.Errorf("%d chunks: the answer was not streamed", chunks)
		}
		if acc.Usage.CompletionTokens == 0 {
			t.Error("no usage chunk although the caller asked for one")
		}
		rec := h.auditor.wait(t, func(r llmAudit) bool { return r.Kind == llmgw.KindOutcome && dataOf(t, r).Stream })
		if d := dataOf(t, rec); d.OutputTokens != acc.Usage.CompletionTokens || d.TTFTMS <= 0 {
			t.Errorf("audit %+v, want output tokens %d and a time to first token", d, acc.Usage.CompletionTokens)
		}
		if h.metric("gen_ai_server_time_to_first_token_seconds", map[string]string{"caller": alice}) != 1 {
			t.Error("time to first token not observed")
		}
	})

	t.Run("stream without usage requested", func(t *testing.T) {
		stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model: "gpt-test", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		})
		for stream.Next() {
			if len(stream.Current().Choices) == 0 {
				t.Error("the usage chunk the gateway asked for reached a caller who did not")
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if so := up.last().Obj("stream_options"); so == nil || !so.Bool("include_usage") {
			t.Error("the gateway did not ask the upstream for usage")
		}
	})

	t.Run("embeddings", func(t *testing.T) {
		resp, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{
			Model: "gpt-test",
			Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"one text", "another text"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Data) != 2 || len(resp.Data[1].Embedding) != 64 || resp.Usage.PromptTokens != 4 {
			t.Errorf("embeddings %d, usage %+v", len(resp.Data), resp.Usage)
		}
		// The gateway records its metrics as the call finishes, which may be just after the answer is sent.
		for deadline := time.Now().Add(5 * time.Second); h.metric("gen_ai_client_token_usage", map[string]string{"gen_ai_operation_name": "embeddings",
			"gen_ai_token_type": "input", "caller": alice}) != 1; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("embedding tokens not in gen_ai_client_token_usage")
			}
		}
	})

	t.Run("tools, json mode, images and unknown fields pass through", func(t *testing.T) {
		up.Reply = func(chat.Object) reply {
			return reply{Tools: []fakeTool{{ID: "call_1", Name: "get_weather", ArgPieces: []string{`{"city":`, `"Oslo"}`}}}}
		}
		defer func() { up.Reply = nil }()
		resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: "gpt-test",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
				openai.TextContentPart("what is in this picture?"),
				openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: "data:image/png;base64,iVBORw0KGgo="}),
			})},
			Tools: []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
				Name: "get_weather", Parameters: shared.FunctionParameters{"type": "object",
					"properties": map[string]any{"city": map[string]any{"type": "string"}}},
			})},
			ResponseFormat: openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONObject: &shared.ResponseFormatJSONObjectParam{}},
		}, option.WithJSONSet("vendor_extension", map[string]any{"keep": true}))
		if err != nil {
			t.Fatal(err)
		}
		calls := resp.Choices[0].Message.ToolCalls
		if len(calls) != 1 || calls[0].Function.Name != "get_weather" || calls[0].Function.Arguments != `{"city":"Oslo"}` ||
			resp.Choices[0].FinishReason != "tool_calls" {
			t.Errorf("tool calls %+v finish %q", calls, resp.Choices[0].FinishReason)
		}
		body := up.last()
		if ext := body.Obj("vendor_extension"); ext == nil || !ext.Bool("keep") {
			t.Errorf("unknown field dropped: %v", body)
		}
		if rf := body.Obj("response_format"); rf.Str("type") != "json_object" {
			t.Errorf("response_format %s", body["response_format"])
		}
		if tools := body.Objs("tools"); len(tools) != 1 || tools[0].Obj("function").Str("name") != "get_weather" {
			t.Errorf("tools %s", body["tools"])
		}
		parts := body.Objs("messages")[0].Objs("content")
		if len(parts) != 2 || parts[1].Obj("image_url").Str("url") != "data:image/png;base64,iVBORw0KGgo=" {
			t.Errorf("image part not passed through: %s", body["messages"])
		}
	})
}

// llmAudit is the audit record type, named for brevity.
type llmAudit = auditRecord

func TestErrorsHaveOpenAIShape(t *testing.T) {
	up := newUpstream(t, "openai")
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}})
	for _, tc := range []struct {
		name, id, path, body string
		status               int
		code                 string
	}{
		{"not json", alice, "/v1/chat/completions", `{"model":`, 400, "invalid_request"},
		{"no messages", alice, "/v1/chat/completions", `{"model":"gpt-test","messages":[]}`, 400, "invalid_request"},
		{"unknown model", alice, "/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"x"}]}`, 404, "model_not_found"},
		{"unknown identity", "spiffe://acme.test/acme/agent/mallory", "/v1/chat/completions",
			`{"model":"gpt-test","messages":[{"role":"user","content":"x"}]}`, 403, "identity_not_permitted"},
		{"no identity", "", "/v1/models", ``, 401, "unauthenticated"},
		{"no such path", alice, "/v1/nothing", `{}`, 404, "not_found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body, _ := h.do(tc.id, http.MethodPost, tc.path, tc.body)
			if tc.path == "/v1/models" {
				status, body, _ = h.do(tc.id, http.MethodGet, tc.path, "")
			}
			var e struct {
				Error struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Code    string  `json:"code"`
					Param   *string `json:"param"`
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(body), &e); err != nil || status != tc.status || e.Error.Code != tc.code ||
				e.Error.Type == "" || !strings.Contains(e.Error.Message, "(request req_") {
				t.Errorf("status %d body %s, want %d with code %s", status, body, tc.status, tc.code)
			}
		})
	}
	// The malformed request and the unknown identity were audited; the unidentified caller could not be.
	h.auditor.wait(t, kindIs(llmgw.KindInvalid))
	h.auditor.wait(t, func(r auditRecord) bool {
		return r.Kind == llmgw.KindDenied && r.Actor == "spiffe://acme.test/acme/agent/mallory"
	})
}
