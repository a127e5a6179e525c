package llmgw

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
)

// planted is the personal data the native-path fuzz targets hide in bodies and events.
const planted = "ola.nordmann@example.no"

// hasOpaque reports whether a JSON text holds a member the guardrails leave alone on purpose (thinking
// signatures, redacted thinking and base64 data), where planted text may stay.
func hasOpaque(s string) bool {
	return strings.Contains(s, `"signature"`) || strings.Contains(s, `"data"`)
}

func redactingScanner(t testing.TB) *guard.Scanner {
	s, err := guard.New(guard.Policy{PII: guard.Redact})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// FuzzMessagesRequestGuard: any Messages API request body is estimated and checked, and one that passes the
// check is scanned without a panic, still encodes, and keeps no planted address outside opaque members and the
// model name.
func FuzzMessagesRequestGuard(f *testing.F) {
	for _, seed := range []string{
		`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"write to ` + planted + `"}]}`,
		`{"model":"m","max_tokens":5,"system":[{"type":"text","text":"` + planted + `","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"` + planted + `"}]}]}]}`,
		`{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"mail","input":{"to":"` + planted + `"}}]}],"tools":[{"name":"mail","description":"sends to ` + planted + `","input_schema":{"type":"object"}}],"metadata":{"user_id":"` + planted + `"}}`,
		`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},{"type":"document","source":{"type":"text","media_type":"text/plain","data":"` + planted + `"}}]}]}`,
		`{"model":"m","messages":[],"` + planted + `":1}`,
	} {
		f.Add([]byte(seed))
	}
	g := &Gateway{reqGuard: redactingScanner(f)}
	f.Fuzz(func(t *testing.T, b []byte) {
		body, err := chat.ParseObject(b)
		if err != nil {
			return
		}
		_ = estimateMessages(body)
		if checkMessages(body) != nil {
			return // refused before any guardrail looks at it
		}
		c := &call{}
		if e := g.guardMessages(c, body); e != nil {
			t.Fatalf("a redacting guardrail refused the request: %v", e.Message)
		}
		delete(body, "model") // the gateway's to read, and replaced upstream
		out, err := body.Encode()
		if err != nil || !json.Valid(out) {
			t.Fatalf("the scanned body does not encode: %v", err)
		}
		if strings.Contains(string(out), planted) && !hasOpaque(string(b)) {
			t.Fatalf("planted address kept: %s", out)
		}
	})
}

// FuzzMessagesStreamGuard: any sequence of stream events (one JSON object a line) is readied without a panic,
// each event still encodes, and no planted address comes out outside opaque members.
func FuzzMessagesStreamGuard(f *testing.F) {
	f.Add(`{"type":"message_start","message":{"id":"m","model":"up","content":[],"usage":{"input_tokens":3,"output_tokens":1}}}
{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"ola."}}
{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"nordmann@exa"}}
{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"mple.no is the address"}}
{"type":"content_block_stop","index":0}
{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"mail","input":{}}}
{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"to\":\"ola.nordmann@"}}
{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"example.no\"}"}}
{"type":"content_block_stop","index":1}
{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":"` + planted + `"},"usage":{"output_tokens":9}}
{"type":"message_stop"}`)
	f.Add(`{"type":"content_block_delta","index":7,"delta":{"type":"citations_delta","citation":{"cited_text":"` + planted + `"}}}
{"type":"mystery","note":"` + planted + `"}
{"type":"content_block_stop","index":3}`)
	s := redactingScanner(f)
	f.Fuzz(func(t *testing.T, in string) {
		ms := &messageStream{c: &call{}, model: "m", scanner: s, blocks: map[int64]*blockStream{}}
		var sent strings.Builder
		for _, line := range strings.Split(in, "\n") {
			ev, err := chat.ParseObject([]byte(line))
			if err != nil {
				continue
			}
			for _, e := range ms.event(ev.Str("type"), ev) {
				b, err := e.Data.Encode()
				if err != nil || !json.Valid(b) {
					t.Fatalf("an event does not encode: %v", err)
				}
				sent.Write(b)
			}
		}
		// What was still held back goes out when each block stops; the text sent must not spell the address.
		if strings.Contains(sent.String(), planted) && !hasOpaque(in) {
			t.Fatalf("planted address sent: %s", sent.String())
		}
	})
}
