package controller

import (
	"crypto/rand"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

const noExfiltration = `@id("no-exfiltration")
forbid (principal, action == Umbra::Action::"propose", resource)
when { context has intent && context.intent.category == "exfiltration" };`

// TestCheckOrgPolicy: what a set refuses, with a 400 whose one line names what was wrong.
func TestCheckOrgPolicy(t *testing.T) {
	for _, tc := range []struct {
		name, org, policy, text string
		want                    string // in the message; "" accepts
	}{
		{"a forbid", "acme", "no-exfil", noExfiltration, ""},
		{"several forbids", "acme", "two", noExfiltration + "\nforbid (principal, action, resource) when { context has size && context.size > 100 };", ""},
		{"a permit", "acme", "open", `permit (principal, action, resource);`, "only forbid policies"},
		{"a permit after a forbid", "acme", "mixed", noExfiltration + "\npermit (principal, action, resource);", "acme/mixed:4: only forbid policies"},
		{"a syntax error, with Cedar's position", "acme", "broken", `forbid (principal, action, resource) when { context.x == };`, "acme/broken:1:59: parse error"},
		{"an empty text", "acme", "empty", " \n\t", "has no text"},
		{"a text too long", "acme", "long", "forbid (principal, action, resource);" + strings.Repeat(" ", 4*workgroups.MaxConditionsBytes), "longer than 65536 bytes"},
		{"a bad name", "acme", "No_Exfil", noExfiltration, `policy name: workgroups: invalid: name "No_Exfil"`},
		{"a name with a dot", "acme", "a.b", noExfiltration, `policy name`},
		{"a bad organisation", "Acme!", "no-exfil", noExfiltration, `organisation: workgroups: invalid: name "Acme!"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkOrgPolicy(tc.org, tc.policy, tc.text)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var f *fault
			if !errors.As(err, &f) || f.status != http.StatusBadRequest || f.code != api.CodeBadRequest {
				t.Fatalf("got %v, want a 400", err)
			}
			if !strings.Contains(f.message, tc.want) || strings.Contains(f.message, "\n") {
				t.Fatalf("message %q, want one line naming %q", f.message, tc.want)
			}
		})
	}
}

// TestPolicyOrg: who manages which organisation's policies.
func TestPolicyOrg(t *testing.T) {
	who := func(org string, admin bool) caller {
		return caller{id: spiffeid.RequireFromSegments(spiffeid.RequireTrustDomainFromString("umbra.local"), org, "admin", "x"),
			rec: identityRecord{Org: org, Admin: admin}}
	}
	for _, tc := range []struct {
		name string
		c    caller
		org  string
		ok   bool
	}{
		{"platform administrator, any organisation", who(api.PlatformAdminOrg, true), "acme", true},
		{"organisation administrator, its own", who("acme", true), "acme", true},
		{"organisation administrator, another", who("globex", true), "acme", false},
		{"not an administrator, its own organisation", who("acme", false), "acme", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := policyOrg(tc.c, tc.org)
			var f *fault
			if tc.ok != (err == nil) || !tc.ok && (!errors.As(err, &f) || f.status != http.StatusForbidden) {
				t.Fatalf("got %v, want allowed %v (else a 403)", err, tc.ok)
			}
		})
	}
}

// proposals returns a function that decides, with the policies of p, globex's buyer's proposal to acme's quoter
// (an advertisement of acme's pricing workgroup) declaring an intent of category.
func proposals(t *testing.T) func(p *orgPolicies, category string) workgroups.Decision {
	td := spiffeid.RequireTrustDomainFromString("umbra.local")
	buyer, quoter := spiffeid.RequireFromSegments(td, "globex", "agent", "buyer"), spiffeid.RequireFromSegments(td, "acme", "agent", "quoter")
	wg := workgroups.WorkgroupID{Org: "acme", Name: "pricing"}
	adID, err := workgroups.NewAdvertisementID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ad := workgroups.Advertisement{ID: adID, Provider: quoter, Workgroups: []workgroups.WorkgroupID{wg}}
	return func(p *orgPolicies, category string) workgroups.Decision {
		return p.Decide(workgroups.Request{Principal: workgroups.Principal{ID: buyer, Workgroups: []workgroups.WorkgroupID{wg}},
			Action: workgroups.ActionPropose, Resource: workgroups.AdvertisementResource(ad), At: time.Now(),
			Context: workgroups.ProposalContext(workgroups.Proposal{Intent: &workgroups.Intent{Purpose: "p", Category: category}})})
	}
}

// TestOrgPoliciesLoad: the live authoriser decides with what was loaded last, and leaves out only a stored text
// that does not parse.
func TestOrgPoliciesLoad(t *testing.T) {
	propose := proposals(t)
	p := &orgPolicies{log: slog.New(slog.DiscardHandler)}
	if d := propose(p, "exfiltration"); d.Allow {
		t.Fatal("allowed before anything was loaded")
	}
	p.load(nil)
	if d := propose(p, "exfiltration"); !d.Allow {
		t.Fatalf("no policies: %s", d.Reason())
	}
	p.load([]orgPolicyRecord{{Org: "acme", Name: "no-exfil", Text: noExfiltration}, {Org: "acme", Name: "broken", Text: "forbid ("}})
	d := propose(p, "exfiltration")
	if d.Allow || len(orgForbids(d)) != 1 || orgForbids(d)[0] != "org/acme/no-exfil/no-exfiltration" {
		t.Fatalf("the provider's organisation's forbid: allow %v, policies %v", d.Allow, d.Diagnostic.Policies)
	}
	if d := propose(p, "procurement"); !d.Allow {
		t.Fatalf("another intent: %s", d.Reason())
	}
	p.load(nil)
	if d := propose(p, "exfiltration"); !d.Allow {
		t.Fatalf("after removal: %s", d.Reason())
	}
}
