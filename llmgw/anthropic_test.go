package llmgw_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/shared"

	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/chat"
)

func TestAnthropicUpstreamTranslated(t *testing.T) {
	up := newUpstream(t, "anthropic")
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("claude", up)}})
	ctx := testCtx(t)
	client := h.client(alice)
	weather := openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
		Name: "get_weather", Description: openai.String("weather by city"),
		Parameters: shared.FunctionParameters{"type": "object", "properties": map[string]any{"city": map[string]any{"type": "string"}}},
	})
	// A conversation with a system prompt, an earlier tool call and its result.
	history := []openai.ChatCompletionMessageParamUnion{
		openai.SystemMessage("You are terse."),
		openai.UserMessage("weather in Oslo?"),
		{OfAssistant: &openai.ChatCompletionAssistantMessageParam{ToolCalls: []openai.ChatCompletionMessageToolCallUnionParam{{
			OfFunction: &openai.ChatCompletionMessageFunctionToolCallParam{ID: "toolu_1",
				Function: openai.ChatCompletionMessageFunctionToolCallFunctionParam{Name: "get_weather", Arguments: `{"city":"Oslo"}`}},
		}}}},
		openai.ToolMessage("12 degrees, rain", "toolu_1"),
	}

	t.Run("completion with tool history", func(t *testing.T) {
		resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: "claude", Messages: history, Tools: []openai.ChatCompletionToolUnionParam{weather},
			MaxTokens: openai.Int(300), Temperature: openai.Float(1.5),
		})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Choices[0].Message.Content != "Hello from anthropic." || resp.Choices[0].FinishReason != "stop" {
			t.Errorf("choice %+v", resp.Choices[0])
		}
		if resp.Usage.PromptTokens == 0 || resp.Usage.CompletionTokens == 0 || resp.Usage.TotalTokens != resp.Usage.PromptTokens+resp.Usage.CompletionTokens {
			t.Errorf("usage %+v", resp.Usage)
		}
		body := up.last()
		if body.Str("system") != "You are terse." || body.Str("model") != "up-claude" {
			t.Errorf("system %q model %q", body.Str("system"), body.Str("model"))
		}
		if n, _ := body.Int("max_tokens"); n != 300 {
			t.Errorf("max_tokens %d", n)
		}
		if string(body["temperature"]) != "1" {
			t.Errorf("temperature %s, want clamped to Anthropic's 1", body["temperature"])
		}
		msgs := body.Objs("messages")
		if len(msgs) != 3 || msgs[0].Str("role") != "user" || msgs[1].Str("role") != "assistant" || msgs[2].Str("role") != "user" {
			t.Fatalf("messages %s", body["messages"])
		}
		use := msgs[1].Objs("content")[0]
		if use.Str("type") != "tool_use" || use.Str("id") != "toolu_1" || use.Obj("input").Str("city") != "Oslo" {
			t.Errorf("tool_use block %v", use)
		}
		res := msgs[2].Objs("content")[0]
		if res.Str("type") != "tool_result" || res.Str("tool_use_id") != "toolu_1" || res.Str("content") != "12 degrees, rain" {
			t.Errorf("tool_result block %v", res)
		}
		if tools := body.Objs("tools"); len(tools) != 1 || tools[0].Str("name") != "get_weather" || tools[0].Obj("input_schema") == nil {
			t.Errorf("tools %s", body["tools"])
		}
	})

	t.Run("streamed tool call", func(t *testing.T) {
		up.Reply = func(chat.Object) reply {
			return reply{Pieces: []string{"Let me ", "check."},
				Tools: []fakeTool{{ID: "toolu_2", Name: "get_weather", ArgPieces: []string{`{"ci`, `ty":"Bergen"}`}}}, In: 42, Out: 17}
		}
		defer func() { up.Reply = nil }()
		stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model: "claude", Messages: history[:2], Tools: []openai.ChatCompletionToolUnionParam{weather},
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		})
		acc := openai.ChatCompletionAccumulator{}
		for stream.Next() {
			acc.AddChunk(stream.Current())
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		msg := acc.Choices[0].Message
		if msg.Content != "Let me check." || len(msg.ToolCalls) != 1 || msg.ToolCalls[0].ID != "toolu_2" ||
			msg.ToolCalls[0].Function.Arguments != `{"city":"Bergen"}` || acc.Choices[0].FinishReason != "tool_calls" {
			t.Errorf("accumulated %+v finish %q", msg, acc.Choices[0].FinishReason)
		}
		if acc.Usage.PromptTokens != 42 || acc.Usage.CompletionTokens != 17 {
			t.Errorf("streamed usage %+v, want 42/17 from message_start and message_delta", acc.Usage)
		}
		if n, _ := up.last().Int("max_tokens"); n <= 0 {
			t.Error("no max_tokens sent to the Messages API, which requires it")
		}
	})
}

// sseEvents reads an event stream into (event name, data) pairs.
func sseEvents(t *testing.T, body string) [][2]string {
	t.Helper()
	var out [][2]string
	name := ""
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			out = append(out, [2]string{name, strings.TrimPrefix(line, "data: ")})
			name = ""
		}
	}
	return out
}

func TestMessagesIngress(t *testing.T) {
	oa := newUpstream(t, "openai")
	an := newUpstream(t, "anthropic")
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", oa), oneModel("claude", an)}})
	request := func(model string, stream bool) string {
		b, _ := json.Marshal(map[string]any{
			"model": model, "max_tokens": 256, "stream": stream, "system": "Answer in one line.",
			"messages": []any{
				map[string]any{"role": "user", "content": "weather in Oslo?"},
				map[string]any{"role": "assistant", "content": []any{
					map[string]any{"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": map[string]any{"city": "Oslo"}}}},
				map[string]any{"role": "user", "content": []any{
					map[string]any{"type": "tool_result", "tool_use_id": "toolu_9", "content": "12 degrees"},
					map[string]any{"type": "text", "text": "and tomorrow?"}}},
			},
			"tools": []any{map[string]any{"name": "get_weather", "input_schema": map[string]any{"type": "object"}}},
		})
		return string(b)
	}

	t.Run("to an OpenAI model", func(t *testing.T) {
		status, body, _ := h.do(alice, http.MethodPost, "/v1/messages", request("gpt-test", false))
		if status != 200 {
			t.Fatalf("status %d: %s", status, body)
		}
		var msg struct {
			Type    string `json:"type"`
			Model   string `json:"model"`
			Content []struct {
				Type, Text string
			} `json:"content"`
			StopReason string `json:"stop_reason"`
			Usage      struct {
				InputTokens  int64 `json:"input_tokens"`
				OutputTokens int64 `json:"output_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal([]byte(body), &msg); err != nil {
			t.Fatal(err)
		}
		if msg.Type != "message" || msg.Model != "gpt-test" || len(msg.Content) != 1 || msg.Content[0].Text != "Hello from openai." ||
			msg.StopReason != "end_turn" || msg.Usage.InputTokens == 0 || msg.Usage.OutputTokens == 0 {
			t.Errorf("message %+v", msg)
		}
		// What the OpenAI upstream saw: system first, the tool call, a tool message, then the user's text.
		msgs := oa.last().Objs("messages")
		roles := []string{}
		for _, m := range msgs {
			roles = append(roles, m.Str("role"))
		}
		if strings.Join(roles, ",") != "system,user,assistant,tool,user" {
			t.Fatalf("roles %v", roles)
		}
		if tc := msgs[2].Objs("tool_calls"); len(tc) != 1 || tc[0].Obj("function").Str("arguments") != `{"city":"Oslo"}` {
			t.Errorf("tool call %s", msgs[2]["tool_calls"])
		}
		if msgs[3].Str("tool_call_id") != "toolu_9" || msgs[3].Str("content") != "12 degrees" {
			t.Errorf("tool message %v", msgs[3])
		}
		rec := h.auditor.wait(t, func(r auditRecord) bool { return r.Kind == llmgw.KindOutcome && dataOf(t, r).Ingress == "anthropic" })
		if d := dataOf(t, rec); d.Model != "gpt-test" || d.OutputTokens == 0 {
			t.Errorf("audit %+v", d)
		}
	})

	t.Run("streamed", func(t *testing.T) {
		for _, model := range []string{"gpt-test", "claude"} {
			status, body, hdr := h.do(alice, http.MethodPost, "/v1/messages", request(model, true))
			if status != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/event-stream") {
				t.Fatalf("%s: status %d: %s", model, status, body)
			}
			evs := sseEvents(t, body)
			var names []string
			var text strings.Builder
			var outTokens float64
			for _, ev := range evs {
				if ev[0] != "ping" { // an Anthropic model's stream comes natively, pings included
					names = append(names, ev[0])
				}
				var data map[string]any
				if err := json.Unmarshal([]byte(ev[1]), &data); err != nil {
					t.Fatal(err)
				}
				if data["type"] != ev[0] {
					t.Errorf("event %s carries type %v", ev[0], data["type"])
				}
				if d, ok := data["delta"].(map[string]any); ok && d["type"] == "text_delta" {
					text.WriteString(d["text"].(string))
				}
				if u, ok := data["usage"].(map[string]any); ok && ev[0] == "message_delta" {
					outTokens = u["output_tokens"].(float64)
				}
			}
			got := strings.Join(names, ",")
			want := "message_start,content_block_start,content_block_delta"
			if !strings.HasPrefix(got, want) || !strings.HasSuffix(got, "content_block_stop,message_delta,message_stop") {
				t.Errorf("%s: events %s", model, got)
			}
			if !strings.HasPrefix(text.String(), "Hello from ") || outTokens == 0 {
				t.Errorf("%s: text %q output tokens %v", model, text.String(), outTokens)
			}
		}
	})

	t.Run("errors in the Anthropic shape", func(t *testing.T) {
		status, body, _ := h.do(alice, http.MethodPost, "/v1/messages", `{"model":"nope","max_tokens":1,"messages":[{"role":"user","content":"x"}]}`)
		var e struct {
			Type  string `json:"type"`
			Error struct{ Type, Message string }
		}
		if err := json.Unmarshal([]byte(body), &e); err != nil || status != 404 || e.Type != "error" || e.Error.Type != "not_found_error" {
			t.Errorf("status %d body %s", status, body)
		}
	})
}
