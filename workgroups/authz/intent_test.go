package authz

import (
	"errors"
	"strings"
	"testing"

	"github.com/cedar-policy/cedar-go"
)

func TestIntentValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Intent
		ok   bool
	}{
		{"purpose only", Intent{Purpose: "summarise the Q3 tickets"}, true},
		{"with category", Intent{Purpose: "refund", Category: "support.billing"}, true},
		{"unicode purpose", Intent{Purpose: "résumé des tickets — 第三季度"}, true},
		{"purpose at the limit", Intent{Purpose: strings.Repeat("é", MaxIntentPurpose/2)}, true},
		{"category with digits and dash", Intent{Purpose: "x", Category: "data-export.v2"}, true},
		{"empty", Intent{}, false},
		{"category without purpose", Intent{Category: "research"}, false},
		{"only spaces", Intent{Purpose: "   "}, false},
		{"too long", Intent{Purpose: strings.Repeat("a", MaxIntentPurpose+1)}, false},
		{"newline", Intent{Purpose: "a\nb"}, false},
		{"tab", Intent{Purpose: "a\tb"}, false},
		{"escape", Intent{Purpose: "a\x1b[31mb"}, false},
		{"C1 control", Intent{Purpose: "a\u0085b"}, false},
		{"bidi override", Intent{Purpose: "a\u202eb"}, false},
		{"zero width joiner", Intent{Purpose: "a\u200db"}, false},
		{"invalid UTF-8", Intent{Purpose: "a\xffb"}, false},
		{"category upper case", Intent{Purpose: "x", Category: "Research"}, false},
		{"category leading digit", Intent{Purpose: "x", Category: "1st"}, false},
		{"category empty word", Intent{Purpose: "x", Category: "a..b"}, false},
		{"category trailing dot", Intent{Purpose: "x", Category: "a."}, false},
		{"category space", Intent{Purpose: "x", Category: "a b"}, false},
		{"category too long", Intent{Purpose: "x", Category: strings.Repeat("a", MaxIntentCategory+1)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.in.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate(%+q) = %v, want ok %v", tc.in, err, tc.ok)
			}
			if err != nil && (!errors.Is(err, ErrInvalidIntent) || strings.Contains(err.Error(), "\n")) {
				t.Fatalf("error %q: want one line wrapping ErrInvalidIntent", err)
			}
		})
	}
}

func TestIntentHeaderRoundTrip(t *testing.T) {
	for _, in := range []Intent{
		{Purpose: "plain ascii"},
		{Purpose: "100% sure, a+b=c", Category: "research"},
		{Purpose: "prix du café ☕ — 第三季度"},
	} {
		v := in.HeaderValue()
		for i := 0; i < len(v); i++ {
			if v[i] < 0x20 || v[i] >= 0x7f {
				t.Fatalf("header value %q has byte %#x", v, v[i])
			}
		}
		got, err := ParseIntentHeader(v, in.Category)
		if err != nil || got == nil || *got != in {
			t.Fatalf("ParseIntentHeader(%q) = %+v, %v; want %+v", v, got, err, in)
		}
	}
	if got, err := ParseIntentHeader("", ""); got != nil || err != nil {
		t.Fatalf("no headers: %+v, %v", got, err)
	}
	for _, bad := range [][2]string{{"", "research"}, {"50%", ""}, {"a%0Ab", ""}, {"ok", "Bad Category"}} {
		if _, err := ParseIntentHeader(bad[0], bad[1]); !errors.Is(err, ErrInvalidIntent) {
			t.Errorf("ParseIntentHeader(%q, %q) = %v, want ErrInvalidIntent", bad[0], bad[1], err)
		}
	}
}

func TestParseIntentJSON(t *testing.T) {
	in, err := ParseIntentJSON([]byte(`{"purpose":"triage","category":"support"}`))
	if err != nil || in != (Intent{Purpose: "triage", Category: "support"}) {
		t.Fatalf("got %+v, %v", in, err)
	}
	for _, bad := range []string{`{}`, `"triage"`, `{"purpose":"x","why":"y"}`, `{"purpose":"x"} {}`, `{"purpose":"a\u0000b"}`,
		`{"purpose":"` + strings.Repeat("a", 2000) + `"}`} {
		if _, err := ParseIntentJSON([]byte(bad)); !errors.Is(err, ErrInvalidIntent) {
			t.Errorf("ParseIntentJSON(%.40s) = %v, want ErrInvalidIntent", bad, err)
		}
	}
}

// A policy tests a declared intent, and whether there is one; a declared intent without a category compares
// as "" rather than failing evaluation.
func TestDecideOnIntent(t *testing.T) {
	p, err := Parse("p", `
@id("use") permit (principal, action, resource);
@id("no-exfiltration") forbid (principal, action, resource) when { context has intent && context.intent.category == "exfiltration" };
@id("say-why") forbid (principal, action, resource) unless { context has intent };
`, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		in     *Intent
		allow  bool
		policy string
	}{
		{"research", &Intent{Purpose: "summarise", Category: "research"}, true, "use"},
		{"no category", &Intent{Purpose: "summarise"}, true, "use"},
		{"exfiltration", &Intent{Purpose: "copy it all", Category: "exfiltration"}, false, "no-exfiltration"},
		{"none", nil, false, "say-why"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := query("spiffe://t/acme/agent/alice")
			q.Context = WithIntent(cedar.RecordMap{"operation": cedar.String("chat")}, tc.in)
			d := Decide(q, p)
			if d.Allow != tc.allow || strings.Join(d.Diagnostic.Policies, ",") != tc.policy || len(d.Diagnostic.Errors) > 0 {
				t.Fatalf("got %+v", d)
			}
		})
	}
}

func FuzzParseIntent(f *testing.F) {
	for _, s := range []string{`{"purpose":"triage","category":"support"}`, `{"purpose":"a%25b"}`, `{}`, `{"purpose":"\u202e"}`} {
		f.Add([]byte(s), "a%20b", "support.billing")
	}
	f.Fuzz(func(t *testing.T, js []byte, purpose, category string) {
		if in, err := ParseIntentJSON(js); err == nil {
			if in.Validate() != nil {
				t.Fatalf("accepted an invalid intent %+q", in)
			}
			back, err := ParseIntentHeader(in.HeaderValue(), in.Category)
			if err != nil || back == nil || *back != in {
				t.Fatalf("header round trip of %+q: %+v, %v", in, back, err)
			}
		}
		if in, err := ParseIntentHeader(purpose, category); err == nil && in != nil && in.Validate() != nil {
			t.Fatalf("header accepted an invalid intent %+q", *in)
		}
	})
}
