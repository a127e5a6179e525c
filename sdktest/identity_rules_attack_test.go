package sdktest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// TestReservedKindsAndGatewayRevocation attacks the identity API as an organisation administrator: it tries to
// mint identities whose kind claims a role they do not have, and to revoke a gateway the platform registered in
// its organisation. The platform administrator is held to the kind rules too.
func TestReservedKindsAndGatewayRevocation(t *testing.T) {
	limit := testlimit.Start(t, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	org := uniq("kinds")
	limit.Step("create organisation %s", org)
	admin := orgAdmin(t, org)
	platform := env.Admin().Controller()

	for _, tc := range []struct {
		who string
		c   interface {
			CreateIdentity(context.Context, api.CreateIdentityRequest) (api.CreateIdentityResponse, error)
		}
		req  api.CreateIdentityRequest
		want string
	}{
		{"org admin", admin.Controller(), api.CreateIdentityRequest{Org: org, Kind: "controller", Name: "api"}, "reserved for controllers"},
		{"org admin", admin.Controller(), api.CreateIdentityRequest{Org: org, Kind: "admin", Name: "fake"}, "reserved for administrators"},
		{"platform", platform, api.CreateIdentityRequest{Org: org, Kind: "controller", Name: "replica"}, "reserved for controllers"},
		{"platform", platform, api.CreateIdentityRequest{Org: org, Kind: "agent", Name: "boss", Admin: true}, "has kind \"admin\""},
		{"platform", platform, api.CreateIdentityRequest{Org: org, Kind: "admin", Name: "notadmin"}, "reserved for administrators"},
	} {
		limit.Step("%s creates %s/%s admin=%v", tc.who, tc.req.Kind, tc.req.Name, tc.req.Admin)
		_, err := tc.c.CreateIdentity(ctx, tc.req)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s creating kind %q (admin=%v): err = %v, want one saying %q", tc.who, tc.req.Kind, tc.req.Admin, err, tc.want)
		}
	}

	limit.Step("platform registers a gateway in %s", org)
	resp, err := platform.CreateIdentity(ctx, api.CreateIdentityRequest{Org: org, Kind: api.GatewayKind, Name: "mcpgw"})
	if err != nil {
		t.Fatal(err)
	}
	gw := spiffeid.RequireFromString(resp.SPIFFEID)
	limit.Step("org admin revokes the gateway")
	if _, err := admin.Controller().Revoke(ctx, gw, "mine now"); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("an organisation administrator revoked a platform gateway: err = %v", err)
	}
	info, err := platform.Lookup(ctx, gw)
	if err != nil || info.Revoked {
		t.Fatalf("gateway after the refused revocation: revoked=%v err=%v", info.Revoked, err)
	}
	limit.Step("platform revokes the gateway")
	if _, err := platform.Revoke(ctx, gw, "retired"); err != nil {
		t.Fatalf("the platform could not revoke its gateway: %v", err)
	}
	// The organisation administrator still revokes its own agents.
	limit.Step("org admin revokes its own agent")
	agent := orgAgent(t, admin, org, "worker")
	if _, err := admin.Controller().Revoke(ctx, agent.ID(), "done"); err != nil {
		t.Fatalf("an organisation administrator could not revoke its own agent: %v", err)
	}
}
