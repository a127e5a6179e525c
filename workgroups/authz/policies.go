package authz

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"iter"
	"regexp"
	"strconv"
	"strings"

	"github.com/cedar-policy/cedar-go"
)

// Options say how [Parse] names and restricts the policies of a text.
type Options struct {
	// Prefix, when set, makes every policy ID "<Prefix>/<@id or index>"; unset, IDs are the @id annotation, or
	// "policy<index>" for a policy without one.
	Prefix string
	// ForbidOnly refuses permit policies: for texts that may only take permissions away.
	ForbidOnly bool
	// Check, when set, is called on every policy; its error (one line, without position) refuses the text.
	Check func(p *cedar.Policy) error
}

// Policies is a parsed, validated policy text. It is immutable and safe for concurrent use.
type Policies struct {
	set     *cedar.PolicySet
	version string
	n       int
}

// Parse parses Cedar policy text from file (the name errors show). An empty text holds no policies. Errors are
// one line: "<file>:<line>[:<col>]: what is wrong".
func Parse(file, text string, o Options) (*Policies, error) {
	list, err := cedar.NewPolicyListFromBytes(file, []byte(text))
	if err != nil {
		return nil, parseError(file, err)
	}
	p := &Policies{set: cedar.NewPolicySet(), n: len(list)}
	for i, pol := range list {
		line := pol.Position().Line
		if o.ForbidOnly && pol.Effect() != cedar.Forbid {
			return nil, fmt.Errorf("%s:%d: only forbid policies may be added here; the built-in policies grant every permission", file, line)
		}
		name, named := "", false
		if v, ok := pol.Annotations()["id"]; ok {
			name, named = string(v), true
			if !ValidPolicyID(name) {
				return nil, fmt.Errorf("%s:%d: @id %q: want 1-64 of [A-Za-z0-9._-]", file, line, clip(name))
			}
		}
		id := name
		switch {
		case o.Prefix != "" && named:
			id = o.Prefix + "/" + name
		case o.Prefix != "":
			id = o.Prefix + "/" + strconv.Itoa(i)
		case !named:
			id = "policy" + strconv.Itoa(i)
		}
		if o.Check != nil {
			if err := o.Check(pol); err != nil {
				return nil, fmt.Errorf("%s:%d: %s", file, line, oneLine(err.Error()))
			}
		}
		if !p.set.Add(cedar.PolicyID(id), pol) {
			return nil, fmt.Errorf("%s:%d: policy id %q used twice", file, line, id)
		}
	}
	sum := sha256.Sum256([]byte(text))
	p.version = "sha256:" + hex.EncodeToString(sum[:12])
	return p, nil
}

// MustParse is Parse for built-in policy texts, which are constants: it panics on an error.
func MustParse(file, text string, o Options) *Policies {
	p, err := Parse(file, text, o)
	if err != nil {
		panic(err)
	}
	return p
}

var cedarPos = regexp.MustCompile(`(?:at )?<input>:(\d+):(\d+)\s*`)

// parseError turns cedar-go's "parser error: parse error at <input>:3:25 ..." into "file:3:25: parse error ...".
func parseError(file string, err error) error {
	msg := oneLine(err.Error())
	msg = strings.TrimPrefix(msg, "parser error: ")
	if m := cedarPos.FindStringSubmatchIndex(msg); m != nil {
		line, col := msg[m[2]:m[3]], msg[m[4]:m[5]]
		rest := strings.TrimSpace(msg[:m[0]] + msg[m[1]:])
		return fmt.Errorf("%s:%s:%s: %s", file, line, col, rest)
	}
	return fmt.Errorf("%s: %s", file, msg)
}

// Version names the text: "sha256:" and the first 12 bytes of its digest, in hex.
func (p *Policies) Version() string {
	if p == nil {
		return ""
	}
	return p.version
}

// Len is the number of policies.
func (p *Policies) Len() int {
	if p == nil {
		return 0
	}
	return p.n
}

// Annotation returns the value of annotation key on the policy with id, and whether it has one.
func (p *Policies) Annotation(id, key string) (string, bool) {
	if p == nil {
		return "", false
	}
	pol := p.set.Get(cedar.PolicyID(id))
	if pol == nil {
		return "", false
	}
	for k, v := range pol.Annotations() {
		if string(k) == key {
			return string(v), true
		}
	}
	return "", false
}

// All yields every policy with its ID (cedar.PolicyIterator).
func (p *Policies) All() iter.Seq2[cedar.PolicyID, *cedar.Policy] {
	return func(yield func(cedar.PolicyID, *cedar.Policy) bool) {
		if p == nil {
			return
		}
		for id, pol := range p.set.All() {
			if !yield(id, pol) {
				return
			}
		}
	}
}

// ValidPolicyID reports whether s may name a policy: 1-64 of [A-Za-z0-9._-], so that it fits one line of a
// reason and of an audit record.
func ValidPolicyID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// oneLine folds s onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
