package gatewayadmin_test

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/gatewayadmin"
)

func TestPlatformOrgIsTheControllers(t *testing.T) {
	if gatewayadmin.PlatformOrg != api.PlatformAdminOrg {
		t.Fatalf("PlatformOrg %q, the controller's %q", gatewayadmin.PlatformOrg, api.PlatformAdminOrg)
	}
}

func TestDecide(t *testing.T) {
	id := spiffeid.RequireFromString
	acmeGW := gatewayadmin.Grant{Gateway: id("spiffe://t/acme/gateway/mcpgw"),
		Admins: []spiffeid.ID{id("spiffe://t/initech/user/ops")}, Orgs: []string{"globex"}}
	type want struct {
		granted, all, gateway bool
		org                   string
	}
	for _, tc := range []struct {
		name  string
		grant gatewayadmin.Grant
		c     gatewayadmin.Caller
		want  want
	}{
		{"own organisation's administrator", acmeGW, gatewayadmin.Caller{ID: id("spiffe://t/acme/admin/admin"), Org: "acme", Admin: true},
			want{granted: true, gateway: true, org: "acme"}},
		{"platform administrator", acmeGW, gatewayadmin.Caller{ID: id("spiffe://t/umbra/admin/root"), Org: "umbra", Admin: true},
			want{granted: true, all: true, gateway: true}},
		{"listed identity, no admin flag", acmeGW, gatewayadmin.Caller{ID: id("spiffe://t/initech/user/ops"), Org: "initech"},
			want{granted: true, all: true, gateway: true}},
		{"listed organisation's administrator", acmeGW, gatewayadmin.Caller{ID: id("spiffe://t/globex/admin/admin"), Org: "globex", Admin: true},
			want{granted: true, org: "globex"}},
		{"another organisation's administrator", acmeGW, gatewayadmin.Caller{ID: id("spiffe://t/hooli/admin/admin"), Org: "hooli", Admin: true},
			want{}},
		{"listed organisation, not an administrator", acmeGW, gatewayadmin.Caller{ID: id("spiffe://t/globex/agent/a"), Org: "globex"},
			want{}},
		{"own organisation, not an administrator", acmeGW, gatewayadmin.Caller{ID: id("spiffe://t/acme/agent/a"), Org: "acme"},
			want{}},
		{"revoked administrator", acmeGW, gatewayadmin.Caller{ID: id("spiffe://t/acme/admin/admin"), Org: "acme", Admin: true, Revoked: true},
			want{}},
		{"revoked listed identity", acmeGW, gatewayadmin.Caller{ID: id("spiffe://t/initech/user/ops"), Revoked: true},
			want{}},
		{"gateway without an organisation", gatewayadmin.Grant{}, gatewayadmin.Caller{ID: id("spiffe://t/acme/admin/admin"), Org: "acme", Admin: true},
			want{}},
		{"no identity", acmeGW, gatewayadmin.Caller{Org: "acme", Admin: true}, want{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.grant.Decide(tc.c)
			got := want{granted: a.Granted(), all: a.All, gateway: a.Gateway, org: a.Org}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if a.Granted() == (a.Reason != "") || a.Granted() != (a.Basis != "") {
				t.Fatalf("basis %q, reason %q", a.Basis, a.Reason)
			}
		})
	}
}

func TestCovers(t *testing.T) {
	acme := gatewayadmin.Access{Org: "acme", Basis: "x"}
	if !acme.CoversID(spiffeid.RequireFromString("spiffe://t/acme/agent/a")) || acme.CoversID(spiffeid.RequireFromString("spiffe://t/globex/agent/a")) {
		t.Error("an organisation's access covers its own identities only")
	}
	if (gatewayadmin.Access{}).Covers("") || (gatewayadmin.Access{}).Covers("acme") {
		t.Error("the zero Access covers something")
	}
	if !(gatewayadmin.Access{All: true}).Covers("globex") {
		t.Error("All does not cover every organisation")
	}
}

func TestCheck(t *testing.T) {
	if err := (gatewayadmin.Grant{Orgs: []string{"acme", "globex-2"}}).Check(); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"", "Acme", "acme/x", "1acme"} {
		if (gatewayadmin.Grant{Orgs: []string{bad}}).Check() == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
