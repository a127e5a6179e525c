package chat

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Limits on what a request may hold, so that a hostile body cannot make the gateway do unbounded work.
const (
	MaxMessages = 4096
	MaxParts    = 1024 // content parts in one message
)

// Request is a chat-completion request. Body holds every member as received; Messages are the decoded
// messages, written back by Encode.
type Request struct {
	Body     Object
	Model    string
	Stream   bool
	Messages []Object
}

// ParseRequest decodes a chat-completion request body. It checks only what the gateway relies on: a model
// name, a non-empty list of messages with roles, and content that is a string, null or a list of parts.
func ParseRequest(b []byte) (*Request, error) {
	body, err := ParseObject(b)
	if err != nil {
		return nil, err
	}
	r := &Request{Body: body}
	if err := json.Unmarshal(body["model"], &r.Model); err != nil || r.Model == "" {
		return nil, errors.New(`"model" must be a non-empty string`)
	}
	if raw, ok := body["stream"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &r.Stream); err != nil {
			return nil, errors.New(`"stream" must be a boolean`)
		}
	}
	var msgs []json.RawMessage
	if err := json.Unmarshal(body["messages"], &msgs); err != nil || len(msgs) == 0 {
		return nil, errors.New(`"messages" must be a non-empty array`)
	}
	if len(msgs) > MaxMessages {
		return nil, fmt.Errorf(`"messages" holds more than %d messages`, MaxMessages)
	}
	r.Messages = make([]Object, len(msgs))
	for i, raw := range msgs {
		var m Object
		if err := json.Unmarshal(raw, &m); err != nil || m == nil {
			return nil, fmt.Errorf("messages[%d] is not an object", i)
		}
		if m.Str("role") == "" {
			return nil, fmt.Errorf("messages[%d].role must be a non-empty string", i)
		}
		if err := checkContent(m["content"]); err != nil {
			return nil, fmt.Errorf("messages[%d].content %w", i, err)
		}
		r.Messages[i] = m
	}
	if raw, ok := body["stream_options"]; ok && !isNull(raw) {
		var so Object
		if err := json.Unmarshal(raw, &so); err != nil {
			return nil, errors.New(`"stream_options" must be an object`)
		}
	}
	return r, nil
}

func isNull(raw json.RawMessage) bool { return strings.TrimSpace(string(raw)) == "null" }

func checkContent(raw json.RawMessage) error {
	if len(raw) == 0 || isNull(raw) {
		return nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return nil
	}
	var parts []Object
	if err := json.Unmarshal(raw, &parts); err != nil {
		return errors.New("must be a string, null or an array of parts")
	}
	if len(parts) > MaxParts {
		return fmt.Errorf("holds more than %d parts", MaxParts)
	}
	for i, p := range parts {
		if p == nil || p.Str("type") == "" {
			return fmt.Errorf("part %d has no type", i)
		}
	}
	return nil
}

// Encode returns the request body with the (possibly rewritten) messages.
func (r *Request) Encode() ([]byte, error) {
	out := r.Body.Clone()
	out.Set("messages", r.Messages)
	out.Set("model", r.Model)
	return out.Encode()
}

// Text is one piece of text in a request: a message's string content, or one text part of it.
type Text struct {
	Message int    // index in Messages
	Part    int    // index of the part in the content array; -1 for string content
	Role    string // the message's role
	Text    string
}

// Texts lists every piece of text in the messages, in order.
func (r *Request) Texts() []Text {
	var out []Text
	for i, m := range r.Messages {
		role := m.Str("role")
		raw := m["content"]
		if len(raw) == 0 || isNull(raw) {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			out = append(out, Text{Message: i, Part: -1, Role: role, Text: s})
			continue
		}
		var parts []Object
		if json.Unmarshal(raw, &parts) != nil {
			continue
		}
		for j, p := range parts {
			if p.Str("type") == "text" {
				out = append(out, Text{Message: i, Part: j, Role: role, Text: p.Str("text")})
			}
		}
	}
	return out
}

// SetText replaces the text t points at with s.
func (r *Request) SetText(t Text, s string) {
	if t.Message < 0 || t.Message >= len(r.Messages) {
		return
	}
	m := r.Messages[t.Message].Clone()
	if t.Part < 0 {
		var old string
		if json.Unmarshal(m["content"], &old) == nil && old == s {
			return
		}
		m.Set("content", s)
	} else {
		var parts []Object
		if json.Unmarshal(m["content"], &parts) != nil || t.Part >= len(parts) {
			return
		}
		if parts[t.Part].Str("text") == s {
			return
		}
		p := parts[t.Part].Clone()
		p.Set("text", s)
		parts[t.Part] = p
		m.Set("content", parts)
	}
	r.Messages[t.Message] = m
}

// IncludeUsage reports whether the caller asked for a usage chunk at the end of a stream.
func (r *Request) IncludeUsage() bool {
	so := r.Body.Obj("stream_options")
	return so != nil && so.Bool("include_usage")
}

// ForceIncludeUsage asks the upstream for a usage chunk at the end of a stream, keeping other stream options.
func (r *Request) ForceIncludeUsage() {
	so := r.Body.Obj("stream_options")
	if so == nil {
		so = Object{}
	}
	so.Set("include_usage", true)
	r.Body.Set("stream_options", so)
}

// MaxOutputTokens returns max_completion_tokens, or else max_tokens, if the caller set one.
func (r *Request) MaxOutputTokens() (int64, bool) {
	if n, ok := r.Body.Int("max_completion_tokens"); ok && n > 0 {
		return n, true
	}
	if n, ok := r.Body.Int("max_tokens"); ok && n > 0 {
		return n, true
	}
	return 0, false
}

// HasTools reports whether the request declares tools or functions.
func (r *Request) HasTools() bool {
	return len(r.Body.Objs("tools")) > 0 || len(r.Body.Objs("functions")) > 0
}

// HasImages reports whether any message carries an image part.
func (r *Request) HasImages() bool {
	for _, m := range r.Messages {
		for _, p := range m.Objs("content") {
			if p != nil && (p.Str("type") == "image_url" || p.Str("type") == "input_image") {
				return true
			}
		}
	}
	return false
}

// LastUserText returns the text of the last user message.
func (r *Request) LastUserText() string {
	texts := r.Texts()
	last := -1
	for _, t := range texts {
		if t.Role == "user" {
			last = t.Message
		}
	}
	var b strings.Builder
	for _, t := range texts {
		if t.Message == last {
			if b.Len() > 0 {
				b.WriteByte('\n')
			}
			b.WriteString(t.Text)
		}
	}
	return b.String()
}

// PromptText returns all message text joined by newlines.
func (r *Request) PromptText() string {
	var b strings.Builder
	for i, t := range r.Texts() {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(t.Text)
	}
	return b.String()
}

// Tokens per image part when estimating; providers charge by resolution, which the gateway does not decode.
const imageTokens = 1000

// EstimateInputTokens guesses the prompt's size in tokens from above: a token covers about four bytes of
// English text and seldom fewer than three, so bytes/3 plus per-message overhead rarely undercounts.
func (r *Request) EstimateInputTokens() int64 {
	var n int64 = 3
	for _, m := range r.Messages {
		n += 4
		for _, p := range m.Objs("content") {
			if p != nil && (p.Str("type") == "image_url" || p.Str("type") == "input_image") {
				n += imageTokens
			}
		}
		if calls, ok := m["tool_calls"]; ok {
			n += int64(len(calls)) / 3
		}
	}
	for _, t := range r.Texts() {
		n += int64(len(t.Text))/3 + 1
	}
	for _, k := range []string{"tools", "functions", "response_format"} {
		n += int64(len(r.Body[k])) / 3
	}
	return n
}
