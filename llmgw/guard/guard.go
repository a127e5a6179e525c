// Package guard finds personal data, secrets and prompt-injection attempts in text, and logs, redacts or blocks
// them, also in text that arrives in pieces (a streamed response).
package guard

import (
	"fmt"
	"slices"
	"strings"
)

// Mode says what to do with a finding.
type Mode string

// The modes. The zero value is Off.
const (
	Off    Mode = ""       // do not look
	Log    Mode = "log"    // record the finding, pass the text unchanged
	Redact Mode = "redact" // replace the finding with a placeholder such as [REDACTED:email]
	Block  Mode = "block"  // refuse the text
)

// ParseMode reads "off", "log", "redact" or "block" ("" is off).
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "off", Off:
		return Off, nil
	case Log, Redact, Block:
		return Mode(s), nil
	}
	return Off, fmt.Errorf("guard: mode %q: want off, log, redact or block", s)
}

// Category groups detectors that share a mode.
type Category string

// The categories.
const (
	PII       Category = "pii"       // emails, phone numbers, card numbers, national IDs, IBANs
	Secret    Category = "secret"    // API keys, private keys, JWTs and bearer tokens, credentials in assignments
	Injection Category = "injection" // phrases that try to override a model's instructions
)

// Policy sets a mode per category.
type Policy struct {
	PII       Mode
	Secrets   Mode
	Injection Mode
}

func (p Policy) mode(c Category) Mode {
	switch c {
	case PII:
		return p.PII
	case Secret:
		return p.Secrets
	case Injection:
		return p.Injection
	}
	return Off
}

// Finding is one piece of sensitive text. It never holds the text itself.
type Finding struct {
	Category Category `json:"category"`
	Detector string   `json:"detector"`
	Mode     Mode     `json:"mode"`
	Start    int      `json:"-"` // byte offsets in the scanned text
	End      int      `json:"-"`
	prio     int      // detector order; lower wins where matches overlap
}

// Scanner applies a policy. It is immutable and safe for concurrent use.
type Scanner struct {
	policy    Policy
	detectors []detector
}

// New returns a scanner for p. Detectors whose category is off are not run.
func New(p Policy) (*Scanner, error) {
	for _, m := range []Mode{p.PII, p.Secrets, p.Injection} {
		if _, err := ParseMode(string(m)); err != nil {
			return nil, err
		}
	}
	s := &Scanner{policy: p}
	for _, d := range detectors() {
		if p.mode(d.category) != Off {
			s.detectors = append(s.detectors, d)
		}
	}
	return s, nil
}

// Enabled reports whether the scanner looks for anything.
func (s *Scanner) Enabled() bool { return s != nil && len(s.detectors) > 0 }

// Scan returns the findings in text, sorted and not overlapping. Prompt-injection detectors run only when
// injection is true (they make sense for what users and tools say, not for a model's answer).
func (s *Scanner) Scan(text string, injection bool) []Finding {
	if !s.Enabled() {
		return nil
	}
	var all []Finding
	lower := strings.ToLower(text)
	hasDigit := strings.ContainsAny(text, "0123456789")
	for prio, d := range s.detectors {
		if (d.category == Injection && !injection) || !d.wanted(text, lower, hasDigit) {
			continue
		}
		for _, loc := range d.re.FindAllStringIndex(text, -1) {
			end := loc[1]
			if d.valid != nil {
				n := d.valid(text[loc[0]:loc[1]])
				if n == 0 {
					continue
				}
				end = loc[0] + n
			}
			all = append(all, Finding{Category: d.category, Detector: d.name, Mode: s.policy.mode(d.category),
				Start: loc[0], End: end, prio: prio})
		}
	}
	slices.SortFunc(all, func(a, b Finding) int {
		if a.Start != b.Start {
			return a.Start - b.Start
		}
		if a.prio != b.prio {
			return a.prio - b.prio
		}
		return b.End - a.End
	})
	out := all[:0]
	end := 0
	for _, f := range all {
		if f.Start >= end {
			out = append(out, f)
			end = f.End
		}
	}
	return slices.Clone(out)
}

// Placeholder is what Redact puts in place of a finding.
func Placeholder(f Finding) string { return "[REDACTED:" + f.Detector + "]" }

// apply rewrites text for the findings fs (sorted, not overlapping, offsets into text) and reports whether
// any of them blocks. With scrub, blocking findings are replaced by their placeholder too.
func apply(text string, fs []Finding, scrub bool) (string, bool) {
	var b strings.Builder
	last, blocked := 0, false
	for _, f := range fs {
		if f.Mode == Block {
			blocked = true
		}
		if f.Mode == Redact || (scrub && f.Mode == Block) {
			b.WriteString(text[last:f.Start])
			b.WriteString(Placeholder(f))
			last = f.End
		}
	}
	if last == 0 {
		return text, blocked
	}
	b.WriteString(text[last:])
	return b.String(), blocked
}

// Apply scans text and returns it with redactions made, the findings, and whether a finding blocks it.
func (s *Scanner) Apply(text string, injection bool) (string, []Finding, bool) {
	fs := s.Scan(text, injection)
	out, blocked := apply(text, fs, false)
	return out, fs, blocked
}

// Scrub is Apply for text that must not pass on in any case: blocking findings are replaced by their
// placeholder too (the caller still learns that the text blocks, and decides what to do with the rest).
func (s *Scanner) Scrub(text string, injection bool) (string, []Finding, bool) {
	fs := s.Scan(text, injection)
	out, blocked := apply(text, fs, true)
	return out, fs, blocked
}

// Acts reports whether a finding changes what passes on (it redacts or blocks), as opposed to being logged.
func (f Finding) Acts() bool { return f.Mode == Redact || f.Mode == Block }
