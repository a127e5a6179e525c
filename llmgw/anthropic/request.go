// Package anthropic translates between the Anthropic Messages API and OpenAI chat completions, in both
// directions: requests, responses and streamed events, including system prompts, tool calls, tool results,
// images and token usage. It is used only where the two sides speak different APIs: a Messages request for an
// Anthropic endpoint goes upstream untranslated, and only its usage is read here (UsageOf).
package anthropic

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/umbra-mesh/umbra/llmgw/chat"
)

// DefaultMaxTokens is sent when an OpenAI request sets no output limit; the Messages API requires one.
const DefaultMaxTokens = 4096

// jsonInstruction is added to the system prompt for response_format, which the Messages API lacks.
const jsonInstruction = "Respond with a single valid JSON object and nothing else."

// message is a Messages API message under construction.
type message struct {
	Role    string        `json:"role"`
	Content []chat.Object `json:"content"`
}

func textBlock(s string) chat.Object {
	b := chat.Object{}
	b.Set("type", "text")
	b.Set("text", s)
	return b
}

// RequestFromOpenAI turns an OpenAI chat-completion request into a Messages API request for model.
// Members with no Messages API counterpart are left out.
func RequestFromOpenAI(r *chat.Request, model string) (chat.Object, error) {
	if n, ok := r.Body.Int("n"); ok && n > 1 {
		return nil, errors.New("n > 1 is not supported by Anthropic models")
	}
	var system []string
	var msgs []message
	add := func(role string, blocks ...chat.Object) {
		if len(blocks) == 0 {
			return
		}
		if len(msgs) > 0 && msgs[len(msgs)-1].Role == role {
			msgs[len(msgs)-1].Content = append(msgs[len(msgs)-1].Content, blocks...)
			return
		}
		msgs = append(msgs, message{Role: role, Content: blocks})
	}
	for i, m := range r.Messages {
		switch role := m.Str("role"); role {
		case "system", "developer":
			if s := joinText(m["content"]); s != "" {
				system = append(system, s)
			}
		case "user":
			blocks, err := userBlocks(m["content"])
			if err != nil {
				return nil, fmt.Errorf("messages[%d]: %w", i, err)
			}
			add("user", blocks...)
		case "assistant":
			blocks, err := assistantBlocks(m)
			if err != nil {
				return nil, fmt.Errorf("messages[%d]: %w", i, err)
			}
			add("assistant", blocks...)
		case "tool", "function":
			res := chat.Object{}
			res.Set("type", "tool_result")
			id := m.Str("tool_call_id")
			if id == "" {
				id = m.Str("name")
			}
			res.Set("tool_use_id", id)
			res.Set("content", joinText(m["content"]))
			add("user", res)
		default:
			return nil, fmt.Errorf("messages[%d]: role %q is not supported by Anthropic models", i, role)
		}
	}
	if rf := r.Body.Obj("response_format"); rf != nil && rf.Str("type") != "" && rf.Str("type") != "text" {
		instr := jsonInstruction
		if js := rf.Obj("json_schema"); js != nil && len(js["schema"]) > 0 {
			instr += " The object must conform to this JSON Schema: " + string(js["schema"])
		}
		system = append(system, instr)
	}

	out := chat.Object{}
	out.Set("model", model)
	out.Set("messages", msgs)
	if len(system) > 0 {
		out.Set("system", strings.Join(system, "\n\n"))
	}
	maxTok, ok := r.MaxOutputTokens()
	if !ok {
		maxTok = DefaultMaxTokens
	}
	out.Set("max_tokens", maxTok)
	if r.Stream {
		out.Set("stream", true)
	}
	var temp float64
	if raw, ok := r.Body["temperature"]; ok && json.Unmarshal(raw, &temp) == nil {
		out.Set("temperature", min(max(temp, 0), 1)) // OpenAI allows up to 2, Anthropic up to 1
	}
	if raw, ok := r.Body["top_p"]; ok && !r.Body.IsNull("top_p") {
		out["top_p"] = raw
	}
	if stops := stopList(r.Body["stop"]); len(stops) > 0 {
		out.Set("stop_sequences", stops)
	}
	if u := r.Body.Str("user"); u != "" {
		meta := chat.Object{}
		meta.Set("user_id", u)
		out.Set("metadata", meta)
	}
	if err := toolsFromOpenAI(r.Body, out); err != nil {
		return nil, err
	}
	return out, nil
}

func stopList(raw json.RawMessage) []string {
	var s string
	if json.Unmarshal(raw, &s) == nil && s != "" {
		return []string{s}
	}
	var ss []string
	_ = json.Unmarshal(raw, &ss)
	return ss
}

// joinText returns string content, or the text parts of array content joined by newlines.
func joinText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var parts []chat.Object
	_ = json.Unmarshal(raw, &parts)
	var texts []string
	for _, p := range parts {
		if p != nil && (p.Str("type") == "text" || p.Str("type") == "refusal") {
			texts = append(texts, p.Str("text")+p.Str("refusal"))
		}
	}
	return strings.Join(texts, "\n")
}

func userBlocks(raw json.RawMessage) ([]chat.Object, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return nil, nil
		}
		return []chat.Object{textBlock(s)}, nil
	}
	var parts []chat.Object
	_ = json.Unmarshal(raw, &parts)
	var out []chat.Object
	for _, p := range parts {
		switch t := p.Str("type"); t {
		case "text":
			out = append(out, textBlock(p.Str("text")))
		case "image_url":
			src, err := imageSource(p.Obj("image_url").Str("url"))
			if err != nil {
				return nil, err
			}
			b := chat.Object{}
			b.Set("type", "image")
			b.Set("source", src)
			out = append(out, b)
		default:
			return nil, fmt.Errorf("content part %q is not supported by Anthropic models", t)
		}
	}
	return out, nil
}

// imageSource turns an OpenAI image URL (a data: URL or http(s)) into a Messages API image source.
func imageSource(url string) (chat.Object, error) {
	src := chat.Object{}
	if rest, ok := strings.CutPrefix(url, "data:"); ok {
		meta, data, ok := strings.Cut(rest, ",")
		mediaType, isB64 := strings.CutSuffix(meta, ";base64")
		if !ok || !isB64 || mediaType == "" {
			return nil, errors.New("image data URL must be base64 with a media type")
		}
		src.Set("type", "base64")
		src.Set("media_type", mediaType)
		src.Set("data", data)
		return src, nil
	}
	if strings.HasPrefix(url, "https://") || strings.HasPrefix(url, "http://") {
		src.Set("type", "url")
		src.Set("url", url)
		return src, nil
	}
	return nil, errors.New("image URL must be a data: or http(s): URL")
}

func assistantBlocks(m chat.Object) ([]chat.Object, error) {
	var out []chat.Object
	if s := joinText(m["content"]); s != "" {
		out = append(out, textBlock(s))
	}
	for _, tc := range m.Objs("tool_calls") {
		fn := tc.Obj("function")
		if fn == nil {
			continue
		}
		input, err := argumentsObject(fn.Str("arguments"))
		if err != nil {
			return nil, fmt.Errorf("tool call %s: %w", tc.Str("id"), err)
		}
		b := chat.Object{}
		b.Set("type", "tool_use")
		b.Set("id", tc.Str("id"))
		b.Set("name", fn.Str("name"))
		b["input"] = input
		out = append(out, b)
	}
	return out, nil
}

// argumentsObject parses tool call arguments, which the Messages API wants as a JSON object.
func argumentsObject(args string) (json.RawMessage, error) {
	if strings.TrimSpace(args) == "" {
		return json.RawMessage("{}"), nil
	}
	o, err := chat.ParseObject([]byte(args))
	if err != nil {
		return nil, errors.New("arguments are not a JSON object")
	}
	return o.Encode()
}

func toolsFromOpenAI(in, out chat.Object) error {
	var tools []chat.Object
	for _, t := range in.Objs("tools") {
		if t.Str("type") != "function" {
			return fmt.Errorf("tool type %q is not supported by Anthropic models", t.Str("type"))
		}
		fn := t.Obj("function")
		tool := chat.Object{}
		tool.Set("name", fn.Str("name"))
		if d := fn.Str("description"); d != "" {
			tool.Set("description", d)
		}
		if params, ok := fn["parameters"]; ok && !fn.IsNull("parameters") {
			tool["input_schema"] = params
		} else {
			tool["input_schema"] = json.RawMessage(`{"type":"object","properties":{}}`)
		}
		tools = append(tools, tool)
	}
	if len(tools) > 0 {
		out.Set("tools", tools)
	}
	choice := chat.Object{}
	var s string
	raw, has := in["tool_choice"]
	switch {
	case has && json.Unmarshal(raw, &s) == nil:
		switch s {
		case "auto":
			choice.Set("type", "auto")
		case "none":
			choice.Set("type", "none")
		case "required":
			choice.Set("type", "any")
		default:
			return fmt.Errorf("tool_choice %q is not supported", s)
		}
	case has && !in.IsNull("tool_choice"):
		tc := in.Obj("tool_choice")
		if tc == nil || tc.Obj("function") == nil {
			return errors.New("tool_choice must name a function")
		}
		choice.Set("type", "tool")
		choice.Set("name", tc.Obj("function").Str("name"))
	}
	if raw, ok := in["parallel_tool_calls"]; ok && string(raw) == "false" && len(tools) > 0 {
		if len(choice) == 0 {
			choice.Set("type", "auto")
		}
		choice.Set("disable_parallel_tool_use", true)
	}
	if len(choice) > 0 && len(tools) > 0 {
		out.Set("tool_choice", choice)
	}
	return nil
}
