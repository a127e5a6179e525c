package anthropic

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/umbra-mesh/umbra/llmgw/chat"
)

// RequestToOpenAI turns a Messages API request body into an OpenAI chat-completion request.
// Members with no OpenAI counterpart (top_k, thinking, cache_control, ...) are left out.
func RequestToOpenAI(b []byte) (*chat.Request, error) {
	in, err := chat.ParseObject(b)
	if err != nil {
		return nil, err
	}
	model := in.Str("model")
	if model == "" {
		return nil, errors.New(`"model" must be a non-empty string`)
	}
	var msgs []chat.Object
	if raw, ok := in["system"]; ok && !in.IsNull("system") {
		s, err := blockText(raw)
		if err != nil {
			return nil, fmt.Errorf("system: %w", err)
		}
		if s != "" {
			msgs = append(msgs, msg("system", s))
		}
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(in["messages"], &raws); err != nil || len(raws) == 0 {
		return nil, errors.New(`"messages" must be a non-empty array`)
	}
	if len(raws) > chat.MaxMessages {
		return nil, fmt.Errorf(`"messages" holds more than %d messages`, chat.MaxMessages)
	}
	for i, raw := range raws {
		var m chat.Object
		if err := json.Unmarshal(raw, &m); err != nil || m == nil {
			return nil, fmt.Errorf("messages[%d] is not an object", i)
		}
		var conv []chat.Object
		switch role := m.Str("role"); role {
		case "user":
			conv, err = userToOpenAI(m["content"])
		case "assistant":
			conv, err = assistantToOpenAI(m["content"])
		default:
			err = fmt.Errorf("role %q: want user or assistant", role)
		}
		if err != nil {
			return nil, fmt.Errorf("messages[%d]: %w", i, err)
		}
		msgs = append(msgs, conv...)
	}
	out := chat.Object{}
	out.Set("model", model)
	out.Set("messages", msgs)
	if n, ok := in.Int("max_tokens"); ok {
		out.Set("max_tokens", n)
	}
	for _, k := range []string{"temperature", "top_p"} {
		if raw, ok := in[k]; ok && !in.IsNull(k) {
			out[k] = raw
		}
	}
	if stops := stopList(in["stop_sequences"]); len(stops) > 0 {
		out.Set("stop", stops)
	}
	if in.Bool("stream") {
		out.Set("stream", true)
	}
	if meta := in.Obj("metadata"); meta != nil && meta.Str("user_id") != "" {
		out.Set("user", meta.Str("user_id"))
	}
	if err := toolsToOpenAI(in, out); err != nil {
		return nil, err
	}
	body, err := out.Encode()
	if err != nil {
		return nil, err
	}
	return chat.ParseRequest(body)
}

func msg(role string, content any) chat.Object {
	m := chat.Object{}
	m.Set("role", role)
	m.Set("content", content)
	return m
}

// blockText reads string content or an array of text blocks.
func blockText(raw json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var blocks []chat.Object
	if err := json.Unmarshal(raw, &blocks); err != nil {
		return "", errors.New("content must be a string or an array of blocks")
	}
	var texts []string
	for _, b := range blocks {
		switch b.Str("type") {
		case "text":
			texts = append(texts, b.Str("text"))
		default:
			return "", fmt.Errorf("block type %q is not supported here", b.Str("type"))
		}
	}
	return strings.Join(texts, "\n"), nil
}

func blocksOf(raw json.RawMessage) ([]chat.Object, string, bool, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return nil, s, true, nil
	}
	var blocks []chat.Object
	if err := json.Unmarshal(raw, &blocks); err != nil {
		return nil, "", false, errors.New("content must be a string or an array of blocks")
	}
	if len(blocks) > chat.MaxParts {
		return nil, "", false, fmt.Errorf("content holds more than %d blocks", chat.MaxParts)
	}
	return blocks, "", false, nil
}

// userToOpenAI converts one user message. Tool results become tool messages, placed first because OpenAI
// wants them right after the assistant message that made the calls.
func userToOpenAI(raw json.RawMessage) ([]chat.Object, error) {
	blocks, s, isString, err := blocksOf(raw)
	if err != nil {
		return nil, err
	}
	if isString {
		return []chat.Object{msg("user", s)}, nil
	}
	var tools, parts []chat.Object
	for _, b := range blocks {
		switch t := b.Str("type"); t {
		case "text":
			p := chat.Object{}
			p.Set("type", "text")
			p.Set("text", b.Str("text"))
			parts = append(parts, p)
		case "image":
			url, err := imageURL(b.Obj("source"))
			if err != nil {
				return nil, err
			}
			img := chat.Object{}
			img.Set("url", url)
			p := chat.Object{}
			p.Set("type", "image_url")
			p.Set("image_url", img)
			parts = append(parts, p)
		case "tool_result":
			text, err := blockText(orEmpty(b["content"]))
			if err != nil {
				return nil, fmt.Errorf("tool_result: %w", err)
			}
			if b.Bool("is_error") {
				text = "Error: " + text
			}
			m := msg("tool", text)
			m.Set("tool_call_id", b.Str("tool_use_id"))
			tools = append(tools, m)
		default:
			return nil, fmt.Errorf("block type %q is not supported", t)
		}
	}
	if len(parts) > 0 {
		tools = append(tools, msg("user", parts))
	}
	return tools, nil
}

func orEmpty(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 || string(raw) == "null" {
		return json.RawMessage(`""`)
	}
	return raw
}

func imageURL(src chat.Object) (string, error) {
	switch src.Str("type") {
	case "base64":
		if src.Str("media_type") == "" {
			return "", errors.New("image source has no media_type")
		}
		return "data:" + src.Str("media_type") + ";base64," + src.Str("data"), nil
	case "url":
		return src.Str("url"), nil
	}
	return "", fmt.Errorf("image source type %q is not supported", src.Str("type"))
}

func assistantToOpenAI(raw json.RawMessage) ([]chat.Object, error) {
	blocks, s, isString, err := blocksOf(raw)
	if err != nil {
		return nil, err
	}
	if isString {
		return []chat.Object{msg("assistant", s)}, nil
	}
	var texts []string
	var calls []chat.Object
	for _, b := range blocks {
		switch t := b.Str("type"); t {
		case "text":
			texts = append(texts, b.Str("text"))
		case "tool_use":
			calls = append(calls, toolCall(b.Str("id"), b.Str("name"), b["input"]))
		case "thinking", "redacted_thinking":
			// OpenAI has no place for them; they are not needed to continue the conversation.
		default:
			return nil, fmt.Errorf("block type %q is not supported", t)
		}
	}
	var content any
	if len(texts) > 0 {
		content = strings.Join(texts, "")
	}
	m := msg("assistant", content)
	if len(calls) > 0 {
		m.Set("tool_calls", calls)
	}
	return []chat.Object{m}, nil
}

func toolCall(id, name string, input json.RawMessage) chat.Object {
	args := "{}"
	if o, err := chat.ParseObject(input); err == nil {
		if b, err := o.Encode(); err == nil {
			args = string(b)
		}
	}
	fn := chat.Object{}
	fn.Set("name", name)
	fn.Set("arguments", args)
	tc := chat.Object{}
	tc.Set("id", id)
	tc.Set("type", "function")
	tc.Set("function", fn)
	return tc
}

func toolsToOpenAI(in, out chat.Object) error {
	var tools []chat.Object
	for _, t := range in.Objs("tools") {
		if t == nil || (t.Str("type") != "" && t.Str("type") != "custom") {
			return fmt.Errorf("tool type %q is not supported", t.Str("type"))
		}
		fn := chat.Object{}
		fn.Set("name", t.Str("name"))
		if d := t.Str("description"); d != "" {
			fn.Set("description", d)
		}
		if schema, ok := t["input_schema"]; ok {
			fn["parameters"] = schema
		}
		tool := chat.Object{}
		tool.Set("type", "function")
		tool.Set("function", fn)
		tools = append(tools, tool)
	}
	if len(tools) > 0 {
		out.Set("tools", tools)
	}
	tc := in.Obj("tool_choice")
	if tc == nil {
		return nil
	}
	switch tc.Str("type") {
	case "auto":
		out.Set("tool_choice", "auto")
	case "any":
		out.Set("tool_choice", "required")
	case "none":
		out.Set("tool_choice", "none")
	case "tool":
		fn := chat.Object{}
		fn.Set("name", tc.Str("name"))
		c := chat.Object{}
		c.Set("type", "function")
		c.Set("function", fn)
		out.Set("tool_choice", c)
	default:
		return fmt.Errorf("tool_choice type %q is not supported", tc.Str("type"))
	}
	if tc.Bool("disable_parallel_tool_use") && len(tools) > 0 {
		out.Set("parallel_tool_calls", false)
	}
	return nil
}
