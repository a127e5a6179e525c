package sdktest

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/posture"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// TestSuspendAndResume is the kill switch end to end. A sending agent (the buyer) has a session under way and
// a live connection to a service. Its organisation's administrator suspends it: its live connection breaks, its
// next send fails at once, the session is closed with reason identity_suspended, a dial to the service and a
// proposal are refused, and a host refuses its certificate in the handshake within a second (the revocation
// feed). Resuming restores it: with the same identity file it dials, proposes and sends again.
func TestSuspendAndResume(t *testing.T) {
	limit := testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	limit.Step("build the world: a session under way and a live connection")
	terms := defaultTerms()
	terms.MaxMessages = 100
	w := newPricingWorld(t, terms)
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Send(ctx, "quote.request", []byte(`{"sku":"w-1"}`)); err != nil {
		t.Fatal(err)
	}
	svc := uniq("kill-echo")
	carrier := env.NewAgent(t, "acme", "agent", uniq("kill-carrier"))
	env.Grant(t, svc, []spiffeid.ID{w.quoter.ID()}, []spiffeid.ID{w.buyer.ID(), carrier.ID()})
	serveEcho(t, w.quoter, svc)
	live := dialEcho(t, ctx, w.buyer, svc)
	raw := rawContext(t, carrier.Identity())
	cert := stolenCert(t, w.buyer.Identity())
	if ok, got := presents(t, raw, svc, cert); !ok || got != w.buyer.ID().String() {
		t.Fatalf("before suspension the host did not accept the buyer's SVID: %v %q", ok, got)
	}

	limit.Step("suspend the buyer")
	resp, err := w.globex.Controller().Suspend(ctx, w.buyer.ID(), "sending at ten times its usual rate")
	if err != nil {
		t.Fatal(err)
	}
	suspended := time.Now()
	if !resp.Suspended || resp.SessionsClosed != 1 {
		t.Fatalf("suspend answered %+v, want suspended with 1 session closed", resp)
	}
	for {
		ok, got := presents(t, raw, svc, cert)
		if !ok {
			t.Logf("the host refused the suspended SVID %s after the suspension", time.Since(suspended).Round(time.Millisecond))
			break
		}
		if time.Since(suspended) > time.Second {
			t.Fatalf("the host still accepted the suspended SVID after a second (answered %q)", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	sendAt := time.Now()
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = sess.Send(sctx, "quote.request", []byte(`{"sku":"w-2"}`))
	scancel()
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a send after the suspension: %v, want a refusal", err)
	}
	t.Logf("the next send failed after %s: %v", time.Since(sendAt).Round(time.Millisecond), err)
	waitBroken(t, "the suspended agent's live connection", live)
	dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
	if c, err := w.buyer.Dial(dctx, svc); err == nil {
		c.Close()
		t.Fatal("the suspended agent dialled the service")
	}
	dcancel()
	pctx, pcancel := context.WithTimeout(ctx, 20*time.Second)
	_, err = w.buyer.Propose(pctx, w.ad.ID, workgroups.Proposal{})
	pcancel()
	if !errors.Is(err, agentsdk.ErrNotAuthorized) {
		t.Fatalf("a proposal of the suspended agent: %v, want ErrNotAuthorized", err)
	}
	view, err := w.globex.Controller().AuditSession(ctx, sess.ID())
	if err != nil {
		t.Fatal(err)
	}
	if view.Session.State != workgroups.StateClosed || view.Session.CloseReason != workgroups.CloseIdentitySuspended {
		t.Fatalf("the session after the suspension: %s %s, want closed identity_suspended", view.Session.State, view.Session.CloseReason)
	}
	// Suspending is for administrators of the identity's own organisation (or the platform).
	if _, err := w.acme.Controller().Resume(ctx, w.buyer.ID(), "not mine"); err == nil {
		t.Fatal("another organisation's administrator resumed the buyer")
	}

	limit.Step("resume the buyer; it connects again with the same identity file")
	if _, err := w.globex.Controller().Resume(ctx, w.buyer.ID(), "rate limit fixed"); err != nil {
		t.Fatal(err)
	}
	again, err := agentsdk.Connect(ctx, w.buyer.Identity())
	if err != nil {
		t.Fatalf("connecting again after the resume: %v", err)
	}
	t.Cleanup(func() { again.Close() })
	dialEcho(t, ctx, again, svc)
	if ok, got := presents(t, raw, svc, cert); !ok || got != w.buyer.ID().String() {
		t.Fatalf("after the resume the host still refused the buyer's SVID: %v %q", ok, got)
	}
	next, err := again.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatalf("a proposal after the resume: %v", err)
	}
	if _, err := next.Send(ctx, "quote.request", []byte(`{"sku":"w-3"}`)); err != nil {
		t.Fatalf("a send after the resume: %v", err)
	}
}

// TestPostureThroughTheAPI runs the inventory, the findings and the drift through the controller's API: an
// organisation administrator sees its own organisation only, a policy override finds an advertisement over it,
// and a change after the baseline shows as drift.
func TestPostureThroughTheAPI(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	terms := defaultTerms()
	terms.MaxMessages = 50
	w := newPricingWorld(t, terms)
	inv, err := w.globex.Controller().Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	buyer := w.buyer.ID().String()
	found := false
	for _, id := range inv.Identities {
		if orgOfID(id.SPIFFEID) != inv.Scope {
			t.Fatalf("globex's inventory (scope %s) lists %s", inv.Scope, id.SPIFFEID)
		}
		if id.SPIFFEID == buyer {
			found = id.State == "enrolled" && len(id.Workgroups) == 1 && !id.SVIDExpiresAt.IsZero() && !id.LastSeen.IsZero()
		}
	}
	if !found {
		t.Fatalf("globex's inventory does not show its buyer enrolled, in one workgroup, with SVID expiry and last seen: %+v", inv.Identities)
	}
	if len(inv.Advertisements) != 0 || len(inv.Workgroups) != 1 {
		t.Fatalf("globex sees %d advertisements (acme's) and %d workgroups, want 0 and 1", len(inv.Advertisements), len(inv.Workgroups))
	}
	if _, err := w.buyer.Controller().Inventory(ctx); !errors.Is(err, agentsdk.ErrNotAuthorized) {
		t.Fatalf("a non-administrator's inventory: %v, want ErrNotAuthorized", err)
	}

	rep, err := w.acme.Controller().Posture(ctx, url.Values{"max_messages": {"10"}})
	if err != nil {
		t.Fatal(err)
	}
	overAd := false
	for _, f := range rep.Findings {
		overAd = overAd || f.Check == posture.CheckAdMessages && f.Subject == w.ad.ID.String() && strings.Contains(f.Evidence, "max_messages 50")
	}
	if !overAd {
		t.Fatalf("acme's posture with at most 10 advertised messages has no finding for its advertisement: %+v", rep.Findings)
	}
	if rep.Drift != nil {
		t.Fatalf("drift without a baseline: %+v", rep.Drift)
	}
	if _, err := w.acme.Controller().Posture(ctx, url.Values{"stale_after": {"soon"}}); err == nil {
		t.Fatal("a malformed policy override was accepted")
	}

	// A gateway reports what it holds (as mcpgw does at start and on change); the inventory and the findings show
	// it, and a gateway reports on itself only.
	gw := env.NewAgent(t, inv.Scope, api.GatewayKind, uniq("gw"))
	report := api.GatewayReport{Service: uniq("mcpgw"), Servers: []api.GatewayServer{{Name: "crm", Kind: "overlay", Service: uniq("crm")}},
		Tools: []api.GatewayTool{{Name: "crm__lookup", Server: "crm", Digest: "d1", State: "quarantined"}}}
	rec := map[string]any{"kind": api.KindGatewayReportMCP, "actor": buyer, "decision": "allow", "data": report}
	if err := gw.Controller().AppendAudit(ctx, rec); err == nil {
		t.Fatal("a gateway's report on another identity was accepted")
	}
	rec["actor"] = gw.ID().String()
	if err := gw.Controller().AppendAudit(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if inv, err = w.globex.Controller().Inventory(ctx); err != nil {
		t.Fatal(err)
	}
	if len(inv.Gateways) != 1 || inv.Gateways[0].Kind != "mcp" || inv.Gateways[0].ReportedAt.IsZero() || len(inv.Tools) != 1 ||
		inv.Tools[0].Digest != "d1" || len(inv.Routers) != 0 {
		t.Fatalf("globex's inventory after its gateway reported: gateways %+v, tools %+v, routers %+v", inv.Gateways, inv.Tools, inv.Routers)
	}
	if rep, err = w.globex.Controller().Posture(ctx, nil); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{posture.CheckToolChanged: false, posture.CheckGatewayNoLimits: false, posture.CheckGatewayNoGuardrails: false}
	for _, f := range rep.Findings {
		if _, ok := want[f.Check]; ok && strings.HasPrefix(f.Subject, gw.ID().String()) {
			want[f.Check] = true
		}
	}
	for check, found := range want {
		if !found {
			t.Fatalf("no %s finding for the gateway that reported a quarantined tool, no limits and no guardrails: %+v", check, rep.Findings)
		}
	}
	platform, err := env.Admin().Controller().Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	online := 0
	for _, r := range platform.Routers {
		if r.Online && r.Enrolled {
			online++
		}
	}
	if online == 0 {
		t.Fatalf("the platform's inventory shows no enrolled router online: %+v", platform.Routers)
	}

	if _, err := w.globex.Controller().RecordBaseline(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.globex.Controller().Suspend(ctx, w.buyer.ID(), "posture drill"); err != nil {
		t.Fatal(err)
	}
	rep, err = w.globex.Controller().Posture(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Drift == nil || len(rep.Drift.Changed) != 1 || rep.Drift.Changed[0] != "identity:"+buyer || len(rep.Drift.Added)+len(rep.Drift.Removed) != 0 {
		t.Fatalf("drift after suspending the buyer: %+v", rep.Drift)
	}
	suspended := false
	for _, f := range rep.Findings {
		suspended = suspended || f.Check == posture.CheckStillSuspended && f.Subject == buyer && strings.Contains(f.Evidence, "posture drill")
	}
	if !suspended {
		t.Fatalf("no finding for the suspended buyer: %+v", rep.Findings)
	}
}

func orgOfID(raw string) string {
	id, err := spiffeid.FromString(raw)
	if err != nil {
		return ""
	}
	org, _, _ := strings.Cut(strings.TrimPrefix(id.Path(), "/"), "/")
	return org
}

// TestSuspendedHostHostsAgainOnResume: an agent that hosts a service is suspended, which ends its binds, and then
// resumed. The same agent (not connected anew) hosts the service again on its own, and a caller reaches it.
// After the resume the overlay SDK binds with a service session of the API session the suspension ended, which
// the router refuses, and binds again at once: thousands of times before the agent moved to a new overlay
// session. The agent must stop that after a few turns; the router's refusals are counted from its log.
func TestSuspendedHostHostsAgainOnResume(t *testing.T) {
	limit := testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	host := env.NewAgent(t, "acme", "agent", uniq("susp-host"))
	caller := env.NewAgent(t, "acme", "agent", uniq("susp-caller"))
	svc := uniq("susp-echo")
	env.Grant(t, svc, []spiffeid.ID{host.ID()}, []spiffeid.ID{caller.ID()})
	ln := serveEcho(t, host, svc)
	hctx, hcancel := context.WithTimeout(ctx, time.Minute)
	err := agentsdk.WaitHosted(hctx, ln)
	hcancel()
	if err != nil {
		t.Fatal(err)
	}
	dialEcho(t, ctx, caller, svc).Close()

	limit.Step("suspend the host")
	if _, err := env.Admin().Controller().Suspend(ctx, host.ID(), "test"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	// From here on the router's refusals of a bind with a stale service session are counted from its log.
	refusals := env.CountOverlayLog(t, "unable to verify service session token")
	limit.Step("resume the host; it hosts the service again by itself")
	if _, err := env.Admin().Controller().Resume(ctx, host.ID(), "test"); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	for {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := caller.Dial(dctx, svc)
		dcancel()
		if err == nil {
			c.Close()
			break
		}
		if time.Since(resumed) > 2*time.Minute {
			t.Fatalf("the resumed host is not reachable after 2 minutes: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	reachable := time.Since(resumed)
	time.Sleep(2 * time.Second)
	n := refusals.Load()
	t.Logf("reachable %s after the resume; the router refused %d binds or unbinds with a stale service session", reachable.Round(time.Millisecond), n)
	if n > 200 {
		t.Fatalf("the router refused %d binds or unbinds with a stale service session after the resume, want at most 200: the host binds over and over", n)
	}
}
