// Package redact removes secrets from text and JSON before they are logged or recorded: values of members
// whose names say they hold a secret (password, token, api_key, authorization, ...) and strings that look like
// one wherever they appear (bearer tokens, private keys, provider API keys, JWTs, credentials in URLs).
package redact

import (
	"encoding/json"
	"regexp"
	"strings"
)

// Mask replaces what was removed.
const Mask = "[REDACTED]"

var secretName = regexp.MustCompile(`(?i)(pass(word|wd|phrase)?|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|auth(orization)?|credential|cookie|session[_-]?id|client[_-]?secret|signature)$|^(pass(word|wd)?|pwd|secret|token|authorization|cookie)`)

var secretValues = []*regexp.Regexp{
	regexp.MustCompile(`-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|$)`),
	regexp.MustCompile(`(?i)\b(bearer|basic|token)\s+[A-Za-z0-9\-._~+/]{8,}=*`),
	regexp.MustCompile(`\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*`), // JWT
	regexp.MustCompile(`\b(sk|pk|rk)-(proj-|ant-|live-|test-)?[A-Za-z0-9_-]{16,}`),  // OpenAI, Anthropic, Stripe style
	regexp.MustCompile(`\b(AKIA|ASIA)[0-9A-Z]{16}\b`),                               // AWS access key ID
	regexp.MustCompile(`\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}\b`),
	regexp.MustCompile(`\bxox[abprs]-[A-Za-z0-9-]{10,}`), // Slack
	regexp.MustCompile(`\bAIza[0-9A-Za-z_-]{35}\b`),      // Google API key
	regexp.MustCompile(`(?i)\b(password|passwd|pwd|secret|api[_-]?key|token)\s*[=:]\s*[^\s,;&"']{4,}`),
}

// userinfo in URLs: scheme://user:password@host
var urlCredentials = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@`)

// String returns s with secret-looking substrings masked.
func String(s string) string {
	for _, re := range secretValues {
		s = re.ReplaceAllString(s, Mask)
	}
	return urlCredentials.ReplaceAllString(s, "${1}"+Mask+"@")
}

// SecretName reports whether a member name says its value is a secret.
func SecretName(name string) bool {
	n := strings.ToLower(strings.TrimSpace(name))
	if n == "" || n == "tokens" || strings.HasSuffix(n, "_tokens") || strings.HasSuffix(n, "max_tokens") {
		return false // token counts, not tokens
	}
	return secretName.MatchString(n)
}

// JSON returns the document b with secrets masked: every value of a member with a secret name, and secret-looking
// substrings of every other string. Input that is not JSON is treated as text.
func JSON(b []byte) []byte {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return []byte(String(string(b)))
	}
	out, err := json.Marshal(Value(v))
	if err != nil {
		return []byte(`"` + Mask + `"`)
	}
	return out
}

// Value returns a copy of the decoded JSON value v (maps, slices, strings, numbers, bools, nil) with secrets
// masked.
func Value(v any) any {
	return value(v, 0)
}

func value(v any, depth int) any {
	if depth > 64 {
		return Mask
	}
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			if SecretName(k) {
				if e == nil {
					out[k] = nil
				} else {
					out[k] = Mask
				}
				continue
			}
			out[k] = value(e, depth+1)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = value(e, depth+1)
		}
		return out
	case string:
		return String(t)
	default:
		return v
	}
}
