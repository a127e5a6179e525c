//go:build !race

// The race detector flags OpenZiti's sdk-golang whenever agents redial a restarted controller at once
// (edge-apis.errorIndicatesControllerSwap hands a package-level variable to errors.As), which fails this test
// under -race for a race in no code of Umbra's; so it runs without -race only.

package sdktest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/controllertest"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// TestSessionEventsSurviveControllerRestart follows the provider's session event feed while the controller is
// killed and started again on the same data directory: after the restart the feed resumes where it was, and the
// next held proposal arrives as an event of its own, with no resync before it.
func TestSessionEventsSurviveControllerRestart(t *testing.T) {
	limit := testlimit.Start(t, 8*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 7*time.Minute)
	defer cancel()
	n := childNetwork{Dir: t.TempDir()}
	for _, p := range []*int{&n.CtrlPort, &n.APIPort, &n.Enroll, &n.Edge} {
		var err error
		if *p, err = controllertest.FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	limit.Step("start the child network")
	child := startChild(t, n)
	id, err := agentsdk.LoadIdentity(filepath.Join(n.Dir, "controller", "admin.json"))
	if err != nil {
		t.Fatal(err)
	}
	connect := func(id *agentsdk.Identity) *agentsdk.Agent {
		t.Helper()
		a, err := agentsdk.Connect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	enroll := func(token string) *agentsdk.Agent {
		t.Helper()
		id, err := agentsdk.Enroll(ctx, token)
		if err != nil {
			t.Fatal(err)
		}
		return connect(id)
	}
	limit.Step("build an organisation with a provider and a consumer")
	admin := connect(id)
	var org api.CreateOrgResponse
	for deadline := time.Now().Add(30 * time.Second); ; {
		if org, err = admin.Controller().CreateOrg(ctx, "acme"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	acme := enroll(org.AdminToken)
	agent := func(name string) *agentsdk.Agent {
		resp, err := acme.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: "acme", Kind: "agent", Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return enroll(resp.Token)
	}
	quoter, buyer := agent("quoter"), agent("buyer")
	wg, err := acme.Controller().CreateWorkgroup(ctx, "pricing")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []*agentsdk.Agent{quoter, buyer} {
		if _, err := acme.Controller().AddMember(ctx, wg.ID, a.ID(), ""); err != nil {
			t.Fatal(err)
		}
	}
	terms := defaultTerms()
	terms.HoldForProvider = true
	card := workgroups.AgentCard{Name: "Quoter", Version: "1.0", MessageTypes: []string{"quote.*"}}
	ad, err := quoter.Advertise(ctx, card, terms, wg.ID)
	if err != nil {
		t.Fatal(err)
	}

	feedCtx, stopFeed := context.WithCancel(ctx)
	defer stopFeed()
	events, err := quoter.SessionEvents(feedCtx)
	if err != nil {
		t.Fatal(err)
	}
	if first := <-events; !first.Resync {
		t.Fatalf("first event %+v, want a resync", first)
	}
	held := func(what string, deadline time.Duration) workgroups.SessionID {
		t.Helper()
		limit.Step("%s", what)
		var sess *agentsdk.Session
		end := time.Now().Add(deadline)
		for {
			pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
			sess, err = buyer.Propose(pctx, ad.ID, workgroups.Proposal{MaxMessages: 50})
			pcancel()
			if err == nil {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		for {
			select {
			case e, ok := <-events:
				if !ok {
					t.Fatalf("%s: the feed ended", what)
				}
				if e.Resync {
					t.Fatalf("%s: the feed asked for a resync, want it to resume from its cursor", what)
				}
				if e.Session.ID == sess.ID() && e.Session.State == workgroups.StateHeld {
					t.Logf("%s: event of %s at cursor %d", what, sess.ID(), e.Cursor)
					return sess.ID()
				}
			case <-time.After(time.Until(end) + 10*time.Second):
				t.Fatalf("%s: no event of the held session %s", what, sess.ID())
			}
		}
	}
	held("a held proposal before the restart", 30*time.Second)

	limit.Step("kill the controller in the middle of the feed's long poll and start it again")
	time.Sleep(500 * time.Millisecond)
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	restarted := time.Now()
	startChild(t, n)
	t.Logf("the controller was ready again %s after it was killed", time.Since(restarted).Round(time.Millisecond))
	held("a held proposal after the restart", 90*time.Second)
}
