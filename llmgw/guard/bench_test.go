package guard

import (
	"strings"
	"testing"
)

func BenchmarkScan(b *testing.B) {
	s, _ := New(Policy{PII: Redact, Secrets: Redact, Injection: Redact})
	text := strings.Repeat("The quick brown fox jumps over the lazy dog, call 555-0100 or mail fox@example.com. ", 12)
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		s.Scan(text, true)
	}
}

func BenchmarkDetector(b *testing.B) {
	text := strings.Repeat("The quick brown fox jumps over the lazy dog, call 555-0100 or mail fox@example.com. ", 12)
	for _, d := range detectors() {
		b.Run(d.name, func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				d.re.FindAllStringIndex(text, -1)
			}
		})
	}
}
