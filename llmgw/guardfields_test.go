package llmgw_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
)

// Planted values, one per category the fields are tested with.
var planted = []struct{ category, text, detector string }{
	{"pii", "jane.doe@example.com", "email"},
	{"secret", "sk-proj-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzd", "api_key"},
}

// texts collects every string of a body (or of every event of a stream) by member name, in order, so that a
// value split across chunks or tokens reads whole; arrays of byte values are read as text under "bytes".
func texts(t *testing.T, body string) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(v any, key string)
	walk = func(v any, key string) {
		switch x := v.(type) {
		case string:
			out[key] += x
		case map[string]any:
			for k, e := range x {
				out["$keys"] += k + "\n"
				walk(e, k)
			}
		case []any:
			if key == "bytes" {
				var b []byte
				for _, e := range x {
					if n, ok := e.(float64); ok {
						b = append(b, byte(n))
					}
				}
				out["bytes"] += string(b)
				return
			}
			for _, e := range x {
				walk(e, key)
			}
		}
	}
	add := func(s string) {
		var v any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("not JSON: %v: %s", err, s)
		}
		walk(v, "")
	}
	if strings.HasPrefix(strings.TrimSpace(body), "{") {
		add(body)
		return out
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok && data != "[DONE]" {
			add(data)
		}
	}
	return out
}

// leaked names the member where secret can be read, or "".
func leaked(t *testing.T, body, secret string) string {
	t.Helper()
	if strings.Contains(body, secret) {
		return "raw body"
	}
	for k, v := range texts(t, body) {
		if strings.Contains(v, secret) {
			return k
		}
	}
	return ""
}

func split3(s string) []string {
	a, b := len(s)/3, 2*len(s)/3
	return []string{s[:a], s[a:b], s[b:]}
}

func TestGuardrailsCoverEveryRequestField(t *testing.T) {
	type field struct {
		name, want string // want: the field label of the finding
		body       func(x string) string
	}
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	fields := []field{
		{"content string", "content", func(x string) string {
			return `{"model":"gpt-test","messages":[{"role":"user","content":` + q("write to "+x) + `}]}`
		}},
		{"content part", "content", func(x string) string {
			return `{"model":"gpt-test","messages":[{"role":"user","content":[{"type":"text","text":` + q("write to "+x) + `}]}]}`
		}},
		{"tool_calls arguments", "tool_calls.arguments", func(x string) string {
			args, _ := json.Marshal(map[string]string{"to": x})
			return `{"model":"gpt-test","messages":[{"role":"user","content":"go"},{"role":"assistant","content":null,` +
				`"tool_calls":[{"id":"call_1","type":"function","function":{"name":"send","arguments":` + q(string(args)) + `}}]},` +
				`{"role":"tool","tool_call_id":"call_1","content":"sent"}]}`
		}},
		{"tool_calls name", "tool_calls.name", func(x string) string {
			return `{"model":"gpt-test","messages":[{"role":"user","content":"go"},{"role":"assistant","content":null,` +
				`"tool_calls":[{"id":"call_1","type":"function","function":{"name":` + q("send "+x) + `,"arguments":"{}"}}]}]}`
		}},
		{"tools description", "tools", func(x string) string {
			return `{"model":"gpt-test","messages":[{"role":"user","content":"go"}],"tools":[{"type":"function",` +
				`"function":{"name":"send","description":` + q("sends mail as "+x) + `,"parameters":{"type":"object"}}}]}`
		}},
		{"tools parameters", "tools", func(x string) string {
			return `{"model":"gpt-test","messages":[{"role":"user","content":"go"}],"tools":[{"type":"function",` +
				`"function":{"name":"send","parameters":{"type":"object","properties":{"to":{"type":"string",` +
				`"description":` + q("default "+x) + `}}}}}]}`
		}},
		{"refusal", "refusal", func(x string) string {
			return `{"model":"gpt-test","messages":[{"role":"user","content":"go"},{"role":"assistant","content":null,` +
				`"refusal":` + q("I will not mail "+x) + `},{"role":"user","content":"ok"}]}`
		}},
	}
	for _, mode := range []guard.Mode{guard.Redact, guard.Block, guard.Log} {
		t.Run(string(mode), func(t *testing.T) {
			up := newUpstream(t, "openai")
			h := guardHarness(t, mode, up)
			for _, f := range fields {
				for _, p := range planted {
					name := f.name + "/" + p.category
					before := up.chats.Load()
					metric := map[string]string{"direction": "request", "field": f.want, "detector": p.detector, "mode": string(mode)}
					counted := h.metric("umbra_llmgw_guardrail_findings_total", metric)
					status, body, _ := h.do(alice, "POST", "/v1/chat/completions", f.body(p.text))
					switch mode {
					case guard.Block:
						if status != 400 || !strings.Contains(body, "guardrail_blocked") || up.chats.Load() != before {
							t.Errorf("%s: %d %s (upstream reached: %v)", name, status, body, up.chats.Load() != before)
						}
					case guard.Redact:
						sent, _ := json.Marshal(up.last())
						if status != 200 || strings.Contains(string(sent), p.text) ||
							!strings.Contains(string(sent), "[REDACTED:"+p.detector+"]") {
							t.Errorf("%s: %d, upstream saw %s", name, status, sent)
						}
					case guard.Log:
						sent, _ := json.Marshal(up.last())
						if status != 200 || !strings.Contains(string(sent), p.text) {
							t.Errorf("%s: %d, upstream saw %s", name, status, sent)
						}
					}
					// The audit record is written after the answer; wait for this call's findings to be counted.
					h.auditor.wait(t, func(auditRecord) bool {
						return h.metric("umbra_llmgw_guardrail_findings_total", metric) > counted
					})
				}
			}
		})
	}
}

func TestGuardrailsCoverEveryResponseField(t *testing.T) {
	type field struct {
		name, want  string // want: the field label of the finding
		reply       func(x string) reply
		placeholder bool // a redacted answer shows the placeholder (log probabilities are dropped instead)
	}
	fields := []field{
		{"content", "content", func(x string) reply { return reply{Pieces: split3("mail " + x + " now")} }, true},
		{"tool_calls arguments", "tool_calls.arguments", func(x string) reply {
			args, _ := json.Marshal(map[string]string{"to": x})
			return reply{Tools: []fakeTool{{ID: "call_1", Name: "send", ArgPieces: split3(string(args))}}}
		}, true},
		{"tool_calls name", "tool_calls.name", func(x string) reply {
			return reply{Tools: []fakeTool{{ID: "call_1", Name: "send " + x, ArgPieces: []string{"{}"}}}}
		}, true},
		{"refusal", "refusal", func(x string) reply {
			return reply{Pieces: []string{""}, Refusal: split3("I will not mail " + x)}
		}, true},
		{"logprobs of content", "logprobs", func(x string) reply {
			return reply{Pieces: split3("mail " + x + " now"), Logprobs: true}
		}, true},
		{"logprobs alternatives", "logprobs", func(x string) reply {
			return reply{Pieces: []string{"Hello", " there"}, Logprobs: true, AltToken: x}
		}, false},
	}
	for _, mode := range []guard.Mode{guard.Redact, guard.Block, guard.Log} {
		t.Run(string(mode), func(t *testing.T) {
			up := newUpstream(t, "openai")
			h := guardHarness(t, mode, up)
			for _, f := range fields {
				for _, p := range planted {
					for _, stream := range []bool{false, true} {
						name := fmt.Sprintf("%s/%s/stream=%v", f.name, p.category, stream)
						up.Reply = func(chat.Object) reply { return f.reply(p.text) }
						metric := map[string]string{"direction": "response", "field": f.want, "detector": p.detector, "mode": string(mode)}
						counted := h.metric("umbra_llmgw_guardrail_findings_total", metric)
						req := fmt.Sprintf(`{"model":"gpt-test","messages":[{"role":"user","content":"go"}],"logprobs":true,"stream":%v}`, stream)
						status, body, _ := h.do(alice, "POST", "/v1/chat/completions", req)
						if status != 200 {
							t.Fatalf("%s: %d %s", name, status, body)
						}
						where := leaked(t, body, p.text)
						switch mode {
						case guard.Log:
							if where == "" {
								t.Errorf("%s: a logged finding did not pass: %s", name, body)
							}
						case guard.Redact:
							if where != "" {
								t.Errorf("%s: leaked in %s: %s", name, where, body)
							}
							if f.placeholder && !strings.Contains(strings.Join(mapValues(texts(t, body)), "\n"), "[REDACTED:"+p.detector+"]") {
								t.Errorf("%s: no placeholder: %s", name, body)
							}
						case guard.Block:
							if where != "" {
								t.Errorf("%s: leaked in %s: %s", name, where, body)
							}
							if !strings.Contains(body, `"finish_reason":"content_filter"`) {
								t.Errorf("%s: not filtered: %s", name, body)
							}
						}
						h.auditor.wait(t, func(auditRecord) bool {
							return h.metric("umbra_llmgw_guardrail_findings_total", metric) > counted
						})
					}
				}
			}
		})
	}
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// A streamed block leaks nothing of the blocked window, log probabilities included, and a clean answer's log
// probabilities pass whole.
func TestGuardrailsStreamedLogprobs(t *testing.T) {
	up := newUpstream(t, "openai")
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)},
		Guardrails: llmgw.Guardrails{PII: guard.Redact, Secrets: guard.Block, Responses: true, Window: 16}})
	req := `{"model":"gpt-test","messages":[{"role":"user","content":"go"}],"logprobs":true,"stream":true}`
	clean := []string{"The ", "answer ", "is ", "forty", "-two, ", "as ", "always."}
	up.Reply = func(chat.Object) reply { return reply{Pieces: clean, Logprobs: true} }
	_, body, _ := h.do(alice, "POST", "/v1/chat/completions", req)
	twice := "" // each token, then its alternative
	for _, p := range clean {
		twice += p + p
	}
	if got := texts(t, body); got["content"] != strings.Join(clean, "") || got["token"] != twice {
		t.Errorf("clean answer changed: content %q tokens %q", got["content"], got["token"])
	}
	secret := planted[1].text
	up.Reply = func(chat.Object) reply {
		return reply{Pieces: append([]string{"a long and harmless opening sentence, ", "then "}, split3(secret)...), Logprobs: true}
	}
	_, body, _ = h.do(alice, "POST", "/v1/chat/completions", req)
	got := texts(t, body)
	if where := leaked(t, body, secret[:12]); where != "" {
		t.Errorf("a part of the blocked secret leaked in %s: %s", where, body)
	}
	if !strings.HasPrefix(got["content"], "a long") || !strings.Contains(body, "content_filter") {
		t.Errorf("content %q, body %s", got["content"], body)
	}
}
