package authz

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/cedar-policy/cedar-go"
)

// Bounds on a declared intent.
const (
	MaxIntentPurpose  = 256 // bytes of UTF-8
	MaxIntentCategory = 64  // bytes
	maxIntentJSON     = 1024
)

// ErrInvalidIntent is what every intent parsing and validation error wraps.
var ErrInvalidIntent = errors.New("invalid intent")

// Intent is the purpose a caller declares for what it asks: a proposal, an envelope, a tool call or a model
// call. Policies see it as context.intent, a record {purpose: String, category: String} present only when an
// intent was declared (category is "" when none was given), so `context has intent` asks whether one was, and
// `context.intent.category == "exfiltration"` needs no further test. The audit records it as given.
//
// Purpose is free text for people: 1 to MaxIntentPurpose bytes of UTF-8, not only white space, with no control
// or format characters (no line breaks, no bidirectional overrides), so that it prints on one line as written.
// Category is optional and is what policy and contracts match on: lower-case dot-separated words of letters,
// digits and '-' ("research", "support.billing", "data-export"), at most MaxIntentCategory bytes.
type Intent struct {
	Purpose  string `json:"purpose"`
	Category string `json:"category,omitempty"`
}

// Validate checks the purpose and the category as [Intent] describes them.
func (i Intent) Validate() error {
	if err := validatePurpose(i.Purpose); err != nil {
		return err
	}
	if i.Category != "" {
		return ValidateIntentCategory(i.Category)
	}
	return nil
}

func validatePurpose(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("%w: purpose is empty; say in a few words why", ErrInvalidIntent)
	case len(p) > MaxIntentPurpose:
		return fmt.Errorf("%w: purpose is %d bytes; at most %d are allowed", ErrInvalidIntent, len(p), MaxIntentPurpose)
	case !utf8.ValidString(p):
		return fmt.Errorf("%w: purpose is not valid UTF-8", ErrInvalidIntent)
	case strings.TrimSpace(p) == "":
		return fmt.Errorf("%w: purpose is only white space", ErrInvalidIntent)
	}
	for _, r := range p {
		if r < utf8.RuneSelf {
			if r < 0x20 || r == 0x7f {
				return fmt.Errorf("%w: purpose contains the control character %U; write it on one line", ErrInvalidIntent, r)
			}
			continue
		}
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("%w: purpose contains the control or format character %U; write it on one line", ErrInvalidIntent, r)
		}
	}
	return nil
}

// ValidateIntentCategory checks a category: lower-case words of [a-z0-9-], each starting with a letter, joined
// by single dots, at most MaxIntentCategory bytes.
func ValidateIntentCategory(c string) error {
	if c == "" || len(c) > MaxIntentCategory {
		return fmt.Errorf("%w: category must be 1 to %d bytes", ErrInvalidIntent, MaxIntentCategory)
	}
	wordStart := true
	for j := 0; j < len(c); j++ {
		b := c[j]
		var ok bool
		switch {
		case wordStart:
			ok, wordStart = b >= 'a' && b <= 'z', false
		case b == '.':
			ok, wordStart = j < len(c)-1, true
		default:
			ok = b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '-'
		}
		if !ok {
			return fmt.Errorf("%w: category %q: want lower-case words of a-z, 0-9 and '-' joined by dots, such as \"support.billing\"",
				ErrInvalidIntent, clipIntent(c))
		}
	}
	return nil
}

// ParseIntentJSON decodes and validates an intent given as a JSON object {"purpose":..., "category":...}, as
// MCP clients put it in a request's _meta. Unknown fields are refused.
func ParseIntentJSON(b []byte) (Intent, error) {
	if len(b) > maxIntentJSON {
		return Intent{}, fmt.Errorf("%w: %d bytes of JSON; at most %d are allowed", ErrInvalidIntent, len(b), maxIntentJSON)
	}
	var i Intent
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&i); err != nil {
		return Intent{}, fmt.Errorf("%w: want a JSON object {\"purpose\": ..., \"category\": ...}: %v", ErrInvalidIntent, oneLine(err.Error()))
	}
	if _, err := dec.Token(); err != io.EOF {
		return Intent{}, fmt.Errorf("%w: data after the JSON object", ErrInvalidIntent)
	}
	if err := i.Validate(); err != nil {
		return Intent{}, err
	}
	return i, nil
}

// ParseIntentHeader reads an intent from the two HTTP header values that carry it: purpose, percent-encoded
// UTF-8 (a literal '%' is written "%25"; see [Intent.HeaderValue]), and category. Both empty means no intent
// (nil, nil); a category without a purpose is refused.
func ParseIntentHeader(purpose, category string) (*Intent, error) {
	if purpose == "" && category == "" {
		return nil, nil
	}
	p, err := url.PathUnescape(purpose)
	if err != nil {
		return nil, fmt.Errorf("%w: purpose is not valid percent-encoding (write a literal %% as %%25)", ErrInvalidIntent)
	}
	i := Intent{Purpose: p, Category: category}
	if err := i.Validate(); err != nil {
		return nil, err
	}
	return &i, nil
}

// HeaderValue is the purpose as an HTTP header value: percent-encoding every byte outside printable ASCII, and
// '%' itself, so [ParseIntentHeader] reads back the same purpose.
func (i Intent) HeaderValue() string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for j := 0; j < len(i.Purpose); j++ {
		c := i.Purpose[j]
		if c < 0x20 || c >= 0x7f || c == '%' {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Value is the intent as policies see it: {purpose, category}, category "" when none was declared.
func (i Intent) Value() cedar.Record {
	return cedar.NewRecord(cedar.RecordMap{"purpose": cedar.String(i.Purpose), "category": cedar.String(i.Category)})
}

// WithIntent sets ctx's "intent" to i's [Intent.Value] when i is declared (not nil), and returns ctx (a new
// map when ctx is nil).
func WithIntent(ctx cedar.RecordMap, i *Intent) cedar.RecordMap {
	if i == nil {
		return ctx
	}
	if ctx == nil {
		ctx = cedar.RecordMap{}
	}
	ctx["intent"] = i.Value()
	return ctx
}

func clipIntent(s string) string {
	if len(s) > MaxIntentCategory {
		s = s[:MaxIntentCategory] + "..."
	}
	return s
}
