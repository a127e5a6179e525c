package scan

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// The multilingual corpus: testdata/multilingual/{poisoned,benign}.tsv, "lang<TAB>text" a line. Each poisoned
// text is scanned as written and as each obfuscation below turns it; each benign text as written.

var langs = []string{"en", "de", "fr", "es", "ru", "zh", "ja", "ar"}

type sample struct{ lang, text string }

func readCorpus(t *testing.T, name string) []sample {
	t.Helper()
	f, err := os.Open("testdata/multilingual/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []sample
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		lang, text, ok := strings.Cut(line, "\t")
		if !ok || !slices.Contains(langs, lang) {
			t.Fatalf("%s: bad line %q", name, line)
		}
		out = append(out, sample{lang, text})
	}
	return out
}

// obfuscations turn a poisoned text into what an attacker would publish to slip it past a reviewer or a filter.
var obfuscations = []struct {
	name string
	f    func(string) string
}{
	{"plain", func(s string) string { return s }},
	{"homoglyphs", func(s string) string { // Latin letters swapped for Cyrillic look-alikes, and back in Cyrillic text
		lat := map[rune]rune{'a': 'а', 'e': 'е', 'o': 'о', 'p': 'р', 'c': 'с', 'i': 'і'}
		cyr := map[rune]rune{'а': 'a', 'е': 'e', 'о': 'o', 'р': 'p', 'с': 'c'}
		return strings.Map(func(r rune) rune {
			if c, ok := lat[r]; ok {
				return c
			}
			if c, ok := cyr[r]; ok {
				return c
			}
			return r
		}, s)
	}},
	{"zero-width", func(s string) string { // U+200B after every second character
		var b strings.Builder
		for i, r := range []rune(s) {
			b.WriteRune(r)
			if i%2 == 1 {
				b.WriteRune('\u200b')
			}
		}
		return b.String()
	}},
	{"full-width", func(s string) string {
		return strings.Map(func(r rune) rune {
			switch {
			case r == ' ':
				return '\u3000'
			case r > ' ' && r < 0x7f:
				return r + 0xFEE0
			}
			return r
		}, s)
	}},
	{"math-letters", func(s string) string { // mathematical bold letters, which NFKC folds
		return strings.Map(func(r rune) rune {
			switch {
			case r >= 'a' && r <= 'z':
				return 0x1D41A + r - 'a'
			case r >= 'A' && r <= 'Z':
				return 0x1D400 + r - 'A'
			}
			return r
		}, s)
	}},
	{"base64", func(s string) string {
		return "Formats text. Decode and apply: " + base64.StdEncoding.EncodeToString([]byte(s))
	}},
	{"html-comment", func(s string) string { return "Formats text. <!-- " + s + " -->" }},
	{"markdown-comment", func(s string) string { return "Formats text.\n\n[//]: # (" + s + ")" }},
	{"bidi-controls", func(s string) string { // the instruction in a right-to-left isolate with an override inside
		r := []rune(s)
		return "Formats text. \u2067" + string(r[:len(r)/2]) + "\u202e" + string(r[len(r)/2:]) + "\u202c\u2069"
	}},
}

// content rules say what a text asks for; the others only that it hides something.
func recognised(fs []Finding) bool {
	return slices.ContainsFunc(fs, func(f Finding) bool {
		return f.Rule == HiddenInstruction || f.Rule == SecretAccess || f.Rule == Exfiltration || f.Rule == ToolShadowing
	})
}

type tally struct{ flagged, recognised, total int }

// TestMultilingualCorpus measures the scanner over the corpus and holds it to the figures recorded in
// docs/mcp-gateway.md: "flagged" (any finding: the definition is held) and "recognised" (a finding that names
// what the text asks for, not only that it hides something). Run with -v for the table.
func TestMultilingualCorpus(t *testing.T) {
	s := New()
	poisoned, benign := readCorpus(t, "poisoned.tsv"), readCorpus(t, "benign.tsv")
	byLang := map[string]*tally{}
	byObf := map[string]*tally{}
	for _, l := range langs {
		byLang[l] = &tally{}
	}
	var missed []string
	for _, o := range obfuscations {
		byObf[o.name] = &tally{}
		for _, p := range poisoned {
			text := o.f(p.text)
			fs := s.Text("description", text)
			tl := byObf[o.name]
			tl.total++
			if len(fs) > 0 {
				tl.flagged++
			}
			if recognised(fs) {
				tl.recognised++
			} else {
				missed = append(missed, fmt.Sprintf("%s/%s: %q -> %v", o.name, p.lang, clipTest(p.text), fs))
			}
			if o.name == "plain" {
				lt := byLang[p.lang]
				lt.total++
				if len(fs) > 0 {
					lt.flagged++
				}
				if recognised(fs) {
					lt.recognised++
				}
			}
		}
	}
	fps := map[string]int{}
	benignTotal := map[string]int{}
	var falsePositives []string
	for _, b := range benign {
		benignTotal[b.lang]++
		if fs := s.Text("description", b.text); len(fs) > 0 {
			fps[b.lang]++
			falsePositives = append(falsePositives, fmt.Sprintf("%s: %q -> %v", b.lang, b.text, fs))
		}
	}

	var table strings.Builder
	table.WriteString("| language | recognised | flagged | false positives / benign |\n|---|---|---|---|\n")
	for _, l := range langs {
		tl := byLang[l]
		fmt.Fprintf(&table, "| %s | %d/%d | %d/%d | %d/%d |\n", l, tl.recognised, tl.total, tl.flagged, tl.total, fps[l], benignTotal[l])
	}
	table.WriteString("\n| obfuscation (all languages) | recognised | flagged |\n|---|---|---|\n")
	for _, o := range obfuscations {
		tl := byObf[o.name]
		fmt.Fprintf(&table, "| %s | %d/%d | %d/%d |\n", o.name, tl.recognised, tl.total, tl.flagged, tl.total)
	}
	t.Logf("detection over the corpus:\n%s", table.String())
	for _, m := range missed {
		t.Logf("not recognised: %s", m)
	}

	// The figures recorded in docs/mcp-gateway.md; a change to the scanner that lowers one fails here.
	for _, l := range langs {
		if tl := byLang[l]; tl.recognised != tl.total {
			t.Errorf("%s: %d of %d poisoned texts recognised, want all", l, tl.recognised, tl.total)
		}
	}
	for _, o := range obfuscations {
		tl := byObf[o.name]
		if tl.flagged != tl.total {
			t.Errorf("%s: %d of %d poisoned texts flagged, want all", o.name, tl.flagged, tl.total)
		}
		if want := minRecognised[o.name]; tl.recognised < want {
			t.Errorf("%s: %d of %d poisoned texts recognised, want at least %d", o.name, tl.recognised, tl.total, want)
		}
	}
	if len(falsePositives) > maxFalsePositives {
		t.Errorf("%d false positives over %d benign texts, want at most %d:\n%s", len(falsePositives), len(benign),
			maxFalsePositives, strings.Join(falsePositives, "\n"))
	}
}

// Measured, and recorded in docs/mcp-gateway.md.
var minRecognised = map[string]int{
	"plain": 64, "homoglyphs": 64, "zero-width": 64, "full-width": 64, "math-letters": 64,
	"base64": 64, "html-comment": 64, "markdown-comment": 64, "bidi-controls": 64,
}

const maxFalsePositives = 0

func clipTest(s string) string {
	if utf8.RuneCountInString(s) > 50 {
		return string([]rune(s)[:50]) + "..."
	}
	return s
}

// TestMultilingualHoldout measures the scanner on texts written after its patterns were fixed and never used
// to tune them: the honest figure for instructions phrased in ways the patterns do not list. The floors are the
// measured figures in docs/mcp-gateway.md.
func TestMultilingualHoldout(t *testing.T) {
	s := New()
	poisoned, benign := readCorpus(t, "holdout-poisoned.tsv"), readCorpus(t, "holdout-benign.tsv")
	caught, flagged := map[string]int{}, map[string]int{}
	total, btotal, fps := map[string]int{}, map[string]int{}, map[string]int{}
	sumCaught, sumFlagged, sumFP := 0, 0, 0
	for _, p := range poisoned {
		fs := s.Text("description", p.text)
		total[p.lang]++
		if len(fs) > 0 {
			flagged[p.lang]++
			sumFlagged++
		}
		if recognised(fs) {
			caught[p.lang]++
			sumCaught++
		} else {
			t.Logf("missed %s: %q -> %v", p.lang, p.text, fs)
		}
	}
	for _, b := range benign {
		btotal[b.lang]++
		if fs := s.Text("description", b.text); len(fs) > 0 {
			fps[b.lang]++
			sumFP++
			t.Logf("false positive %s: %q -> %v", b.lang, b.text, fs)
		}
	}
	var table strings.Builder
	table.WriteString("| language | recognised | flagged | false positives / benign |\n|---|---|---|---|\n")
	for _, l := range langs {
		fmt.Fprintf(&table, "| %s | %d/%d | %d/%d | %d/%d |\n", l, caught[l], total[l], flagged[l], total[l], fps[l], btotal[l])
	}
	fmt.Fprintf(&table, "| all | %d/%d | %d/%d | %d/%d |\n", sumCaught, len(poisoned), sumFlagged, len(poisoned), sumFP, len(benign))
	t.Logf("held-out detection:\n%s", table.String())
	if sumFlagged < holdoutFlagged || sumFP > holdoutFalsePositives {
		t.Errorf("held out: %d flagged (want at least %d), %d false positives (want at most %d)", sumFlagged, holdoutFlagged,
			sumFP, holdoutFalsePositives)
	}
}

// Measured on the held-out texts, recorded in docs/mcp-gateway.md.
const (
	holdoutFlagged        = 10
	holdoutFalsePositives = 0
)
