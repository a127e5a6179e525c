package workgroups

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"acme", true},
		{"a", true},
		{"a1-b_c", true},
		{strings.Repeat("a", MaxNameLen), true},
		{strings.Repeat("a", MaxNameLen+1), false},
		{"", false},
		{"1acme", false},
		{"-acme", false},
		{"acme-", false},
		{"acme_", false},
		{"Acme", false},
		{"ac.me", false},
		{"ac/me", false},
		{"ac me", false},
		{"acmé", false},
	} {
		err := ValidateName(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.in, err, tc.ok)
		}
		if err != nil {
			wantErr(t, err, ErrInvalid)
		}
	}
}

func TestMessageTypes(t *testing.T) {
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 10)
	for _, tc := range []struct {
		in                string
		typeOK, patternOK bool
	}{
		{"quote.request", true, true},
		{"quote", true, true},
		{"a-b.c_d.9", true, true},
		{"quote.*", false, true},
		{"a.b.*", false, true},
		{"*", false, false},
		{".*", false, false},
		{"quote.", false, false},
		{".quote", false, false},
		{"quote..request", false, false},
		{"Quote.request", false, false},
		{"quote.-x", false, false},
		{"quote.re*", false, false},
		{"quote.*.x", false, false},
		{"quote request", false, false},
		{"", false, false},
		{long, false, false}, // 132 bytes
		{strings.Repeat("a", 65), false, false},
		{strings.Repeat("a.", 16) + "a", false, false}, // 17 segments
		{strings.Repeat("a.", 15) + "a", true, true},
	} {
		if err := ValidateMessageType(tc.in); (err == nil) != tc.typeOK {
			t.Errorf("ValidateMessageType(%q) = %v, want ok=%v", tc.in, err, tc.typeOK)
		}
		if err := ValidateTypePattern(tc.in); (err == nil) != tc.patternOK {
			t.Errorf("ValidateTypePattern(%q) = %v, want ok=%v", tc.in, err, tc.patternOK)
		}
	}
}

func TestTypeAllowed(t *testing.T) {
	offer := []string{"quote.*", "order.place", "bad..entry", "x.y.*"}
	for _, tc := range []struct {
		t  string
		ok bool
	}{
		{"quote.request", true},
		{"quote.request.v2", true},
		{"quote", false},
		{"quotes.request", false},
		{"order.place", true},
		{"order.cancel", false},
		{"order", false},
		{"x.y.z", true},
		{"x.y", false},
		{"x.z", false},
		{"bad..entry", false},
		{"quote.*", false}, // a pattern is not a concrete type
	} {
		if got := TypeAllowed(offer, tc.t); got != tc.ok {
			t.Errorf("TypeAllowed(%q) = %v, want %v", tc.t, got, tc.ok)
		}
	}
	if TypeAllowed(nil, "quote.request") {
		t.Error("an empty list allows nothing")
	}
}

func TestPatternCovered(t *testing.T) {
	offer := []string{"a.*", "b.c.*", "d.e"}
	for _, tc := range []struct {
		req string
		ok  bool
	}{
		{"a.x", true},
		{"a.*", true},
		{"a.b.*", true}, // narrower pattern under a broader offered prefix
		{"b.c.*", true},
		{"b.c.d", true},
		{"b.*", false}, // broader than offered
		{"b.c", false},
		{"d.e", true},
		{"d.*", false}, // an exact offer does not cover a pattern
		{"d.e.*", false},
		{"ab.*", false},
		{"*", false},
	} {
		if got := patternCovered(offer, tc.req); got != tc.ok {
			t.Errorf("patternCovered(%q) = %v, want %v", tc.req, got, tc.ok)
		}
	}
}

func TestParseIdentity(t *testing.T) {
	got, err := ParseIdentity(acmeAgent)
	if err != nil {
		t.Fatal(err)
	}
	if got.Org != "acme" || got.Kind != "agent" || got.Name != "buyer" || got.ID != acmeAgent {
		t.Fatalf("got %+v", got)
	}
	for _, s := range []string{
		"spiffe://acme.example/acme/agent",
		"spiffe://acme.example/acme/agent/buyer/extra",
		"spiffe://acme.example",
		"spiffe://acme.example/Acme/agent/buyer",
		"spiffe://acme.example/acme/agent/buy.er",
	} {
		id := spiffeid.RequireFromString(s)
		if _, err := ParseIdentity(id); err == nil {
			t.Errorf("ParseIdentity(%s) succeeded", s)
		} else {
			wantErr(t, err, ErrInvalid)
		}
	}
	if _, err := ParseIdentity(spiffeid.ID{}); err == nil {
		t.Error("zero ID accepted")
	}
}

func TestOrganisation(t *testing.T) {
	acme := Organisation{Name: "acme", TrustDomain: spiffeid.RequireTrustDomainFromString("acme.example")}
	if err := acme.Validate(); err != nil {
		t.Fatal(err)
	}
	if !acme.Owns(acmeAgent) {
		t.Error("acme should own its agent")
	}
	if acme.Owns(globexProv) {
		t.Error("acme owns a globex identity")
	}
	// The right path in the wrong trust domain is not acme's.
	if acme.Owns(spiffeid.RequireFromString("spiffe://globex.example/acme/agent/buyer")) {
		t.Error("trust domain ignored")
	}
	wantErr(t, Organisation{Name: "acme"}.Validate(), ErrInvalid)
	wantErr(t, Organisation{Name: "ACME", TrustDomain: acme.TrustDomain}.Validate(), ErrInvalid)
}

func TestCheckText(t *testing.T) {
	for _, tc := range []struct {
		s                   string
		required, multiline bool
		ok                  bool
	}{
		{"hello", true, false, true},
		{"", true, false, false},
		{"", false, false, true},
		{"a\nb", false, false, false},
		{"a\nb\tc", false, true, true},
		{"a\rb", false, true, false},
		{"a\x00b", false, true, false},
		{"a\u2028b", false, true, false},
		{"\xff", false, true, false},
		{strings.Repeat("x", 17), false, false, false},
		{"héllo wörld", false, false, true},
	} {
		err := checkText("f", tc.s, 16, tc.required, tc.multiline)
		if (err == nil) != tc.ok {
			t.Errorf("checkText(%q) = %v, want ok=%v", tc.s, err, tc.ok)
		}
	}
}
