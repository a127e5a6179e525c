package guard

import (
	"regexp"
	"strings"
)

// detector finds one kind of sensitive text. valid, when set, checks a regular-expression match and returns
// the length of its longest valid prefix (0: not a finding), so that a number followed by more digits is
// still found. Regular expressions are slow next to substring search, so a detector runs only on text
// holding one of its hints (in lower case when fold is set) or, with digits set, a digit.
type detector struct {
	name     string
	category Category
	re       *regexp.Regexp
	valid    func(s string) int
	hints    []string
	fold     bool
	digits   bool
}

// wanted reports whether d may find anything in text (lower is text in lower case).
func (d *detector) wanted(text, lower string, hasDigit bool) bool {
	if d.digits && !hasDigit {
		return false
	}
	if len(d.hints) == 0 {
		return true
	}
	in := text
	if d.fold {
		in = lower
	}
	for _, h := range d.hints {
		if strings.Contains(in, h) {
			return true
		}
	}
	return false
}

// detectors lists every detector; earlier ones win where matches overlap.
func detectors() []detector {
	return []detector{
		{name: "private_key", category: Secret, hints: []string{"PRIVATE KEY"}, re: regexp.MustCompile(
			`-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY-----(?s:.*?)(?:-----END[A-Z0-9 ]{0,40} PRIVATE KEY-----|\z)`)},
		{name: "jwt", category: Secret, hints: []string{"eyJ"}, re: regexp.MustCompile(
			`\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}`)},
		{name: "api_key", category: Secret, hints: []string{"sk-", "AKIA", "ASIA", "gh", "github_pat_", "xox", "AIza", "k_live_", "k_test_"}, re: regexp.MustCompile(
			`\b(?:sk-(?:proj-|ant-(?:api|admin)\d{2}-)?[A-Za-z0-9_\-]{20,}|(?:AKIA|ASIA)[A-Z0-9]{16}\b|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|xox[abprs]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{35}|[sr]k_(?:live|test)_[A-Za-z0-9]{16,})`)},
		{name: "bearer_token", category: Secret, hints: []string{"bearer"}, fold: true, re: regexp.MustCompile(
			`(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*`)},
		{name: "credential", category: Secret, hints: []string{"key", "token", "secret", "passw"}, fold: true, re: regexp.MustCompile(
			`(?i)\b(?:api[_\-]?key|secret[_\-]?key|access[_\-]?token|auth[_\-]?token|client[_\-]?secret|password|passwd)["']?\s*[:=]\s*["']?[^\s"'<>]{8,}`)},
		{name: "card_number", category: PII, digits: true, re: regexp.MustCompile(`\b(?:\d[ \-]?){12,18}\d\b`), valid: validCard},
		{name: "iban", category: PII, digits: true, re: regexp.MustCompile(`\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b`), valid: validIBAN},
		{name: "us_ssn", category: PII, digits: true, hints: []string{"-"}, re: regexp.MustCompile(`\b\d{3}-\d{2}-\d{4}\b`), valid: validSSN},
		{name: "uk_nino", category: PII, digits: true, re: regexp.MustCompile(
			`\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b`), valid: validNINO},
		{name: "email", category: PII, hints: []string{"@"}, re: regexp.MustCompile(
			`[\p{L}\p{N}._%+\-]{1,64}@(?:[A-Za-z0-9\-]{1,63}\.){1,8}[A-Za-z]{2,24}\b`)},
		{name: "phone", category: PII, digits: true, re: regexp.MustCompile(
			`(?:\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{2,4}){1,4}|(?:\(\d{3}\) ?|\b\d{3}[ .\-])\d{3}[ .\-]\d{4})\b`),
			valid: validPhone},
		{name: "prompt_injection", category: Injection, fold: true, hints: []string{"ignore", "disregard", "forget",
			"system prompt", "instructions", "you are", "anything now", "<|", "inst]", "<<sys>>", "override", "pretend"}, re: regexp.MustCompile(`(?i)(?:` + strings.Join([]string{
			`\bignore\s+(?:all\s+|any\s+)?(?:of\s+)?(?:the\s+|your\s+|my\s+)?(?:previous|prior|above|earlier|preceding|foregoing)\s+(?:instructions?|prompts?|rules|directions|messages|context)`,
			`\bdisregard\s+(?:all\s+|any\s+)?(?:of\s+)?(?:the\s+|your\s+)?(?:previous|prior|above|earlier|system)\s+(?:instructions?|prompts?|rules|messages)`,
			`\bforget\s+(?:everything|all)\s+(?:you\s+(?:were|have\s+been)\s+told|above|before|previously)`,
			`\b(?:reveal|show|print|repeat|output|leak|display)\s+(?:me\s+)?(?:your|the)\s+(?:system\s+prompt|hidden\s+(?:instructions|prompt)|initial\s+(?:instructions|prompt)|original\s+instructions)`,
			`\byou\s+are\s+(?:now\s+)?(?:DAN\b|in\s+developer\s+mode|jailbroken|no\s+longer\s+bound)`,
			`\bdo\s+anything\s+now\b`,
			`<\|im_start\|>|<\|system\|>|\[/?INST\]|<<SYS>>`,
			`\bnew\s+(?:system\s+)?instructions?\s*:`,
			`\boverride\s+(?:your|the|all)\s+(?:safety|security|system)\s+(?:rules|instructions|settings|guidelines)`,
			`\bpretend\s+(?:that\s+)?you\s+(?:have\s+no|are\s+not\s+bound\s+by|don'?t\s+have)\s+(?:restrictions|rules|guidelines|limits)`,
		}, "|") + `)`)},
	}
}

// digitsPrefix returns the byte length of the shortest prefix of s holding n digits.
func digitsPrefix(s string, n int) int {
	for i := 0; i < len(s); i++ {
		if s[i] >= '0' && s[i] <= '9' {
			n--
			if n == 0 {
				return i + 1
			}
		}
	}
	return 0
}

func digitsOf(s string) []byte {
	var d []byte
	for i := 0; i < len(s); i++ {
		if s[i] >= '0' && s[i] <= '9' {
			d = append(d, s[i]-'0')
		}
	}
	return d
}

// validCard accepts 13 to 19 digits that pass the Luhn check and are not one digit repeated.
func validCard(s string) int {
	d := digitsOf(s)
	for n := min(len(d), 19); n >= 13; n-- {
		if luhn(d[:n]) && !allSame(d[:n]) {
			return digitsPrefix(s, n)
		}
	}
	return 0
}

func luhn(d []byte) bool {
	sum := 0
	for i := len(d) - 1; i >= 0; i-- {
		v := int(d[i])
		if (len(d)-1-i)%2 == 1 {
			v *= 2
			if v > 9 {
				v -= 9
			}
		}
		sum += v
	}
	return sum%10 == 0
}

func allSame(d []byte) bool {
	for _, c := range d {
		if c != d[0] {
			return false
		}
	}
	return true
}

// ibanLength returns the IBAN length of countries that use it widely, 0 for others (accepted at 15 to 34).
func ibanLength(country string) int {
	switch country {
	case "NO":
		return 15
	case "BE":
		return 16
	case "DK", "FI", "NL":
		return 18
	case "SI":
		return 19
	case "AT", "EE", "LT", "LU":
		return 20
	case "CH", "HR", "LI", "LV":
		return 21
	case "BG", "BH", "DE", "GB", "IE":
		return 22
	case "AE", "IL":
		return 23
	case "AD", "CZ", "ES", "RO", "SA", "SE", "SK":
		return 24
	case "PT":
		return 25
	case "IS", "TR":
		return 26
	case "FR", "GR", "IT", "MC":
		return 27
	case "CY", "HU", "PL":
		return 28
	case "BR":
		return 29
	case "MT":
		return 31
	}
	return 0
}

// validIBAN accepts an IBAN whose check digits pass ISO 13616 mod-97.
func validIBAN(s string) int {
	compact := strings.ReplaceAll(s, " ", "")
	lengths := []int{}
	if n := ibanLength(compact[:2]); n > 0 {
		lengths = append(lengths, n)
	} else {
		for n := min(len(compact), 34); n >= 15; n-- {
			lengths = append(lengths, n)
		}
	}
	for _, n := range lengths {
		if n <= len(compact) && mod97(compact[:n]) == 1 {
			// Map n compact characters back to a prefix of s.
			for i, seen := 0, 0; i < len(s); i++ {
				if s[i] != ' ' {
					seen++
					if seen == n {
						return i + 1
					}
				}
			}
		}
	}
	return 0
}

func mod97(iban string) int {
	rearranged := iban[4:] + iban[:4]
	r := 0
	for i := 0; i < len(rearranged); i++ {
		c := rearranged[i]
		switch {
		case c >= '0' && c <= '9':
			r = (r*10 + int(c-'0')) % 97
		case c >= 'A' && c <= 'Z':
			r = (r*100 + int(c-'A'+10)) % 97
		default:
			return -1
		}
	}
	return r
}

// validSSN rejects numbers the US never issues: area 000, 666 or 9xx, group 00, serial 0000.
func validSSN(s string) int {
	area, group, serial := s[0:3], s[4:6], s[7:11]
	if area == "000" || area == "666" || area[0] == '9' || group == "00" || serial == "0000" {
		return 0
	}
	return len(s)
}

// validNINO rejects prefixes HMRC never allocates.
func validNINO(s string) int {
	switch s[:2] {
	case "BG", "GB", "KN", "NK", "NT", "TN", "ZZ":
		return 0
	}
	return len(s)
}

// validPhone wants 8 to 15 digits in international form and exactly 10 in the North American form.
func validPhone(s string) int {
	n := len(digitsOf(s))
	if strings.HasPrefix(s, "+") {
		if n >= 8 && n <= 15 {
			return len(s)
		}
		return 0
	}
	if n == 10 {
		return len(s)
	}
	return 0
}
