package llmgw

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
)

// FuzzResponseGuard sends arbitrary JSON shapes, with a secret (blocked) or an email address (redacted)
// planted in one of their strings or member names, through the response guard, whole and as a stream
// chunk: it never panics and never lets the planted value through, wherever it sits.
func FuzzResponseGuard(f *testing.F) {
	for _, seed := range []string{
		`{"id":"chatcmpl-1","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}`,
		`{"choices":[{"index":0,"message":{"content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":\"b\"}"}}]}}]}`,
		`{"choices":[{"index":0,"message":{"content":"","refusal":"no"},"logprobs":{"content":[{"token":"a","logprob":-1,"bytes":[97],"top_logprobs":[{"token":"b","logprob":-2,"bytes":[98]}]}],"refusal":null}}]}`,
		`{"choices":[{"index":1,"delta":{"content":"x","reasoning_content":"y"},"finish_reason":null}]}`,
		`{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]},"logprobs":{"content":[{"token":"t"}]}}]}`,
		`{"choices":"text","usage":{"prompt_tokens":1},"system_fingerprint":"fp","x_vendor":{"deep":[["s"]]}}`,
		`["a",{"b":"c"}]`, `"just text"`, `{"choices":[null,3,"s",{"message":"m"}]}`,
	} {
		f.Add([]byte(seed), uint8(0), false)
		f.Add([]byte(seed), uint8(3), true)
	}
	g, err := New(Config{Guardrails: Guardrails{PII: guard.Redact, Secrets: guard.Block, Responses: true, Window: 8}})
	if err != nil {
		f.Fatal(err)
	}
	const secret = "sk-proj-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzd"
	const email = "jane.doe@example.com"
	f.Fuzz(func(t *testing.T, shape []byte, where uint8, pii bool) {
		v, err := decodeJSON(shape)
		if err != nil {
			return
		}
		plant := secret
		if pii {
			plant = email
		}
		var slots []func()
		collectSlots(&v, &slots, plant)
		if len(slots) == 0 {
			v = map[string]any{"choices": []any{map[string]any{"index": json.Number("0"), "message": map[string]any{"content": "x"}}}, "v": v}
			collectSlots(&v, &slots, plant)
		}
		slots[int(where)%len(slots)]()
		var obj map[string]any
		switch x := v.(type) {
		case map[string]any:
			obj = x
		case []any:
			obj = map[string]any{"choices": x}
		default:
			obj = map[string]any{"choices": []any{map[string]any{"message": map[string]any{"content": x}}}}
		}
		raw, err := encodeJSON(obj)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(raw), plant) {
			t.Fatalf("not planted: %s", raw)
		}
		parse := func() chat.Object {
			o, err := chat.ParseObject(raw)
			if err != nil {
				t.Fatalf("%v: %s", err, raw)
			}
			return o
		}

		whole := parse()
		g.guardCompletion(newCall("chat", "openai"), whole)
		out, err := whole.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if where := leak(out, plant); where != "" {
			t.Fatalf("whole answer leaks in %s:\n%s\n->\n%s", where, raw, out)
		}

		c := newCall("chat", "openai")
		rs := g.newResponseStreams()
		var sent []byte
		if ch, _ := g.filterChunk(c, "m", parse(), rs, true, nil); ch != nil {
			b, err := ch.Encode()
			if err != nil {
				t.Fatal(err)
			}
			sent = append(sent, b...)
		}
		for _, ch := range rs.flushAll(c, parse(), "m") {
			b, _ := ch.Encode()
			sent = append(sent, b...)
		}
		if where := leak(sent, plant); where != "" {
			t.Fatalf("stream leaks in %s:\n%s\n->\n%s", where, raw, sent)
		}
	})
}

// collectSlots lists, for every string and member name in *v, a function that plants p into it.
func collectSlots(v *any, slots *[]func(), p string) {
	switch x := (*v).(type) {
	case string:
		*slots = append(*slots, func() { *v = x[:len(x)/2] + " " + p + " " + x[len(x)/2:] })
	case map[string]any:
		for k, e := range x {
			*slots = append(*slots, func() {
				e := x[k]
				delete(x, k)
				x[k+" "+p] = e
			})
			if s, ok := e.(string); ok {
				*slots = append(*slots, func() { x[k] = s[:len(s)/2] + " " + p + " " + s[len(s)/2:] })
			} else {
				collectSlots(&e, slots, p) // maps and arrays are shared with x
			}
		}
	case []any:
		for i := range x {
			collectSlots(&x[i], slots, p)
		}
	}
}

// leak reports where p can be read in the JSON out: in a string, a member name or an array of byte values.
func leak(out []byte, p string) string {
	if strings.Contains(string(out), p) {
		return "raw"
	}
	var found string
	var walk func(v any, key string)
	walk = func(v any, key string) {
		switch x := v.(type) {
		case []any:
			if s, ok := byteString(x); ok && key == "bytes" && strings.Contains(s, p) {
				found = "bytes"
			}
			for _, e := range x {
				walk(e, key)
			}
		case map[string]any:
			for k, e := range x {
				walk(e, k)
			}
		}
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	dec.UseNumber()
	for {
		var v any
		if dec.Decode(&v) != nil {
			break
		}
		walk(v, "")
	}
	return found
}
