package gatewayadmin_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/gatewayadmin"
)

func TestActionsAreCedarDecisions(t *testing.T) {
	id := spiffeid.RequireFromString
	acmeAdmin := gatewayadmin.Caller{ID: id("spiffe://t/acme/admin/admin"), Org: "acme", Admin: true}
	acmeOps := gatewayadmin.Caller{ID: id("spiffe://t/acme/admin/ops"), Org: "acme", Admin: true}
	globexAdmin := gatewayadmin.Caller{ID: id("spiffe://t/globex/admin/admin"), Org: "globex", Admin: true}
	root := gatewayadmin.Caller{ID: id("spiffe://t/umbra/admin/root"), Org: "umbra", Admin: true}
	alice := id("spiffe://t/acme/agent/alice")
	grant := gatewayadmin.Grant{Gateway: id("spiffe://t/acme/gateway/mcpgw"), Orgs: []string{"globex"}, Policies: `
@id("bank-needs-root")
forbid (principal, action == Umbra::Action::"approve_call", resource)
when { resource.tool == "bank__pay" && principal.org != "umbra" };

@id("ops-reads-globex")
permit (principal == Umbra::Identity::"spiffe://t/acme/admin/ops", action == Umbra::Action::"read_usage", resource)
when { resource.org == "globex" };
`}
	a, err := gatewayadmin.NewAuthorizer(grant)
	if err != nil {
		t.Fatal(err)
	}
	call := func(caller spiffeid.ID, org, tool string) gatewayadmin.Target {
		return a.HeldCallTarget("apr_1", caller, org, tool)
	}
	for _, tc := range []struct {
		name     string
		c        gatewayadmin.Caller
		action   string
		target   gatewayadmin.Target
		allow    bool
		policies []string
	}{
		{"own organisation's call", acmeAdmin, gatewayadmin.ActionApproveCall, call(alice, "acme", "notes__read"), true, []string{gatewayadmin.PolicyOwnCallers}},
		{"another organisation's call", globexAdmin, gatewayadmin.ActionApproveCall, call(alice, "acme", "notes__read"), false, nil},
		{"own call", acmeAdmin, gatewayadmin.ActionApproveCall, call(acmeAdmin.ID, "acme", "notes__read"), false, []string{gatewayadmin.PolicyNoSelfApproval}},
		{"deny own call", acmeAdmin, gatewayadmin.ActionDenyCall, call(acmeAdmin.ID, "acme", "notes__read"), true, []string{gatewayadmin.PolicyOwnCallers}},
		{"operator forbid", acmeAdmin, gatewayadmin.ActionApproveCall, call(alice, "acme", "bank__pay"), false, []string{"bank-needs-root"}},
		{"operator forbid spares platform", root, gatewayadmin.ActionApproveCall, call(alice, "acme", "bank__pay"), true, []string{gatewayadmin.PolicyPlatformAdmin}},
		{"release tool, gateway's organisation", acmeAdmin, gatewayadmin.ActionReleaseTool, a.ToolTarget("notes__read", "notes", "d1"), true, []string{gatewayadmin.PolicyGatewayOrg}},
		{"release tool, admin_orgs", globexAdmin, gatewayadmin.ActionReleaseTool, a.ToolTarget("notes__read", "notes", "d1"), false, nil},
		{"usage of own organisation", globexAdmin, gatewayadmin.ActionReadUsage, a.UsageTarget("org:globex", spiffeid.ID{}, "globex"), true, []string{gatewayadmin.PolicyOwnCallers}},
		{"operator permit", acmeOps, gatewayadmin.ActionReadUsage, a.UsageTarget("id:spiffe://t/globex/agent/g", id("spiffe://t/globex/agent/g"), "globex"), true, []string{"ops-reads-globex"}},
		{"operator permit is narrow", acmeAdmin, gatewayadmin.ActionReadUsage, a.UsageTarget("org:globex", spiffeid.ID{}, "globex"), false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := a.Decide(tc.c, tc.action, tc.target)
			if d.Allow != tc.allow || !slices.Equal(d.Diagnostic.Policies, tc.policies) {
				t.Fatalf("got %+v", d)
			}
			if r := d.Reason(); r == "" || strings.Contains(r, "\n") || !d.Allow && len(tc.policies) > 0 && !strings.Contains(r, tc.policies[0]) {
				t.Fatalf("reason %q", r)
			}
		})
	}
	// The operator's forbid shows in the summary too.
	acc := a.Access(acmeAdmin)
	if !acc.Gateway || acc.Org != "acme" || !strings.Contains(acc.Basis, gatewayadmin.PolicyOwnCallers) {
		t.Errorf("access %+v", acc)
	}
}

func TestOperatorPoliciesRefusedOnOneLine(t *testing.T) {
	_, err := gatewayadmin.NewAuthorizer(gatewayadmin.Grant{Policies: "permit (principal, action, resource);\nforbid (principal, actoin, resource);"})
	if err == nil || !strings.Contains(err.Error(), "admin_policies:2:") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error %v", err)
	}
	if acc := (gatewayadmin.Grant{Policies: "permit ("}).Decide(gatewayadmin.Caller{ID: spiffeid.RequireFromString("spiffe://t/umbra/admin/root"), Org: "umbra", Admin: true}); acc.Granted() || acc.Reason == "" {
		t.Fatalf("a grant whose policies do not parse granted %+v", acc)
	}
}

func TestOperatorForbidTakesAGrantAway(t *testing.T) {
	acc := (gatewayadmin.Grant{Gateway: spiffeid.RequireFromString("spiffe://t/acme/gateway/g"), Policies: `
@id("no-acme-admins") forbid (principal in Umbra::Org::"acme", action, resource);`}).Decide(
		gatewayadmin.Caller{ID: spiffeid.RequireFromString("spiffe://t/acme/admin/admin"), Org: "acme", Admin: true})
	if acc.Granted() || acc.Gateway || !strings.Contains(acc.Reason, "no-acme-admins") {
		t.Fatalf("access %+v", acc)
	}
}
