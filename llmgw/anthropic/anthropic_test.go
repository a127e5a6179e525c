package anthropic

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/umbra-mesh/umbra/llmgw/chat"
)

func mustRequest(t *testing.T, body string) *chat.Request {
	t.Helper()
	r, err := chat.ParseRequest([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRequestFromOpenAI(t *testing.T) {
	r := mustRequest(t, `{"model":"m","temperature":0.2,"stop":"END","user":"u1","parallel_tool_calls":false,
		"response_format":{"type":"json_object"},"tool_choice":"required","logit_bias":{"1":2},
		"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
		"messages":[
		{"role":"system","content":"s1"},{"role":"developer","content":[{"type":"text","text":"s2"}]},
		{"role":"user","content":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,AAAA"}}]},
		{"role":"assistant","content":"calling","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}},
			{"id":"c2","type":"function","function":{"name":"f","arguments":""}}]},
		{"role":"tool","tool_call_id":"c1","content":"r1"},{"role":"tool","tool_call_id":"c2","content":[{"type":"text","text":"r2"}]},
		{"role":"user","content":"thanks"}]}`)
	a, err := RequestFromOpenAI(r, "claude-x")
	if err != nil {
		t.Fatal(err)
	}
	if a.Str("model") != "claude-x" || !strings.HasPrefix(a.Str("system"), "s1\n\ns2\n\n"+jsonInstruction) {
		t.Errorf("model %q system %q", a.Str("model"), a.Str("system"))
	}
	if n, _ := a.Int("max_tokens"); n != DefaultMaxTokens {
		t.Errorf("max_tokens %d", n)
	}
	if _, ok := a["logit_bias"]; ok {
		t.Error("a member the Messages API rejects was passed on")
	}
	if string(a["stop_sequences"]) != `["END"]` || a.Obj("metadata").Str("user_id") != "u1" {
		t.Errorf("stop %s metadata %s", a["stop_sequences"], a["metadata"])
	}
	tc := a.Obj("tool_choice")
	if tc.Str("type") != "any" || !tc.Bool("disable_parallel_tool_use") {
		t.Errorf("tool_choice %s", a["tool_choice"])
	}
	msgs := a.Objs("messages")
	if len(msgs) != 3 {
		t.Fatalf("messages %s", a["messages"])
	}
	img := msgs[0].Objs("content")[1]
	if img.Str("type") != "image" || img.Obj("source").Str("media_type") != "image/jpeg" || img.Obj("source").Str("data") != "AAAA" {
		t.Errorf("image %v", img)
	}
	blocks := msgs[1].Objs("content")
	if len(blocks) != 3 || blocks[1].Str("type") != "tool_use" || string(blocks[1]["input"]) != `{"a":1}` || string(blocks[2]["input"]) != `{}` {
		t.Errorf("assistant blocks %s", msgs[1]["content"])
	}
	// Both tool results and the next user text form one user turn, as the Messages API wants alternation.
	results := msgs[2].Objs("content")
	if msgs[2].Str("role") != "user" || len(results) != 3 || results[1].Str("tool_use_id") != "c2" || results[1].Str("content") != "r2" ||
		results[2].Str("text") != "thanks" {
		t.Errorf("tool results %s", msgs[2]["content"])
	}
}

func TestRequestFromOpenAIRefuses(t *testing.T) {
	for _, body := range []string{
		`{"model":"m","n":2,"messages":[{"role":"user","content":"x"}]}`,
		`{"model":"m","messages":[{"role":"assistant","content":"x","tool_calls":[{"id":"c","function":{"name":"f","arguments":"[1]"}}]}]}`,
		`{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}`,
		`{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x"}}]}]}`,
		`{"model":"m","messages":[{"role":"wizard","content":"x"}]}`,
		`{"model":"m","tool_choice":{"type":"function"},"tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"x"}]}`,
	} {
		if _, err := RequestFromOpenAI(mustRequest(t, body), "c"); err == nil {
			t.Errorf("accepted %s", body)
		}
	}
}

func TestRequestToOpenAI(t *testing.T) {
	r, err := RequestToOpenAI([]byte(`{"model":"m","max_tokens":99,"top_k":5,"stop_sequences":["x"],
		"system":[{"type":"text","text":"be kind"}],"metadata":{"user_id":"u"},
		"tool_choice":{"type":"tool","name":"f","disable_parallel_tool_use":true},
		"tools":[{"name":"f","description":"d","input_schema":{"type":"object"}}],
		"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"QQ=="}},{"type":"text","text":"hi"}]},
		{"role":"assistant","content":[{"type":"thinking","thinking":"hm","signature":"s"},{"type":"text","text":"ok"},{"type":"tool_use","id":"t1","name":"f","input":{"q":1}}]},
		{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","is_error":true,"content":[{"type":"text","text":"boom"}]}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var roles []string
	for _, m := range r.Messages {
		roles = append(roles, m.Str("role"))
	}
	if strings.Join(roles, ",") != "system,user,assistant,tool" {
		t.Fatalf("roles %v", roles)
	}
	if r.Messages[0].Str("content") != "be kind" || r.Messages[3].Str("content") != "Error: boom" || r.Messages[3].Str("tool_call_id") != "t1" {
		t.Errorf("messages %v", r.Messages)
	}
	if url := r.Messages[1].Objs("content")[0].Obj("image_url").Str("url"); url != "data:image/png;base64,QQ==" {
		t.Errorf("image %q", url)
	}
	call := r.Messages[2].Objs("tool_calls")[0]
	if r.Messages[2].Str("content") != "ok" || call.Obj("function").Str("arguments") != `{"q":1}` {
		t.Errorf("assistant %v", r.Messages[2])
	}
	if n, _ := r.Body.Int("max_tokens"); n != 99 || r.Body.Str("user") != "u" || string(r.Body["stop"]) != `["x"]` ||
		string(r.Body["parallel_tool_calls"]) != "false" || r.Body.Obj("tool_choice").Obj("function").Str("name") != "f" {
		t.Errorf("body %v", r.Body)
	}
	if _, ok := r.Body["top_k"]; ok {
		t.Error("top_k passed to an OpenAI request")
	}
	for _, bad := range []string{`{"model":"m","messages":[]}`, `{"messages":[{"role":"user","content":"x"}]}`,
		`{"model":"m","messages":[{"role":"system","content":"x"}]}`,
		`{"model":"m","messages":[{"role":"user","content":[{"type":"document","source":{}}]}]}`,
		`{"model":"m","tools":[{"type":"web_search_20250305","name":"web"}],"messages":[{"role":"user","content":"x"}]}`} {
		if _, err := RequestToOpenAI([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

func TestResponsesBothWays(t *testing.T) {
	a, _ := chat.ParseObject([]byte(`{"id":"msg_1","type":"message","role":"assistant","model":"c",
		"content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"},{"type":"tool_use","id":"t","name":"f","input":{"x":[1]}}],
		"stop_reason":"tool_use","usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":3}}`))
	o, u := ResponseToOpenAI(a, "pub")
	ch := o.Objs("choices")[0]
	msg := ch.Obj("message")
	if u != (chat.Usage{Input: 15, Output: 3}) || ch.Str("finish_reason") != "tool_calls" || msg.Str("content") != "Hi there" ||
		msg.Objs("tool_calls")[0].Obj("function").Str("arguments") != `{"x":[1]}` || o.Str("model") != "pub" {
		t.Errorf("openai %v usage %+v", o, u)
	}
	back := ResponseFromOpenAI(o, "pub")
	blocks := back.Objs("content")
	if back.Str("stop_reason") != "tool_use" || len(blocks) != 2 || blocks[0].Str("text") != "Hi there" ||
		string(blocks[1]["input"]) != `{"x":[1]}` || back.Obj("usage").Str("x") != "" {
		t.Errorf("back %v", back)
	}
	if n, _ := back.Obj("usage").Int("input_tokens"); n != 15 {
		t.Errorf("usage %s", back["usage"])
	}
	for stop, finish := range map[string]string{"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls", "refusal": "content_filter", "stop_sequence": "stop"} {
		if FinishReason(stop) != finish {
			t.Errorf("%s -> %s", stop, FinishReason(stop))
		}
	}
}

// TestStreamsRoundTrip sends OpenAI chunks through StreamFromOpenAI, the events through StreamToOpenAI, and
// compares what comes out with what went in.
func TestStreamsRoundTrip(t *testing.T) {
	chunks := []string{
		`{"id":"chatcmpl-9","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`,
		`{"id":"chatcmpl-9","choices":[{"index":0,"delta":{"content":"Hel"}}]}`,
		`{"id":"chatcmpl-9","choices":[{"index":0,"delta":{"content":"lo"}}]}`,
		`{"id":"chatcmpl-9","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}]}`,
		`{"id":"chatcmpl-9","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}`,
		`{"id":"chatcmpl-9","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"2}"}}]}}]}`,
		`{"id":"chatcmpl-9","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}`,
		`{"id":"chatcmpl-9","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":8}}`,
	}
	from := &StreamFromOpenAI{Model: "pub"}
	var events []Event
	for _, c := range chunks {
		o, _ := chat.ParseObject([]byte(c))
		events = append(events, from.Chunk(o)...)
	}
	events = append(events, from.End()...)
	var names []string
	to := &StreamToOpenAI{Model: "pub"}
	var text, args, finish string
	for _, ev := range events {
		names = append(names, ev.Name)
		b, _ := ev.Data.Encode()
		out, err := to.Event(ev.Name, b)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range out {
			for _, ch := range o.Objs("choices") {
				d := ch.Obj("delta")
				text += d.Str("content")
				for _, tc := range d.Objs("tool_calls") {
					args += tc.Obj("function").Str("arguments")
				}
				if f := ch.Str("finish_reason"); f != "" {
					finish = f
				}
			}
		}
	}
	want := "message_start,content_block_start,content_block_delta,content_block_delta,content_block_stop," +
		"content_block_start,content_block_delta,content_block_delta,content_block_stop,message_delta,message_stop"
	if strings.Join(names, ",") != want {
		t.Errorf("events %v", names)
	}
	if text != "Hello" || args != `{"a":2}` || finish != "tool_calls" || to.Usage() != (chat.Usage{Input: 12, Output: 8}) || !to.Done() {
		t.Errorf("text %q args %q finish %q usage %+v", text, args, finish, to.Usage())
	}
	var start map[string]any
	b, _ := events[0].Data.Encode()
	_ = json.Unmarshal(b, &start)
	if start["message"].(map[string]any)["id"] != "msg_9" {
		t.Errorf("message_start %s", b)
	}
}

func TestStreamToOpenAIErrors(t *testing.T) {
	to := &StreamToOpenAI{}
	if _, err := to.Event("error", []byte(`{"type":"error","error":{"type":"overloaded_error","message":"busy"}}`)); err == nil ||
		!strings.Contains(err.Error(), "overloaded_error") {
		t.Errorf("error event: %v", err)
	}
	if _, err := to.Event("x", []byte(`not json`)); err == nil {
		t.Error("bad event accepted")
	}
	if _, err := to.Event("content_block_delta", []byte(`{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{"}}`)); err == nil {
		t.Error("arguments for an unknown tool block accepted")
	}
}
