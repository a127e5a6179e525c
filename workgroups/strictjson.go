package workgroups

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// maxJSONDepth bounds nesting in every document this package decodes; the
// deepest legitimate one (an advertisement) needs four levels.
const maxJSONDepth = 8

// decodeStrict decodes one JSON object into v, refusing anything that two
// parsers could read differently or that the schema does not name:
// invalid UTF-8 (encoding/json would silently replace it), keys that are not
// lower-case snake_case (encoding/json matches field names
// case-insensitively), duplicate keys (encoding/json keeps the last), unknown
// fields, nesting deeper than maxJSONDepth, and anything after the object.
func decodeStrict(what string, data []byte, maxBytes int, v any) error {
	if len(data) > maxBytes {
		return fmt.Errorf("%w: %s: %d bytes, limit %d", ErrTooLarge, what, len(data), maxBytes)
	}
	if !utf8.Valid(data) {
		return fmt.Errorf("%w: %s: not valid UTF-8", ErrMalformed, what)
	}
	if err := checkJSONKeys(data); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	if rest := data[dec.InputOffset():]; len(bytes.TrimLeft(rest, " \t\r\n")) != 0 {
		return fmt.Errorf("%w: %s: data after the JSON object", ErrMalformed, what)
	}
	return nil
}

type jsonFrame struct {
	object    bool
	expectKey bool
	keys      map[string]struct{}
}

// checkJSONKeys walks the token stream of data, which must be a single JSON
// object, and checks the key rules described at decodeStrict.
func checkJSONKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var stack []jsonFrame
	started := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			if len(stack) != 0 || !started {
				return io.ErrUnexpectedEOF
			}
			return nil
		}
		if err != nil {
			return err
		}
		if !started {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return errors.New("want a JSON object")
			}
			started = true
			stack = append(stack, jsonFrame{object: true, expectKey: true})
			continue
		}
		if len(stack) == 0 {
			return errors.New("data after the JSON object")
		}
		top := &stack[len(stack)-1]
		if top.object && top.expectKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				valueDone(stack)
				continue
			}
			key, ok := tok.(string)
			if !ok {
				return errors.New("want an object key")
			}
			if !validJSONKey(key) {
				return fmt.Errorf("key %q is not lower-case snake_case", clip(key))
			}
			if top.keys == nil {
				top.keys = make(map[string]struct{}, 8)
			}
			if _, dup := top.keys[key]; dup {
				return fmt.Errorf("duplicate key %q", key)
			}
			top.keys[key] = struct{}{}
			top.expectKey = false
			continue
		}
		switch d, _ := tok.(json.Delim); d {
		case '{', '[':
			if len(stack) >= maxJSONDepth {
				return fmt.Errorf("nesting deeper than %d", maxJSONDepth)
			}
			stack = append(stack, jsonFrame{object: d == '{', expectKey: d == '{'})
		case ']':
			stack = stack[:len(stack)-1]
			valueDone(stack)
		default:
			valueDone(stack)
		}
	}
}

// valueDone records that the object at the top of stack (if any) has read a
// complete value and now expects a key.
func valueDone(stack []jsonFrame) {
	if n := len(stack); n > 0 && stack[n-1].object {
		stack[n-1].expectKey = true
	}
}

func validJSONKey(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}
