// Package scan looks for prompt-injection patterns in the text of MCP tool definitions: hidden instructions
// addressed to the model, requests to read secrets or send data away, attempts to steer other tools, and
// unicode tricks that hide text from a human reviewer (invisible and bidirectional controls, look-alike
// letters from other scripts).
//
// A finding does not prove malice; it means a human should read the definition before any model does.
// The scanner is deliberately simple and fast: the text is normalised (NFKC, which folds full-width and
// mathematical letters; invisible and bidirectional characters and Arabic diacritics removed; look-alike
// letters folded within words that mix scripts; lower-cased; whitespace collapsed), base64 that decodes to
// text is decoded and scanned too, then a table of patterns runs: English, and German, French, Spanish,
// Russian, Chinese, Japanese and Arabic (lang.go). What it catches and misses, measured over the corpus in
// testdata/multilingual, is in docs/mcp-gateway.md.
package scan

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
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
		`\[(//|comment|hidden)\]: ?#`, // a markdown comment: not rendered, read by the model
		`\b(developer|god|dan|jailbreak) mode\b|\bno (restrictions|limits|filters)\b`,
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
		`\b(entire|whole|full) (conversation|chat)\b`,
	)
	add(ToolShadowing,
		`\bwhen (the )?(user|you|assistant|agent|model) (calls?|uses?|invokes?|runs?)\b.{0,40}\btool\b`,
		`\binstead of (using |calling )?(the )?\S+ tool\b`,
		`\b(all|any|every) (other )?(emails?|messages?|requests?|calls?)\b.{0,40}\b(must|should) (be )?(sent|redirected|forwarded|bcc)`,
		`\b(change|modify|replace|redirect) the (recipient|destination|address|account|url)\b`,
		`\bother tools?\b.{0,30}\b(must|should|will)\b`,
		`\b(redirect|forward|send|bcc) (all|every) (emails?|messages?|mail)\b`,
	)
	for _, l := range multilingual {
		for _, e := range l.exprs {
			if !hasCJK(e) { // a word starts after a non-letter: "lis" is no verb inside "réinitialise"
				e = `(?:^|[^\p{L}])(?:` + e + `)`
			}
			add(l.rule, e)
		}
	}
	return s
}

var (
	blobRE  = regexp.MustCompile(`[A-Za-z0-9+/]{120,}={0,2}|\b[0-9a-fA-F]{128,}\b`)
	spaceRE = regexp.MustCompile(`\s+`)
)

func hasCJK(s string) bool {
	for _, r := range s {
		if unicode.In(r, unicode.Han, unicode.Hiragana, unicode.Katakana) {
			return true
		}
	}
	return false
}

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
	s.match(normalize(text), "", add)
	for _, d := range decodedBase64(text) {
		add(EncodedPayload, fmt.Sprintf("base64 that decodes to text: %q", clip(d)))
		s.match(normalize(d), "in base64: ", add)
	}
	return out
}

func (s *Scanner) match(norm, prefix string, add func(Rule, string)) {
	for _, p := range s.patterns {
		if m := p.re.FindString(norm); m != "" {
			add(p.rule, fmt.Sprintf("%smatched %q", prefix, clip(m)))
		}
	}
}

var b64RE = regexp.MustCompile(`[A-Za-z0-9+/_-]{20,}={0,2}`)

// decodedBase64 returns the runs of base64 in text that decode to readable text: an instruction so wrapped is
// hidden from a reviewer, not from a model, which decodes base64 readily.
func decodedBase64(text string) []string {
	var out []string
	for _, m := range b64RE.FindAllString(stripInvisible(norm.NFKC.String(text)), 8) {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			b, err := enc.DecodeString(m)
			if err != nil || !readable(b) {
				continue
			}
			out = append(out, string(b))
			break
		}
	}
	return out
}

// readable reports whether b is UTF-8 text with letters, nearly all of it printable.
func readable(b []byte) bool {
	if len(b) < 8 || !utf8.Valid(b) {
		return false
	}
	n, printable, letters := 0, 0, 0
	for _, r := range string(b) {
		n++
		if unicode.IsPrint(r) || unicode.IsSpace(r) {
			printable++
		}
		if unicode.IsLetter(r) {
			letters++
		}
	}
	return printable*10 >= n*9 && letters*2 >= n
}

// Definition scans a tool (or prompt, or resource) definition given as JSON: every string under the keys
// "title", "description", "name" and "text" anywhere in it, which covers the tool's own text, its annotations,
// the descriptions of its schema properties and the text of a prompt's messages. Property names in schemas are scanned too: they reach the model.
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
				case "title", "description", "name", "const", "default", "examples", "pattern", "text":
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

// normalize turns text into what the patterns match: NFKC (full-width forms, ligatures, mathematical letters
// to their plain forms), invisible characters and Arabic diacritics dropped, look-alike letters folded to the
// script of the word they hide in, lower-cased, whitespace collapsed: what a model would read.
func normalize(text string) string {
	text = foldConfusables(stripInvisible(norm.NFKC.String(text)))
	return spaceRE.ReplaceAllString(strings.ToLower(text), " ")
}

// stripInvisible drops format characters (zero-width, bidirectional controls, tags), variation selectors and
// Arabic diacritics.
func stripInvisible(text string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case unicode.Is(unicode.Cf, r), r >= 0xE0000 && r <= 0xE01EF, r >= 0xFE00 && r <= 0xFE0F,
			r >= 0x064B && r <= 0x065F, r == 0x0670:
			return -1
		}
		return r
	}, text)
}

// toCyrillic maps Latin letters to the Cyrillic ones they look like, for words written mostly in Cyrillic.
var toCyrillic = map[rune]rune{
	'a': 'а', 'c': 'с', 'e': 'е', 'o': 'о', 'p': 'р', 'x': 'х', 'y': 'у', 'k': 'к', 'm': 'м', 't': 'т',
	'A': 'А', 'B': 'В', 'C': 'С', 'E': 'Е', 'H': 'Н', 'K': 'К', 'M': 'М', 'O': 'О', 'P': 'Р', 'T': 'Т', 'X': 'Х',
}

// foldConfusables rewrites each word that mixes Latin letters with look-alikes from another script into one
// script: Latin when every other letter in it looks Latin (and the text is mostly Latin, or the word has no
// Cyrillic letter that could not be Latin), else Cyrillic for a word otherwise Cyrillic. In a text mostly in
// Latin letters, a word made only of look-alikes is folded to Latin too. Words of one script are left alone:
// Russian stays Russian.
func foldConfusables(text string) string {
	latin, letters := 0, 0
	for _, r := range text {
		if unicode.IsLetter(r) {
			letters++
			if unicode.Is(unicode.Latin, r) {
				latin++
			}
		}
	}
	latinText := latin*2 > letters
	var b strings.Builder
	b.Grow(len(text))
	word := make([]rune, 0, 32)
	flush := func() {
		lat, other, looks, cyrillic := 0, 0, 0, 0
		for _, r := range word {
			switch {
			case unicode.Is(unicode.Latin, r):
				lat++
			default:
				other++
				if confusables[r] != 0 {
					looks++
				}
				if unicode.Is(unicode.Cyrillic, r) {
					cyrillic++
				}
			}
		}
		toLatin := looks > 0 && looks == other && (lat > 0 || latinText) && (latinText || cyrillic == 0)
		switch {
		case toLatin:
			for i, r := range word {
				if c, ok := confusables[r]; ok {
					word[i] = c
				}
			}
		case lat > 0 && other > 0 && cyrillic == other:
			for i, r := range word {
				if c, ok := toCyrillic[r]; ok {
					word[i] = c
				}
			}
		}
		b.WriteString(string(word))
		word = word[:0]
	}
	for _, r := range text {
		if unicode.IsLetter(r) {
			word = append(word, r)
			continue
		}
		flush()
		b.WriteRune(r)
	}
	flush()
	return b.String()
}

func clip(s string) string {
	if utf8.RuneCountInString(s) > 60 {
		return string([]rune(s)[:60]) + "..."
	}
	return s
}
