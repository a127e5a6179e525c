package authz

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/cedar-policy/cedar-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestParseErrorsNameFileAndLine(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		o          Options
		want       string
	}{
		{"syntax", "permit (principal, action, resource);\n\nforbid (principal, actoin, resource);", Options{}, "p.cedar:3:"},
		{"forbid only", "forbid (principal, action, resource) when { false };\npermit (principal, action, resource);", Options{ForbidOnly: true}, "p.cedar:2: only forbid"},
		{"duplicate id", "@id(\"x\") permit (principal, action, resource);\n@id(\"x\") permit (principal, action, resource);", Options{}, "p.cedar:2: policy id \"x\" used twice"},
		{"bad id", "@id(\"a b\") permit (principal, action, resource);", Options{}, "p.cedar:1: @id"},
		{"check", "permit (principal, action, resource);", Options{Check: func(*cedar.Policy) error { return errors.New("no\nthanks") }}, "p.cedar:1: no thanks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.cedar", tc.text, tc.o)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want[:strings.Index(tc.want, ":")+1]) ||
				!strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %v, want one line starting with %q", err, tc.want)
			}
		})
	}
}

func TestPolicyIDs(t *testing.T) {
	text := "@id(\"named\") permit (principal, action, resource);\npermit (principal, action, resource);"
	for _, tc := range []struct {
		prefix string
		want   [2]string
	}{{"", [2]string{"named", "policy1"}}, {"org/acme", [2]string{"org/acme/named", "org/acme/1"}}} {
		p, err := Parse("p", text, Options{Prefix: tc.prefix})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for id := range p.All() {
			got = append(got, string(id))
		}
		if len(got) != 2 || !(got[0] == tc.want[0] && got[1] == tc.want[1] || got[1] == tc.want[0] && got[0] == tc.want[1]) {
			t.Errorf("prefix %q: ids %v, want %v", tc.prefix, got, tc.want)
		}
		if p.Len() != 2 || !strings.HasPrefix(p.Version(), "sha256:") {
			t.Errorf("len %d version %q", p.Len(), p.Version())
		}
	}
}

func query(id string, wgs ...string) Query {
	sid := spiffeid.RequireFromString(id)
	org, _, _ := PathOf(sid)
	return Query{
		Principal: Principal{ID: sid, Org: org, Workgroups: wgs}.Entity(),
		Action:    "use",
		Resource:  cedar.Entity{UID: cedar.NewEntityUID("Umbra::Model", "m"), Attributes: cedar.NewRecord(cedar.RecordMap{"name": cedar.String("m")})},
		Context:   cedar.RecordMap{},
	}
}

func TestDecideExplainsItself(t *testing.T) {
	p, err := Parse("p", `
@id("research") permit (principal in Umbra::Workgroup::"acme/research", action == Umbra::Action::"use", resource);
@id("acme-by-org") permit (principal, action, resource) when { principal.org == "acme" && principal.kind == "agent" };
@id("no-bob") forbid (principal == Umbra::Identity::"spiffe://t/acme/agent/bob", action, resource);
@id("broken") forbid (principal, action, resource) when { principal.name == "eve" && resource.missing == 1 };
`, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		q        Query
		allow    bool
		policies string
		reason   string
	}{
		{"workgroup member", query("spiffe://t/acme/agent/alice", "acme/research"), true, "acme-by-org,research", "permitted use on m by acme-by-org, research"},
		{"forbid names itself", query("spiffe://t/acme/agent/bob", "acme/research"), false, "no-bob", "forbade use on m by no-bob"},
		{"nothing permits", query("spiffe://t/globex/agent/carol"), false, "", "no policy permits use on m"},
		{"error denies", query("spiffe://t/acme/agent/eve"), false, "acme-by-org", "policy evaluation failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.q, p)
			if d.Allow != tc.allow || strings.Join(d.Diagnostic.Policies, ",") != tc.policies || !strings.Contains(d.Reason(), tc.reason) {
				t.Fatalf("got %+v", d)
			}
			if (d.Err() == nil) != tc.allow || !tc.allow && !errors.Is(d.Err(), ErrNotAuthorized) {
				t.Fatalf("Err() = %v", d.Err())
			}
			var diag Diagnostic
			if err := json.Unmarshal(d.JSON(), &diag); err != nil || diag.Effect != d.Effect() || len(diag.Reasons) == 0 {
				t.Fatalf("JSON %s: %v", d.JSON(), err)
			}
		})
	}
}

func TestZeroDecisionDenies(t *testing.T) {
	var d Decision
	if d.Allow || d.Effect() != Deny || !errors.Is(d.Err(), ErrNotAuthorized) || !strings.Contains(string(d.JSON()), `"effect":"deny"`) {
		t.Fatalf("zero decision: %+v %s", d, d.JSON())
	}
	if d := Decide(query("spiffe://t/acme/agent/a")); d.Allow || len(d.Diagnostic.Errors) == 0 {
		t.Fatalf("no policies: %+v", d)
	}
}

func TestPrincipalEntity(t *testing.T) {
	e := Principal{ID: spiffeid.RequireFromString("spiffe://t/acme/agent/alice"), Org: "acme", Admin: true,
		Workgroups: []string{"acme/research"}}.Entity()
	for attr, want := range map[string]cedar.Value{"org": cedar.String("acme"), "kind": cedar.String("agent"),
		"name": cedar.String("alice"), "trust_domain": cedar.String("t"), "admin": cedar.Boolean(true),
		"workgroups": WorkgroupSet([]string{"acme/research"})} {
		if got, ok := e.Attributes.Get(cedar.String(attr)); !ok || !got.Equal(want) {
			t.Errorf("%s = %v, want %v", attr, got, want)
		}
	}
	if !e.Parents.Contains(OrgUID("acme")) || !e.Parents.Contains(WorkgroupUID("acme/research")) {
		t.Errorf("parents %v", e.Parents)
	}
}
