package controller_test

import (
	"context"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/controllertest"
	"github.com/umbra-mesh/umbra/workgroups"
)

// TestHostThatLostItsServiceDoesNotChurn: an agent hosts its advertisement's service, and its administrator
// removes it from the workgroup, which retracts the advertisement and the agent's right to host it. The overlay
// ends the agent's bind. Left to itself the overlay SDK binds again at once with the ended bind session, over and
// over, thousands of times in a few seconds, each a bind its router handles and often a terminator the
// controller creates and removes; the agent must stop that after a few turns. Counted from the router's log over
// the seconds after the removal; the controller's umbra_overlay_terminators_total counts the first bind.
func TestHostThatLostItsServiceDoesNotChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a controller and a router")
	}
	env, err := controllertest.Start(controllertest.Options{MetricsListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	url := "http://" + env.Server.MetricsAddr().String() + "/metrics"
	created := func() float64 {
		return total(scrape(ctx, t, url)["umbra_overlay_terminators_total"], "event=created")
	}

	org, err := env.Admin().Controller().CreateOrg(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	admin := connect(ctx, t, org.AdminToken)
	resp, err := admin.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: "acme", Kind: "agent", Name: "quoter"})
	if err != nil {
		t.Fatal(err)
	}
	quoter := connect(ctx, t, resp.Token)
	wg, err := admin.Controller().CreateWorkgroup(ctx, "pricing")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Controller().AddMember(ctx, wg.ID, quoter.ID(), ""); err != nil {
		t.Fatal(err)
	}
	ad, err := quoter.Advertise(ctx, workgroups.AgentCard{Name: "Quoter", Version: "1.0", MessageTypes: []string{"quote.*"}},
		workgroups.Terms{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 10,
			AllowedMessageTypes: []string{"quote.request"}, MaxEnvelopeBytes: 4096}, wg.ID)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quoter.Listen("a2a." + ad.ID.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hctx, hcancel := context.WithTimeout(ctx, time.Minute)
	err = agentsdk.WaitHosted(hctx, ln)
	hcancel()
	if err != nil {
		t.Fatal(err)
	}
	if n := created(); n < 1 {
		t.Fatalf("the hosted service's terminator was not counted: umbra_overlay_terminators_total{event=created} = %v", n)
	}

	// The router logs each bind it handles as it makes the bind's terminator.
	binds := env.CountOverlayLog(t, "establishing terminator")
	if _, err := admin.Controller().RemoveMember(ctx, wg.ID, quoter.ID()); err != nil {
		t.Fatal(err)
	}
	const window = 6 * time.Second
	time.Sleep(window)
	if n := binds.Load(); n > 50 {
		t.Fatalf("the router handled %d binds in the %s after the host lost its service, want at most 50: it binds over and over", n, window)
	} else {
		t.Logf("the router handled %d binds in the %s after the host lost its service", n, window)
	}
}
