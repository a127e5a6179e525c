package workgroups

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Length limits for names and message types.
const (
	MaxNameLen          = 63  // organisation, workgroup, kind and workload names
	MaxMessageTypeLen   = 128 // a whole message type or pattern
	maxTypeSegments     = 16
	maxTypeSegmentLen   = 64
	typePatternWildcard = ".*"
)

// ValidateName reports whether s is a valid organisation, workgroup or
// identity name: 1 to 63 bytes of lower-case ASCII letters, digits, '-' and
// '_', starting with a letter and not ending with '-' or '_'. Names are also
// valid SPIFFE path segments and Cedar entity IDs without escaping.
func ValidateName(s string) error {
	if !validName(s) {
		return fmt.Errorf("%w: name %q: want 1-%d of [a-z0-9_-], starting with a letter", ErrInvalid, clip(s), MaxNameLen)
	}
	return nil
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	if c := s[0]; c < 'a' || c > 'z' {
		return false
	}
	if c := s[len(s)-1]; c == '-' || c == '_' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// ValidateMessageType reports whether t is a valid concrete message type: one
// to 16 dot-separated segments of [a-z0-9_-] (each starting with a letter or
// digit), at most 128 bytes in all, for example "quote.request".
func ValidateMessageType(t string) error {
	if !validMessageType(t) {
		return fmt.Errorf("%w: message type %q: want dot-separated segments of [a-z0-9_-], at most %d bytes", ErrInvalid, clip(t), MaxMessageTypeLen)
	}
	return nil
}

// ValidateTypePattern reports whether p is a valid entry of an allowed
// message type list: a concrete type ("quote.request") or a prefix pattern
// ("quote.*", matching every type that starts with "quote."). A bare "*" is
// not accepted: a contract always names what it allows.
func ValidateTypePattern(p string) error {
	if len(p) > MaxMessageTypeLen {
		return fmt.Errorf("%w: message type pattern %q longer than %d bytes", ErrInvalid, clip(p), MaxMessageTypeLen)
	}
	if prefix, ok := strings.CutSuffix(p, typePatternWildcard); ok {
		if !validMessageType(prefix) {
			return fmt.Errorf("%w: message type pattern %q: prefix must be a valid message type", ErrInvalid, clip(p))
		}
		return nil
	}
	return ValidateMessageType(p)
}

func validMessageType(t string) bool {
	if len(t) == 0 || len(t) > MaxMessageTypeLen {
		return false
	}
	segments := 0
	for seg := range strings.SplitSeq(t, ".") {
		segments++
		if segments > maxTypeSegments || len(seg) == 0 || len(seg) > maxTypeSegmentLen {
			return false
		}
		if c := seg[0]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
		for i := 1; i < len(seg); i++ {
			c := seg[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// TypeAllowed reports whether the concrete message type t is matched by an
// entry of patterns: an equal concrete type, or a pattern "p.*" with t
// starting with "p.". Invalid entries match nothing.
func TypeAllowed(patterns []string, t string) bool {
	if !validMessageType(t) {
		return false
	}
	for _, p := range patterns {
		if prefix, ok := strings.CutSuffix(p, typePatternWildcard); ok {
			if validMessageType(prefix) && strings.HasPrefix(t, prefix) && len(t) > len(prefix) && t[len(prefix)] == '.' {
				return true
			}
			continue
		}
		if p == t {
			return true
		}
	}
	return false
}

// patternCovered reports whether every type matched by the requested entry
// req is also matched by offered: a concrete type as in [TypeAllowed]; a
// pattern "q.*" only by an offered "q.*" or a broader prefix "p.*" where q
// starts with "p.".
func patternCovered(offered []string, req string) bool {
	q, isPattern := strings.CutSuffix(req, typePatternWildcard)
	if !isPattern {
		return TypeAllowed(offered, req)
	}
	if !validMessageType(q) {
		return false
	}
	for _, o := range offered {
		p, ok := strings.CutSuffix(o, typePatternWildcard)
		if !ok || !validMessageType(p) {
			continue
		}
		if q == p || strings.HasPrefix(q, p) && q[len(p)] == '.' {
			return true
		}
	}
	return false
}

// Identity is a workload SPIFFE ID decomposed by the Umbra naming scheme
// spiffe://<trust-domain>/<org>/<kind>/<name>, for example
// spiffe://acme.example/acme/agent/pricer.
//
// The organisation is read from the path. Which trust domains may speak for
// which organisation is decided where trust bundles are configured (see
// [Organisation.Owns]); this package only checks the shape.
type Identity struct {
	ID   spiffeid.ID
	Org  string
	Kind string // "agent", "mcp", "llm", ...; any valid name
	Name string
}

// ParseIdentity decomposes id. It fails unless the path is exactly three
// segments that are each a valid name (see [ValidateName]).
func ParseIdentity(id spiffeid.ID) (Identity, error) {
	if id.IsZero() {
		return Identity{}, fmt.Errorf("%w: identity: empty SPIFFE ID", ErrInvalid)
	}
	path := id.Path()
	segs := strings.SplitN(strings.TrimPrefix(path, "/"), "/", 4)
	if len(segs) != 3 || !strings.HasPrefix(path, "/") {
		return Identity{}, fmt.Errorf("%w: identity %q: want spiffe://<trust-domain>/<org>/<kind>/<name>", ErrInvalid, clip(id.String()))
	}
	for _, s := range segs {
		if !validName(s) {
			return Identity{}, fmt.Errorf("%w: identity %q: segment %q is not a valid name", ErrInvalid, clip(id.String()), clip(s))
		}
	}
	return Identity{ID: id, Org: segs[0], Kind: segs[1], Name: segs[2]}, nil
}

// orgOf returns the organisation of id, or "" when id is not a valid identity.
func orgOf(id spiffeid.ID) string {
	ident, err := ParseIdentity(id)
	if err != nil {
		return ""
	}
	return ident.Org
}

// Organisation is a tenant: a name and the trust domain whose SVIDs speak
// for it.
type Organisation struct {
	Name        string               `json:"name"`
	TrustDomain spiffeid.TrustDomain `json:"trust_domain"`
}

// Validate checks the name and that a trust domain is set.
func (o Organisation) Validate() error {
	if err := ValidateName(o.Name); err != nil {
		return fmt.Errorf("organisation: %w", err)
	}
	if o.TrustDomain.IsZero() {
		return fmt.Errorf("%w: organisation %s: no trust domain", ErrInvalid, o.Name)
	}
	return nil
}

// Owns reports whether id is a valid identity of this organisation: issued
// in its trust domain, with its name as the first path segment.
func (o Organisation) Owns(id spiffeid.ID) bool {
	ident, err := ParseIdentity(id)
	return err == nil && !o.TrustDomain.IsZero() && id.MemberOf(o.TrustDomain) && ident.Org == o.Name
}

// checkText validates free text: valid UTF-8, at most max bytes, no control
// characters (newlines and tabs only when multiline), and non-empty when
// required.
func checkText(field, s string, max int, required, multiline bool) error {
	if s == "" {
		if required {
			return fmt.Errorf("%w: %s is required", ErrInvalid, field)
		}
		return nil
	}
	if len(s) > max {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, field, max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, field)
	}
	for _, r := range s {
		if multiline && (r == '\n' || r == '\t') {
			continue
		}
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return fmt.Errorf("%w: %s contains control character %U", ErrInvalid, field, r)
		}
	}
	return nil
}

// clip shortens untrusted input before it is quoted in an error message.
func clip(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
