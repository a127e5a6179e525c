package llmgw_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	anthropic "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/guard"
)

// messagesUpstream is a fake Anthropic endpoint speaking the Messages API wire format: it keeps every request
// body as it arrived and answers with Answer (whole) or Events (streamed), exactly as given.
type messagesUpstream struct {
	t      testing.TB
	srv    *httptest.Server
	key    string
	Answer string      // the whole answer's body
	Events [][2]string // the streamed answer: event name and data

	mu     sync.Mutex
	bodies [][]byte
	betas  []string // the anthropic-beta header of each request
}

func newMessagesUpstream(t testing.TB) *messagesUpstream {
	u := &messagesUpstream{t: t, key: "sk-ant-upstream-0123456789abcdef"}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/messages", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("x-api-key") != u.key || r.Header.Get("anthropic-version") == "" {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"type":"error","error":{"type":"authentication_error","message":"bad key"}}`)
			return
		}
		b, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.bodies = append(u.bodies, b)
		u.betas = append(u.betas, r.Header.Get("anthropic-beta"))
		u.mu.Unlock()
		var req struct {
			Stream bool `json:"stream"`
		}
		_ = json.Unmarshal(b, &req)
		if !req.Stream {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, u.Answer)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for _, ev := range u.Events {
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", ev[0], ev[1])
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"data":[]}`)
	})
	u.srv = httptest.NewServer(mux)
	t.Cleanup(u.srv.Close)
	return u
}

func (u *messagesUpstream) last() []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.bodies) == 0 {
		u.t.Fatal("the upstream received no request")
	}
	return u.bodies[len(u.bodies)-1]
}

func (u *messagesUpstream) model(name string) llmgw.Model {
	return llmgw.Model{Name: name, Backoff: time.Millisecond, Endpoints: []llmgw.Endpoint{{Provider: "anthropic",
		BaseURL: u.srv.URL + "/v1", APIKey: u.key, Model: "up-" + name, InputPrice: 3, OutputPrice: 15}}}
}

// sdkClient is the official Anthropic client calling the gateway as id; sent receives each request body as
// the client wrote it.
func (h *harness) sdkClient(id string, sent *[]byte) anthropic.Client {
	return anthropic.NewClient(
		option.WithBaseURL(h.srv.URL+"/"),
		option.WithAPIKey("not-a-key"), // the caller's identity is its certificate
		option.WithHTTPClient(h.httpClient(id)),
		option.WithMaxRetries(0),
		option.WithMiddleware(func(r *http.Request, next option.MiddlewareNext) (*http.Response, error) {
			if sent != nil && r.Body != nil {
				b, _ := io.ReadAll(r.Body)
				*sent = b
				r.Body = io.NopCloser(bytes.NewReader(b))
			}
			return next(r)
		}),
	)
}

// decoded reads JSON into generic values, numbers as written.
func decoded(t testing.TB, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return v
}

// sameJSON fails unless a and b hold the same JSON value.
func sameJSON(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !reflect.DeepEqual(decoded(t, got), decoded(t, want)) {
		t.Errorf("%s differs:\n got  %s\n want %s", what, got, want)
	}
}

// withModel returns body with its model member replaced.
func withModel(t testing.TB, body []byte, model string) []byte {
	t.Helper()
	var o map[string]json.RawMessage
	if err := json.Unmarshal(body, &o); err != nil {
		t.Fatal(err)
	}
	o["model"], _ = json.Marshal(model)
	b, _ := json.Marshal(o)
	return b
}

// golden compares got with testdata/messages/name, which -update rewrites.
func golden(t testing.TB, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "messages", name)
	if os.Getenv("UMBRA_UPDATE_GOLDEN") != "" {
		var buf bytes.Buffer
		_ = json.Indent(&buf, got, "", "  ")
		buf.WriteByte('\n')
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (set UMBRA_UPDATE_GOLDEN=1 to write it)", err)
	}
	sameJSON(t, "golden "+name, got, want)
}

// fullRequest uses every kind of member and block the Messages API has that the OpenAI shape lacks.
func fullRequest() anthropic.MessageNewParams {
	weather := anthropic.ToolParam{Name: "get_weather", Description: anthropic.String("weather by city"),
		InputSchema:  anthropic.ToolInputSchemaParam{Properties: map[string]any{"city": map[string]any{"type": "string"}}, Required: []string{"city"}},
		CacheControl: anthropic.NewCacheControlEphemeralParam()}
	return anthropic.MessageNewParams{
		Model:     "claude",
		MaxTokens: 4096,
		System: []anthropic.TextBlockParam{
			{Text: "You are terse.", CacheControl: anthropic.NewCacheControlEphemeralParam()},
			{Text: "Answer in Norwegian."},
		},
		Thinking:      anthropic.ThinkingConfigParamOfEnabled(2048),
		ToolChoice:    anthropic.ToolChoiceUnionParam{OfAny: &anthropic.ToolChoiceAnyParam{DisableParallelToolUse: anthropic.Bool(true)}},
		StopSequences: []string{"\n\nHuman:", "END"},
		Metadata:      anthropic.MetadataParam{UserID: anthropic.String("user-7f3a")},
		Tools:         []anthropic.ToolUnionParam{{OfTool: &weather}},
		Messages: []anthropic.MessageParam{
			anthropic.NewUserMessage(
				anthropic.NewTextBlock("What is the weather where this picture was taken?"),
				anthropic.NewImageBlockBase64("image/png", "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="),
				anthropic.NewDocumentBlock(anthropic.PlainTextSourceParam{Data: "Trip notes: Bergen, then Oslo."}),
			),
			anthropic.NewAssistantMessage(
				anthropic.NewThinkingBlock("c2lnbmF0dXJlLW9mLXRoZS10aGlua2luZw==", "The picture shows Bryggen, so Bergen."),
				anthropic.NewToolUseBlock("toolu_01", map[string]any{"city": "Bergen"}, "get_weather"),
			),
			anthropic.NewUserMessage(
				anthropic.NewToolResultBlock("toolu_01", "12 degrees, rain", false),
				anthropic.NewTextBlock("And tomorrow?"),
			),
		},
	}
}

// fullExtras are request members the client's typed parameters do not have (sampling, and one the API may add
// later): they pass through like the rest.
func fullExtras() []option.RequestOption {
	return []option.RequestOption{option.WithJSONSet("top_k", 40), option.WithJSONSet("temperature", 0.7),
		option.WithJSONSet("future_member", map[string]any{"kept": true}),
		option.WithHeader("anthropic-beta", "context-1m-2025-08-07")}
}

// fullAnswer is a whole answer with thinking, text and a tool call, and usage with cache counts.
const fullAnswer = `{"id":"msg_01","type":"message","role":"assistant","model":"up-claude",` +
	`"content":[{"type":"thinking","thinking":"Tomorrow needs the forecast.","signature":"c2lnLTI="},` +
	`{"type":"text","text":"Let me check the forecast.","citations":null},` +
	`{"type":"tool_use","id":"toolu_02","name":"get_weather","input":{"city":"Bergen","day":"tomorrow"}}],` +
	`"stop_reason":"tool_use","stop_sequence":null,` +
	`"usage":{"input_tokens":120,"cache_creation_input_tokens":30,"cache_read_input_tokens":800,"output_tokens":45,"service_tier":"standard"}}`

func TestMessagesNativeWhole(t *testing.T) {
	up := newMessagesUpstream(t)
	up.Answer = fullAnswer
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{up.model("claude")}})
	var sent []byte
	client := h.sdkClient(alice, &sent)
	msg, err := client.Messages.New(testCtx(t), fullRequest(), fullExtras()...)
	if err != nil {
		t.Fatal(err)
	}
	// The upstream received exactly what the client sent, under its own model name.
	sameJSON(t, "upstream request", up.last(), withModel(t, sent, "up-claude"))
	golden(t, "request.json", up.last())
	if up.betas[0] != "context-1m-2025-08-07" {
		t.Errorf("anthropic-beta upstream %q", up.betas[0])
	}
	// The caller received exactly what the upstream answered, under the public model name.
	want := strings.Replace(fullAnswer, `"model":"up-claude"`, `"model":"claude"`, 1)
	sameJSON(t, "answer", []byte(msg.RawJSON()), []byte(want))
	if msg.StopReason != anthropic.StopReasonToolUse || len(msg.Content) != 3 || msg.Content[0].Thinking == "" ||
		msg.Content[0].Signature != "c2lnLTI=" || msg.Usage.CacheReadInputTokens != 800 {
		t.Errorf("message %+v", msg)
	}
	rec := h.auditor.wait(t, func(r auditRecord) bool {
		return r.Kind == llmgw.KindOutcome && dataOf(t, r).Ingress == "anthropic"
	})
	// Cache reads and writes are input the caller is billed for.
	if d := dataOf(t, rec); d.Model != "claude" || d.Provider != "anthropic" || d.InputTokens != 950 || d.OutputTokens != 45 {
		t.Errorf("audit %+v", d)
	}
}

func TestMessagesNativeStreamed(t *testing.T) {
	up := newMessagesUpstream(t)
	up.Events = [][2]string{
		{"message_start", `{"type":"message_start","message":{"id":"msg_02","type":"message","role":"assistant","model":"up-claude","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":120,"cache_creation_input_tokens":0,"cache_read_input_tokens":800,"output_tokens":1}}}`},
		{"ping", `{"type":"ping"}`},
		{"content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Bergen, "}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"tomorrow."}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2lnLTM="}}`},
		{"content_block_stop", `{"type":"content_block_stop","index":0}`},
		{"content_block_start", `{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Checking "}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"the forecast."}}`},
		{"content_block_stop", `{"type":"content_block_stop","index":1}`},
		{"content_block_start", `{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_03","name":"get_weather","input":{}}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"\"Bergen\"}"}}`},
		{"content_block_stop", `{"type":"content_block_stop","index":2}`},
		{"message_delta", `{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":61}}`},
		{"message_stop", `{"type":"message_stop"}`},
	}
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{up.model("claude")}})
	var sent []byte
	client := h.sdkClient(alice, &sent)
	stream := client.Messages.NewStreaming(testCtx(t), fullRequest(), fullExtras()...)
	var acc anthropic.Message
	var got [][2]string
	for stream.Next() {
		ev := stream.Current()
		got = append(got, [2]string{ev.Type, ev.RawJSON()})
		if err := acc.Accumulate(ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	var wantSent map[string]any
	_ = json.Unmarshal(withModel(t, sent, "up-claude"), &wantSent)
	wantSent["stream"] = true
	wb, _ := json.Marshal(wantSent)
	sameJSON(t, "upstream request", up.last(), wb)
	// Every event came through in order with its type, as the upstream sent it (the model renamed). The
	// client does not yield pings; the raw stream below shows it was sent.
	var sentEvents [][2]string
	for _, ev := range up.Events {
		if ev[0] != "ping" {
			sentEvents = append(sentEvents, ev)
		}
	}
	if len(got) != len(sentEvents) {
		t.Fatalf("%d events, want %d: %v", len(got), len(sentEvents), got)
	}
	for i, ev := range sentEvents {
		want := strings.Replace(ev[1], `"model":"up-claude"`, `"model":"claude"`, 1)
		if got[i][0] != ev[0] {
			t.Errorf("event %d is %s, want %s", i, got[i][0], ev[0])
		}
		sameJSON(t, "event "+ev[0], []byte(got[i][1]), []byte(want))
	}
	if acc.Model != "claude" || acc.Content[0].Thinking != "Bergen, tomorrow." || acc.Content[0].Signature != "c2lnLTM=" ||
		acc.Content[1].Text != "Checking the forecast." || string(acc.Content[2].Input) != `{"city":"Bergen"}` ||
		acc.StopReason != anthropic.StopReasonToolUse || acc.Usage.OutputTokens != 61 {
		t.Errorf("accumulated %+v", acc)
	}
	rec := h.auditor.wait(t, func(r auditRecord) bool { return r.Kind == llmgw.KindOutcome })
	var again map[string]any
	_ = json.Unmarshal(sent, &again)
	again["stream"] = true
	ab, _ := json.Marshal(again)
	status, raw, _ := h.do(alice, http.MethodPost, "/v1/messages", string(ab))
	if status != 200 || !strings.Contains(raw, "event: ping\ndata: {\"type\":\"ping\"}") {
		t.Errorf("raw stream: status %d, no ping in %s", status, raw)
	}
	if d := dataOf(t, rec); !d.Stream || d.InputTokens != 920 || d.OutputTokens != 61 || d.TTFTMS <= 0 {
		t.Errorf("audit %+v", d)
	}
}

func TestMessagesNativeToolRoundTrip(t *testing.T) {
	up := newMessagesUpstream(t)
	up.Answer = fullAnswer
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{up.model("claude")}})
	var sent []byte
	client := h.sdkClient(alice, &sent)
	ctx := testCtx(t)
	params := fullRequest()
	first, err := client.Messages.New(ctx, params, fullExtras()...)
	if err != nil {
		t.Fatal(err)
	}
	// The caller runs the tool and answers with its result, error flag and cache mark included.
	result := anthropic.NewToolResultBlock(first.Content[2].ID, "14 degrees, sun", false)
	result.OfToolResult.CacheControl = anthropic.NewCacheControlEphemeralParam()
	params.Messages = append(params.Messages, first.ToParam(), anthropic.NewUserMessage(result))
	up.Answer = `{"id":"msg_03","type":"message","role":"assistant","model":"up-claude","content":[{"type":"text","text":"Sunny, 14 degrees."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":200,"output_tokens":9}}`
	second, err := client.Messages.New(ctx, params, fullExtras()...)
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, "second upstream request", up.last(), withModel(t, sent, "up-claude"))
	golden(t, "tool-round-trip.json", up.last())
	var body struct {
		Messages []struct {
			Role    string
			Content []map[string]any
		}
	}
	if err := json.Unmarshal(up.last(), &body); err != nil {
		t.Fatal(err)
	}
	prev := body.Messages[len(body.Messages)-2].Content
	if len(prev) != 3 || prev[0]["signature"] != "c2lnLTI=" || prev[2]["id"] != "toolu_02" {
		t.Errorf("the assistant turn went back as %v", prev)
	}
	if second.Content[0].Text != "Sunny, 14 degrees." || second.StopReason != anthropic.StopReasonEndTurn {
		t.Errorf("second answer %+v", second)
	}
}

func TestMessagesNativeGuardrailRedactsInsideBlocks(t *testing.T) {
	up := newMessagesUpstream(t)
	up.Answer = `{"id":"msg_04","type":"message","role":"assistant","model":"up-claude","content":[` +
		`{"type":"thinking","thinking":"Mail ola.nordmann@example.no about it.","signature":"c2lnLTQ="},` +
		`{"type":"text","text":"Write to ola.nordmann@example.no for details."}],` +
		`"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":50,"output_tokens":20}}`
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{up.model("claude")},
		Guardrails: llmgw.Guardrails{PII: guard.Redact, Responses: true, Window: 32}})
	client := h.sdkClient(alice, nil)
	ctx := testCtx(t)
	params := fullRequest()
	params.System[0].Text = "Reply to kari@example.com when done."
	params.Messages[2].OfUser.Content[1] = anthropic.NewTextBlock("My address is kari@example.com.")
	msg, err := client.Messages.New(ctx, params, fullExtras()...)
	if err != nil {
		t.Fatal(err)
	}
	req := string(up.last())
	if strings.Contains(req, "kari@example.com") || strings.Count(req, "[REDACTED:email]") != 2 {
		t.Errorf("the upstream received %s", req)
	}
	// The rest of the redacted blocks is untouched: the system block's cache mark, the image's data.
	var body struct {
		System   []map[string]any
		Messages []struct{ Content []map[string]any }
	}
	_ = json.Unmarshal(up.last(), &body)
	if body.System[0]["cache_control"] == nil || body.System[0]["text"] != "Reply to [REDACTED:email] when done." {
		t.Errorf("system block %v", body.System[0])
	}
	if src, _ := body.Messages[0].Content[1]["source"].(map[string]any); src["data"] == nil || src["media_type"] != "image/png" {
		t.Errorf("image block %v", body.Messages[0].Content[1])
	}
	if msg.Content[1].Text != "Write to [REDACTED:email] for details." || msg.Content[0].Thinking != "Mail [REDACTED:email] about it." ||
		msg.Content[0].Signature != "c2lnLTQ=" || msg.StopReason != anthropic.StopReasonEndTurn {
		t.Errorf("answer %s", msg.RawJSON())
	}

	t.Run("streamed, the address split across deltas", func(t *testing.T) {
		up.Events = [][2]string{
			{"message_start", `{"type":"message_start","message":{"id":"msg_05","type":"message","role":"assistant","model":"up-claude","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":50,"output_tokens":1}}}`},
			{"content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`},
			{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Write to ola.nord"}}`},
			{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"mann@exam"}}`},
			{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ple.no for details, and keep this line long enough to pass the window."}}`},
			{"content_block_stop", `{"type":"content_block_stop","index":0}`},
			{"message_delta", `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":20}}`},
			{"message_stop", `{"type":"message_stop"}`},
		}
		stream := client.Messages.NewStreaming(ctx, params, fullExtras()...)
		var acc anthropic.Message
		var raw strings.Builder
		for stream.Next() {
			raw.WriteString(stream.Current().RawJSON())
			if err := acc.Accumulate(stream.Current()); err != nil {
				t.Fatal(err)
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		want := "Write to [REDACTED:email] for details, and keep this line long enough to pass the window."
		if acc.Content[0].Text != want || strings.Contains(raw.String(), "nordmann") {
			t.Errorf("streamed text %q; events %s", acc.Content[0].Text, raw.String())
		}
	})

	rec := h.auditor.wait(t, func(r auditRecord) bool {
		return r.Kind == llmgw.KindCall && len(dataOf(t, r).Guardrails) > 0
	})
	if f := dataOf(t, rec).Guardrails[0]; f.Detector != "email" || f.Mode != "redact" || f.Count != 2 {
		t.Errorf("request findings %+v", dataOf(t, rec).Guardrails)
	}
}

func TestMessagesNativeBudgetCapsMaxTokens(t *testing.T) {
	up := newMessagesUpstream(t)
	up.Answer = `{"id":"msg_06","type":"message","role":"assistant","model":"up-claude","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":400,"output_tokens":2}}`
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{up.model("claude")},
		Budgets: []llmgw.Budget{{Identity: alice, TokensPerDay: 3000}}})
	client := h.sdkClient(alice, nil)
	if _, err := client.Messages.New(testCtx(t), fullRequest(), fullExtras()...); err != nil {
		t.Fatal(err)
	}
	var body struct {
		MaxTokens int64 `json:"max_tokens"`
		Thinking  struct {
			BudgetTokens int64 `json:"budget_tokens"`
		}
	}
	_ = json.Unmarshal(up.last(), &body)
	if body.MaxTokens <= 0 || body.MaxTokens >= 3000 || body.Thinking.BudgetTokens >= body.MaxTokens {
		t.Errorf("upstream max_tokens %d thinking budget %d, want both under the 3,000 tokens left", body.MaxTokens, body.Thinking.BudgetTokens)
	}
	// A malformed request is refused in the Messages API's own error shape.
	var ae *anthropic.Error
	_, err := client.Messages.New(testCtx(t), anthropic.MessageNewParams{Model: "claude", MaxTokens: 0,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))}})
	if !errors.As(err, &ae) || ae.StatusCode != 400 || !strings.Contains(ae.RawJSON(), "invalid_request_error") ||
		!strings.Contains(ae.RawJSON(), "max_tokens") {
		t.Errorf("max_tokens 0: %v", err)
	}
}

func TestMessagesNativeGuardrailBlocksAStream(t *testing.T) {
	const key = "sk-proj-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzd"
	up := newMessagesUpstream(t)
	up.Answer = `{"id":"msg_07","type":"message","role":"assistant","model":"up-claude","content":[{"type":"text","text":"The key is ` + key + `."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":12}}`
	up.Events = [][2]string{
		{"message_start", `{"type":"message_start","message":{"id":"msg_08","type":"message","role":"assistant","model":"up-claude","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":1}}}`},
		{"content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Here is a long enough preamble before anything secret. The key is sk-proj-u8jz"}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Pde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzd and more."}}`},
		{"content_block_stop", `{"type":"content_block_stop","index":0}`},
		{"content_block_start", `{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"A later block."}}`},
		{"content_block_stop", `{"type":"content_block_stop","index":1}`},
		{"message_delta", `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":40}}`},
		{"message_stop", `{"type":"message_stop"}`},
	}
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{up.model("claude")},
		Guardrails: llmgw.Guardrails{Secrets: guard.Block, Responses: true, Window: 32}})
	client := h.sdkClient(alice, nil)
	params := anthropic.MessageNewParams{Model: "claude", MaxTokens: 100,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("the key?"))}}
	msg, err := client.Messages.New(testCtx(t), params)
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.Content) != 0 || msg.StopReason != anthropic.StopReasonRefusal {
		t.Errorf("whole answer %s", msg.RawJSON())
	}
	stream := client.Messages.NewStreaming(testCtx(t), params)
	var acc anthropic.Message
	var raw strings.Builder
	for stream.Next() {
		raw.WriteString(stream.Current().RawJSON())
		if err := acc.Accumulate(stream.Current()); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(raw.String(), "u8jz") || strings.Contains(raw.String(), "later block") ||
		acc.StopReason != anthropic.StopReasonRefusal || len(acc.Content) != 1 || acc.Usage.OutputTokens != 40 {
		t.Errorf("streamed %+v; events %s", acc, raw.String())
	}
	rec := h.auditor.wait(t, func(r auditRecord) bool { return r.Kind == llmgw.KindOutcome && dataOf(t, r).Stream })
	if d := dataOf(t, rec); len(d.Guardrails) == 0 || d.Guardrails[0].Mode != "block" || d.OutputTokens != 40 {
		t.Errorf("audit %+v", d)
	}
}

func TestMessagesNativeModelAllowlist(t *testing.T) {
	up := newMessagesUpstream(t)
	up.Answer = `{"id":"msg_09","type":"message","role":"assistant","model":"up-claude","content":[],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}`
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{up.model("claude")},
		Policies: `permit (principal in Umbra::Org::"acme", action == Umbra::Action::"use", resource);`})
	client := h.sdkClient(carol, nil)
	_, err := client.Messages.New(testCtx(t), fullRequest(), fullExtras()...)
	var ae *anthropic.Error
	if !errors.As(err, &ae) || ae.StatusCode != 403 || !strings.Contains(ae.RawJSON(), "permission_error") {
		t.Fatalf("carol: %v", err)
	}
	up.mu.Lock()
	n := len(up.bodies)
	up.mu.Unlock()
	if n != 0 {
		t.Errorf("a refused call reached the upstream %d times", n)
	}
	// An unknown model is named as such, whatever blocks the request holds.
	status, raw, _ := h.do(alice, http.MethodPost, "/v1/messages", `{"model":"nope","max_tokens":5,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":"x"}}]}]}`)
	if status != 404 || !strings.Contains(raw, "not_found_error") || !strings.Contains(raw, "model nope does not exist") {
		t.Errorf("unknown model: %d %s", status, raw)
	}
	rec := h.auditor.wait(t, kindIs(llmgw.KindDenied))
	if d := dataOf(t, rec); d.Ingress != "anthropic" || d.ModelRequested != "claude" || rec.Actor != carol {
		t.Errorf("audit %+v by %s", d, rec.Actor)
	}
}

func TestMessagesNativeStreamErrorEvent(t *testing.T) {
	up := newMessagesUpstream(t)
	up.Events = [][2]string{
		{"message_start", `{"type":"message_start","message":{"id":"msg_10","type":"message","role":"assistant","model":"up-claude","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":1}}}`},
		{"content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`},
		{"content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Partly"}}`},
		{"error", `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`},
	}
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{up.model("claude")}})
	status, raw, _ := h.do(alice, http.MethodPost, "/v1/messages",
		`{"model":"claude","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	evs := sseEvents(t, raw)
	last := evs[len(evs)-1]
	if status != 200 || last[0] != "error" || !strings.Contains(last[1], `"type":"overloaded_error"`) ||
		evs[0][0] != "message_start" {
		t.Errorf("status %d events %v", status, evs)
	}
	rec := h.auditor.wait(t, kindIs(llmgw.KindOutcome))
	if d := dataOf(t, rec); d.Status != http.StatusBadGateway || d.Error == "" {
		t.Errorf("audit %+v", d)
	}
}
