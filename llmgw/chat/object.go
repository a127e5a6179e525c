// Package chat reads and rewrites OpenAI chat-completion and embedding bodies (requests, responses and stream
// chunks) as JSON objects, so that fields it does not know pass through untouched.
package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Object is a JSON object whose members are kept as raw JSON, so that re-encoding it loses nothing.
type Object map[string]json.RawMessage

// ParseObject decodes b, which must hold exactly one JSON object.
func ParseObject(b []byte) (Object, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	var o Object
	if err := dec.Decode(&o); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if o == nil {
		return nil, errors.New("not a JSON object: null")
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON object")
	}
	return o, nil
}

// Encode returns the compact JSON encoding of o.
func (o Object) Encode() ([]byte, error) {
	return json.Marshal(o)
}

// Str returns member k if it is a JSON string, else "".
func (o Object) Str(k string) string {
	var s string
	if raw, ok := o[k]; ok && json.Unmarshal(raw, &s) == nil {
		return s
	}
	return ""
}

// Bool returns member k if it is a JSON boolean, else false.
func (o Object) Bool(k string) bool {
	var b bool
	if raw, ok := o[k]; ok && json.Unmarshal(raw, &b) == nil {
		return b
	}
	return false
}

// Int returns member k if it is a JSON integer.
func (o Object) Int(k string) (int64, bool) {
	var n int64
	if raw, ok := o[k]; ok && json.Unmarshal(raw, &n) == nil {
		return n, true
	}
	return 0, false
}

// Obj returns member k if it is a JSON object, else nil.
func (o Object) Obj(k string) Object {
	var v Object
	if raw, ok := o[k]; ok && json.Unmarshal(raw, &v) == nil {
		return v
	}
	return nil
}

// Objs returns member k if it is an array of JSON objects (elements that are not objects are nil).
func (o Object) Objs(k string) []Object {
	var raws []json.RawMessage
	if raw, ok := o[k]; !ok || json.Unmarshal(raw, &raws) != nil {
		return nil
	}
	out := make([]Object, len(raws))
	for i, r := range raws {
		_ = json.Unmarshal(r, &out[i])
	}
	return out
}

// IsNull reports whether member k is absent or null.
func (o Object) IsNull(k string) bool {
	raw, ok := o[k]
	return !ok || string(bytes.TrimSpace(raw)) == "null"
}

// Set sets member k to the JSON encoding of v. A value that does not encode removes the member.
func (o Object) Set(k string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		delete(o, k)
		return
	}
	o[k] = b
}

// Clone returns a shallow copy of o (raw members are shared; they are never modified in place).
func (o Object) Clone() Object {
	c := make(Object, len(o))
	for k, v := range o {
		c[k] = v
	}
	return c
}

// Usage is what a call cost in tokens.
type Usage struct {
	Input  int64 `json:"input_tokens"`
	Output int64 `json:"output_tokens"`
}

// Total returns input plus output tokens.
func (u Usage) Total() int64 { return u.Input + u.Output }

// UsageOf reads the "usage" member of a completion, chunk or embeddings response.
func UsageOf(o Object) (Usage, bool) {
	u := o.Obj("usage")
	if u == nil {
		return Usage{}, false
	}
	in, ok1 := u.Int("prompt_tokens")
	out, ok2 := u.Int("completion_tokens")
	if !ok1 && !ok2 {
		return Usage{}, false
	}
	return Usage{Input: max(in, 0), Output: max(out, 0)}, true
}

// UsageObject is the OpenAI "usage" member for u.
func UsageObject(u Usage) Object {
	o := Object{}
	o.Set("prompt_tokens", u.Input)
	o.Set("completion_tokens", u.Output)
	o.Set("total_tokens", u.Total())
	return o
}
