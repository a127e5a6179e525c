package anthropic

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/llmgw/chat"
)

// FinishReason maps a Messages API stop_reason to an OpenAI finish_reason.
func FinishReason(stop string) string {
	switch stop {
	case "max_tokens", "model_context_window_exceeded":
		return "length"
	case "tool_use":
		return "tool_calls"
	case "refusal":
		return "content_filter"
	}
	return "stop"
}

// StopReason maps an OpenAI finish_reason to a Messages API stop_reason.
func StopReason(finish string) string {
	switch finish {
	case "length":
		return "max_tokens"
	case "tool_calls", "function_call":
		return "tool_use"
	case "content_filter":
		return "refusal"
	}
	return "end_turn"
}

// UsageOf reads Messages API usage; cached prompt tokens (read and written) count as input.
func UsageOf(u chat.Object) (chat.Usage, bool) {
	if u == nil {
		return chat.Usage{}, false
	}
	var out chat.Usage
	in, ok1 := u.Int("input_tokens")
	cr, _ := u.Int("cache_read_input_tokens")
	cc, _ := u.Int("cache_creation_input_tokens")
	o, ok2 := u.Int("output_tokens")
	out.Input, out.Output = max(in, 0)+max(cr, 0)+max(cc, 0), max(o, 0)
	return out, ok1 || ok2
}

// ResponseToOpenAI turns a Messages API response into an OpenAI chat completion named model.
func ResponseToOpenAI(a chat.Object, model string) (chat.Object, chat.Usage) {
	var texts []string
	var calls []chat.Object
	for _, b := range a.Objs("content") {
		switch b.Str("type") {
		case "text":
			texts = append(texts, b.Str("text"))
		case "tool_use":
			calls = append(calls, toolCall(b.Str("id"), b.Str("name"), b["input"]))
		}
	}
	m := chat.Object{}
	m.Set("role", "assistant")
	if len(texts) > 0 || len(calls) == 0 {
		m.Set("content", strings.Join(texts, ""))
	} else {
		m["content"] = json.RawMessage("null")
	}
	if len(calls) > 0 {
		m.Set("tool_calls", calls)
	}
	choice := chat.Object{}
	choice.Set("index", 0)
	choice.Set("message", m)
	choice.Set("finish_reason", FinishReason(a.Str("stop_reason")))
	choice["logprobs"] = json.RawMessage("null")
	usage, _ := UsageOf(a.Obj("usage"))
	out := chat.Object{}
	out.Set("id", a.Str("id"))
	out.Set("object", "chat.completion")
	out.Set("created", time.Now().Unix())
	out.Set("model", model)
	out.Set("choices", []chat.Object{choice})
	out.Set("usage", chat.UsageObject(usage))
	return out, usage
}

// ResponseFromOpenAI turns an OpenAI chat completion (its first choice) into a Messages API response.
func ResponseFromOpenAI(o chat.Object, model string) chat.Object {
	var blocks []chat.Object
	finish := ""
	if choices := o.Objs("choices"); len(choices) > 0 && choices[0] != nil {
		m := choices[0].Obj("message")
		finish = choices[0].Str("finish_reason")
		if m != nil {
			if s := joinText(m["content"]); s != "" {
				blocks = append(blocks, textBlock(s))
			}
			if s := m.Str("refusal"); s != "" {
				blocks = append(blocks, textBlock(s))
			}
			for _, tc := range m.Objs("tool_calls") {
				fn := tc.Obj("function")
				if fn == nil {
					continue
				}
				input, err := argumentsObject(fn.Str("arguments"))
				if err != nil {
					input = json.RawMessage("{}")
				}
				b := chat.Object{}
				b.Set("type", "tool_use")
				b.Set("id", tc.Str("id"))
				b.Set("name", fn.Str("name"))
				b["input"] = input
				blocks = append(blocks, b)
			}
		}
	}
	if blocks == nil {
		blocks = []chat.Object{}
	}
	usage, _ := chat.UsageOf(o)
	out := chat.Object{}
	out.Set("id", messageID(o.Str("id")))
	out.Set("type", "message")
	out.Set("role", "assistant")
	out.Set("model", model)
	out.Set("content", blocks)
	out.Set("stop_reason", StopReason(finish))
	out["stop_sequence"] = json.RawMessage("null")
	out.Set("usage", usageObject(usage))
	return out
}

func messageID(id string) string {
	if strings.HasPrefix(id, "msg_") {
		return id
	}
	return "msg_" + strings.TrimPrefix(id, "chatcmpl-")
}

func usageObject(u chat.Usage) chat.Object {
	o := chat.Object{}
	o.Set("input_tokens", u.Input)
	o.Set("output_tokens", u.Output)
	return o
}

// ErrorBody is a Messages API error body.
func ErrorBody(typ, message string) chat.Object {
	e := chat.Object{}
	e.Set("type", typ)
	e.Set("message", message)
	o := chat.Object{}
	o.Set("type", "error")
	o.Set("error", e)
	return o
}

// ErrorType maps an HTTP status to a Messages API error type.
func ErrorType(status int) string {
	switch status {
	case 400, 413, 422:
		return "invalid_request_error"
	case 401:
		return "authentication_error"
	case 402:
		return "billing_error"
	case 403:
		return "permission_error"
	case 404:
		return "not_found_error"
	case 429:
		return "rate_limit_error"
	case 503, 529:
		return "overloaded_error"
	}
	return "api_error"
}
