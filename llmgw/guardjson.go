package llmgw

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"

	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
)

// A body's text is not only its message content: tool calls carry names and arguments, tools carry
// descriptions and JSON Schemas, answers carry refusals and log probabilities, and providers add members of
// their own. The guardrails therefore scan every string of a body (and every member name), wherever it sits.

// Fields name where in a body a finding was made, for audit records and metrics (a fixed, small set).
const (
	fieldContent  = "content"
	fieldToolName = "tool_calls.name"
	fieldToolArgs = "tool_calls.arguments"
	fieldTools    = "tools"
	fieldRefusal  = "refusal"
	fieldLogprobs = "logprobs"
	fieldOther    = "other"
)

// fieldOf classifies the path of member names leading to a string.
func fieldOf(path []string) string {
	has := func(k string) bool {
		for _, p := range path {
			if p == k {
				return true
			}
		}
		return false
	}
	last := ""
	if len(path) > 0 {
		last = path[len(path)-1]
	}
	switch {
	case has("logprobs"):
		return fieldLogprobs
	case has("tool_calls") || has("function_call"):
		switch last {
		case "name":
			return fieldToolName
		case "arguments", "input":
			return fieldToolArgs
		}
		return fieldOther
	case len(path) > 0 && (path[0] == "tools" || path[0] == "functions" || path[0] == "tool_choice"):
		return fieldTools
	case has("refusal"):
		return fieldRefusal
	case has("content") || last == "text":
		return fieldContent
	}
	return fieldOther
}

// jsonScan scans every string of a decoded JSON value. Strings with findings are rewritten: redacted ones
// always, blocking ones too (scrubbed), so that whatever the caller does with a blocked value, none of it
// passes on unnoticed.
type jsonScan struct {
	s         *guard.Scanner
	injection bool
	report    func(field string, fs []guard.Finding)
	blocked   bool // a finding blocks
	acted     bool // a finding redacts or blocks
	changed   bool
}

// value returns v with its strings scanned; path holds the member names leading to v.
func (js *jsonScan) value(v any, path []string) any {
	switch x := v.(type) {
	case string:
		return js.text(x, path)
	case map[string]any:
		for k, e := range x {
			if js.found(k, append(path, k)) {
				delete(x, k) // a member name is not something to redact in place
				js.changed = true
				continue
			}
			x[k] = js.value(e, append(path, k))
		}
		return x
	case []any:
		if len(path) > 0 && path[len(path)-1] == "bytes" {
			if s, ok := byteString(x); ok {
				if js.found(s, path) {
					js.changed = true
					return []any{}
				}
				return x
			}
		}
		for i, e := range x {
			x[i] = js.value(e, path)
		}
		return x
	}
	return v
}

// text scans one string.
func (js *jsonScan) text(s string, path []string) string {
	if isDataURL(s) {
		return s
	}
	out, fs, blocked := js.s.Scrub(s, js.injection)
	js.note(fs, path, blocked)
	if out != s {
		js.changed = true
	}
	return out
}

// found scans s and reports whether a finding acts on it.
func (js *jsonScan) found(s string, path []string) bool {
	fs := js.s.Scan(s, js.injection)
	blocked := false
	acts := false
	for _, f := range fs {
		blocked = blocked || f.Mode == guard.Block
		acts = acts || f.Acts()
	}
	js.note(fs, path, blocked)
	return acts
}

func (js *jsonScan) note(fs []guard.Finding, path []string, blocked bool) {
	if len(fs) == 0 {
		return
	}
	js.blocked = js.blocked || blocked
	for _, f := range fs {
		js.acted = js.acted || f.Acts()
	}
	if js.report != nil {
		js.report(fieldOf(path), fs)
	}
}

// isDataURL reports whether s is inline base64 data (an image or audio part): scanning it finds nothing but
// noise.
func isDataURL(s string) bool {
	if !strings.HasPrefix(s, "data:") {
		return false
	}
	head, _, ok := strings.Cut(s[:min(len(s), 256)], ",")
	return ok && strings.HasSuffix(head, ";base64")
}

// byteString reads an array of byte values (the "bytes" of a log probability) as text.
func byteString(a []any) (string, bool) {
	b := make([]byte, 0, len(a))
	for _, e := range a {
		n, ok := e.(json.Number)
		if !ok {
			return "", false
		}
		i, err := n.Int64()
		if err != nil || i < 0 || i > 255 {
			return "", false
		}
		b = append(b, byte(i))
	}
	return string(b), true
}

// decodeJSON decodes raw keeping numbers as written.
func decodeJSON(raw json.RawMessage) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// encodeJSON encodes v as JSON without escaping HTML characters (which would change text nobody redacted).
func encodeJSON(v any) (json.RawMessage, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// scanRaw scans a raw JSON value; it returns the value to use instead (raw itself when nothing changed).
// A value that does not decode is replaced by null: what cannot be read cannot be judged.
func (js *jsonScan) scanRaw(raw json.RawMessage, path []string) json.RawMessage {
	v, err := decodeJSON(raw)
	if err != nil {
		js.changed = true
		return json.RawMessage("null")
	}
	before := js.changed
	js.changed = false
	v = js.value(v, path)
	changed := js.changed
	js.changed = before || changed
	if !changed {
		return raw
	}
	out, err := encodeJSON(v)
	if err != nil {
		return json.RawMessage("null")
	}
	return out
}

// object scans every member of o (names included); it returns the object to use instead and whether
// anything changed.
func (js *jsonScan) object(o chat.Object) (chat.Object, bool) {
	raw, err := json.Marshal(o)
	if err != nil {
		return o, false
	}
	js.changed = false
	nv := js.scanRaw(raw, nil)
	if !js.changed {
		return o, false
	}
	out, err := chat.ParseObject(nv)
	if err != nil {
		return chat.Object{}, true
	}
	return out, true
}

// members scans the members of o in place, names and values, except those named in skip. A member whose name
// holds a finding that acts is removed; a blocking finding in a value is scrubbed.
func (js *jsonScan) members(o chat.Object, skip ...string) {
	for k, raw := range o {
		if slices.Contains(skip, k) {
			continue
		}
		if js.found(k, []string{k}) {
			delete(o, k)
			continue
		}
		o[k] = js.scanRaw(raw, []string{k})
	}
}

// logprobText joins the tokens of a choice's log probabilities ("content" and "refusal" lists), so that a
// finding split across tokens is seen. A token whose bytes say something else adds those too.
func logprobText(lp map[string]any) string {
	var b strings.Builder
	for _, k := range []string{"content", "refusal"} {
		list, _ := lp[k].([]any)
		for _, e := range list {
			b.WriteString(entryText(e))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// entryText is the text of one log-probability entry: its token, and its bytes when they differ.
func entryText(e any) string {
	m, ok := e.(map[string]any)
	if !ok {
		return ""
	}
	tok, _ := m["token"].(string)
	if bs, ok := m["bytes"].([]any); ok {
		if s, ok := byteString(bs); ok && s != tok {
			return tok + s
		}
	}
	return tok
}
