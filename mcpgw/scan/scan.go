// Package scan looks for prompt-injection patterns in the text of MCP tool definitions: hidden instructions
// addressed to the model, requests to read secrets or send data away, attempts to steer other tools, and
// unicode tricks that hide text from a human reviewer (invisible and bidirectional controls, look-alike
// letters from other scripts).
//
// A finding does not prove malice; it means a human should read the definition before any model does.
// The scanner is deliberately simple and fast: lower-cased text, look-alike letters folded to Latin,
// whitespace collapsed, then a table of patterns.
package scan

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Rule names what a finding matched.
type Rule string

// The rules.
const (
	HiddenInstruction Rule = "hidden-instruction" // text addressed to the model rather than describing the tool
	SecretAccess      Rule = "secret-access"      // asks to read keys, credentials or configuration
	Exfiltration      Rule = "exfiltration"       // asks to send data elsewhere or smuggle it through arguments
	ToolShadowing     Rule = "tool-shadowing"     // tries to change how other tools are used
	InvisibleText     Rule = "invisible-text"     // zero-width, bidirectional or tag characters, hidden padding
	Homoglyph         Rule = "homoglyph"          // a word mixing Latin with look-alike letters of another script
	EncodedPayload    Rule = "encoded-payload"    // a long base64 or hex blob
)

// Finding is one match.
type Finding struct {
	Rule   Rule   `json:"rule"`
	Field  string `json:"field,omitempty"` // where: "description", "inputSchema.properties.path.description", ...
	Detail string `json:"detail"`
}

func (f Finding) String() string {
	if f.Field == "" {
		return fmt.Sprintf("%s: %s", f.Rule, f.Detail)
	}
	return fmt.Sprintf("%s in %s: %s", f.Rule, f.Field, f.Detail)
}

type pattern struct {
	rule Rule
	re   *regexp.Regexp
}

// Scanner holds the compiled patterns; it is safe for concurrent use.
type Scanner struct {
	patterns []pattern
}

// New compiles the built-in patterns.
func New() *Scanner {
	s := &Scanner{}
	add := func(r Rule, exprs ...string) {
		for _, e := range exprs {
			s.patterns = append(s.patterns, pattern{r, regexp.MustCompile(e)})
		}
	}
	add(HiddenInstruction,
		`\b(ignore|disregard|forget|override)\b.{0,30}\b(previous|prior|above|earlier|all|other|your|system)\b.{0,20}\b(instructions?|prompts?|rules?|directions?|guidelines?)\b`,
		`<\s*/?\s*(important|system|instructions?|secret|hidden|admin)\s*>`,
		`\[\s*/?\s*(inst|system)\s*\]`,
		`<!--`,
		`\b(do not|don't|never)\b.{0,20}\b(tell|inform|mention|reveal|notify|alert|show)\b.{0,20}\b(the )?(user|human|operator)\b`,
		`\bwithout\b.{0,15}\b(telling|informing|asking|notifying|alerting)\b.{0,15}\b(the )?(user|human|operator)\b`,
		`\b(the )?user (must|should) not (know|see|be told)\b`,
		`\byou (must|should|are required to|have to)\b.{0,40}\b(secretly|silently|quietly|covertly|first (read|call|send|fetch|pass|upload))\b`,
		`\bbefore (using|calling|invoking) (this|any) tool\b`,
		`\b(new|updated|real|actual) (system )?instructions?\b`,
		`\bsystem prompt\b`,
		`\bthis is (very |extremely )?important\b.{0,40}\b(must|otherwise|or else)\b`,
	)
	add(SecretAccess,
		`~/\.ssh|\.ssh/|\bid_(rsa|dsa|ecdsa|ed25519)\b`,
		`\.aws/credentials|\.netrc\b|\.npmrc\b|\.pypirc\b|\.docker/config\.json|\.kube/config`,
		`(^|[\s'"/])\.env\b`,
		`/etc/(passwd|shadow|sudoers)`,
		`\bmcp\.json\b|claude_desktop_config|\.cursor/`,
		`\b(read|cat|open|load|print|include|fetch|get|access|copy)\b.{0,40}\b(private keys?|ssh keys?|api[ _-]?keys?|credentials?|passwords?|secrets?|(access|auth|bearer|api|session) tokens?|cookies?)\b`,
	)
	add(Exfiltration,
		`\b(send|post|upload|forward|transmit|exfiltrate|leak|submit|beacon|report)\b.{0,60}\b(to|at|via)\b.{0,20}(https?://|ftp://|wss?://|\b\d{1,3}(\.\d{1,3}){3}\b|webhook)`,
		`\b(curl|wget|nc|netcat)\s+(-\S+\s+)*(https?://|\S+\.\S+)`,
		`\b(include|put|place|embed|append|pass|add)\b.{0,50}\b(contents?|conversation|chat history|previous messages|file|secrets?|keys?)\b.{0,50}\b(in|into|as)\b.{0,20}\b(the )?(argument|parameter|field|sidenote|note|notes|metadata|query|url)\b`,
		`\b(conversation|chat) history\b`,
		`\bexfiltrat`,
	)
	add(ToolShadowing,
		`\bwhen (the )?(user|you|assistant|agent|model) (calls?|uses?|invokes?|runs?)\b.{0,40}\btool\b`,
		`\binstead of (using |calling )?(the )?\S+ tool\b`,
		`\b(all|any|every) (other )?(emails?|messages?|requests?|calls?)\b.{0,40}\b(must|should) (be )?(sent|redirected|forwarded|bcc)`,
		`\b(change|modify|replace|redirect) the (recipient|destination|address|account|url)\b`,
		`\bother tools?\b.{0,30}\b(must|should|will)\b`,
	)
	return s
}

var (
	blobRE  = regexp.MustCompile(`[A-Za-z0-9+/]{120,}={0,2}|\b[0-9a-fA-F]{128,}\b`)
	spaceRE = regexp.MustCompile(`\s+`)
)

// Text scans one piece of text. field names it in findings.
func (s *Scanner) Text(field, text string) []Finding {
	var out []Finding
	add := func(r Rule, detail string) {
		f := Finding{Rule: r, Field: field, Detail: detail}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	if !utf8.ValidString(text) {
		add(InvisibleText, "not valid UTF-8")
		text = strings.ToValidUTF8(text, "\uFFFD")
	}
	if d := invisible(text); d != "" {
		add(InvisibleText, d)
	}
	if d := padding(text); d != "" {
		add(InvisibleText, d)
	}
	if w := mixedScriptWord(text); w != "" {
		add(Homoglyph, fmt.Sprintf("word %q mixes Latin with look-alike letters", clip(w)))
	}
	if m := blobRE.FindString(text); m != "" {
		add(EncodedPayload, fmt.Sprintf("%d-character encoded blob", len(m)))
	}
	norm := normalize(text)
	for _, p := range s.patterns {
		if m := p.re.FindString(norm); m != "" {
			add(p.rule, fmt.Sprintf("matched %q", clip(m)))
		}
	}
	return out
}

// Definition scans a tool (or prompt, or resource) definition given as JSON: every string under the keys
// "title", "description" and "name" anywhere in it, which covers the tool's own text, its annotations and the
// descriptions of its schema properties. Property names in schemas are scanned too: they reach the model.
func (s *Scanner) Definition(def json.RawMessage) []Finding {
	var v any
	if err := json.Unmarshal(def, &v); err != nil {
		return []Finding{{Rule: HiddenInstruction, Detail: "definition is not valid JSON"}}
	}
	var out []Finding
	walk(v, "", 0, func(field, text string) {
		for _, f := range s.Text(field, text) {
			if !slices.Contains(out, f) {
				out = append(out, f)
			}
		}
	})
	return out
}

func walk(v any, path string, depth int, visit func(field, text string)) {
	if depth > 32 {
		return
	}
	switch t := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			p := join(path, k)
			switch child := t[k].(type) {
			case string:
				switch k {
				case "title", "description", "name", "const", "default", "examples", "pattern":
					visit(p, child)
				}
			default:
				walk(child, p, depth+1, visit)
			}
			if strings.HasSuffix(path, "properties") {
				visit(p, k) // a property name is text the model reads
			}
		}
	case []any:
		for i, e := range t {
			p := fmt.Sprintf("%s[%d]", path, i)
			if s, ok := e.(string); ok {
				visit(p, s)
				continue
			}
			walk(e, p, depth+1, visit)
		}
	}
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// invisible reports characters a reviewer cannot see: format characters (zero-width, bidirectional controls,
// the soft hyphen, tag characters), private-use characters and control characters other than common whitespace.
func invisible(text string) string {
	for _, r := range text {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			continue
		case unicode.Is(unicode.Cf, r), unicode.Is(unicode.Co, r), unicode.IsControl(r),
			r >= 0xE0000 && r <= 0xE007F, r == 0x115F || r == 0x1160 || r == 0x3164 || r == 0xFFA0:
			return fmt.Sprintf("invisible character U+%04X", r)
		}
	}
	return ""
}

// padding reports runs of whitespace long enough to push text out of a reviewer's view.
func padding(text string) string {
	newlines, spaces := 0, 0
	for _, r := range text {
		switch {
		case r == '\n':
			newlines++
			spaces = 0
		case unicode.IsSpace(r):
			spaces++
		default:
			newlines, spaces = 0, 0
		}
		if newlines >= 12 || spaces >= 80 {
			return "long run of whitespace hides what follows"
		}
	}
	return ""
}

// confusables maps Cyrillic and Greek letters that look like Latin ones to those Latin letters.
var confusables = map[rune]rune{
	'а': 'a', 'в': 'b', 'с': 'c', 'е': 'e', 'һ': 'h', 'і': 'i', 'ј': 'j', 'к': 'k', 'м': 'm', 'н': 'h', 'о': 'o',
	'р': 'p', 'ԛ': 'q', 'ѕ': 's', 'т': 't', 'у': 'y', 'х': 'x', 'ԝ': 'w', 'ӏ': 'l', 'ё': 'e', 'ї': 'i',
	'А': 'a', 'В': 'b', 'С': 'c', 'Е': 'e', 'Н': 'h', 'І': 'i', 'Ј': 'j', 'К': 'k', 'М': 'm', 'О': 'o', 'Р': 'p',
	'Ѕ': 's', 'Т': 't', 'Х': 'x', 'У': 'y',
	'α': 'a', 'β': 'b', 'ε': 'e', 'ι': 'i', 'κ': 'k', 'ν': 'v', 'ο': 'o', 'ρ': 'p', 'τ': 't', 'υ': 'u', 'χ': 'x',
	'Α': 'a', 'Β': 'b', 'Ε': 'e', 'Η': 'h', 'Ι': 'i', 'Κ': 'k', 'Μ': 'm', 'Ν': 'n', 'Ο': 'o', 'Ρ': 'p', 'Τ': 't',
	'Υ': 'y', 'Χ': 'x', 'Ζ': 'z',
	'ı': 'i', 'ℓ': 'l', '０': '0', '１': '1',
}

// mixedScriptWord returns the first word that mixes Latin letters with letters of another script that look
// like Latin ones, the usual way of spelling a trigger phrase so that a filter misses it.
func mixedScriptWord(text string) string {
	for _, w := range strings.FieldsFunc(text, func(r rune) bool { return !unicode.IsLetter(r) }) {
		latin, foreign := false, false
		for _, r := range w {
			switch {
			case r < utf8.RuneSelf:
				latin = true
			case confusables[r] != 0:
				foreign = true
			}
		}
		if latin && foreign {
			return w
		}
	}
	return ""
}

// normalize lower-cases text, folds look-alike letters and full-width forms to ASCII, drops invisible
// characters and collapses whitespace, so that the patterns see what a model would read.
func normalize(text string) string {
	var b strings.Builder
	b.Grow(len(text))
	for _, r := range text {
		if c, ok := confusables[r]; ok {
			r = c
		}
		if r >= 0xFF01 && r <= 0xFF5E { // full-width ASCII
			r -= 0xFEE0
		}
		if unicode.Is(unicode.Cf, r) || r >= 0xE0000 && r <= 0xE007F {
			continue
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return spaceRE.ReplaceAllString(b.String(), " ")
}

func clip(s string) string {
	if utf8.RuneCountInString(s) > 60 {
		return string([]rune(s)[:60]) + "..."
	}
	return s
}
