package sdktest

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/posture"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// TestGrantUse: on the real overlay, a host that listens on a service and an agent that dials it have their
// grants recorded as used (the shared controller records at a granularity of one second); an agent granted the
// same dial that never dials gets grant-unused naming it, judged over a window of a few seconds.
func TestGrantUse(t *testing.T) {
	limit := testlimit.Start(t, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	limit.Step("a host, a dialer and an idle agent granted one service")
	svc := uniq("used-echo")
	host := env.NewAgent(t, "acme", "agent", uniq("use-host"))
	dialer := env.NewAgent(t, "acme", "agent", uniq("use-dialer"))
	// The idle agent is created last: once its grant is old enough to be judged, so are the others'.
	idle := env.NewAgent(t, "acme", "agent", uniq("use-idle"))
	env.Grant(t, svc, []spiffeid.ID{host.ID()}, []spiffeid.ID{dialer.ID(), idle.ID()})
	serveEcho(t, host, svc)
	conn := dialEcho(t, ctx, dialer, svc)

	limit.Step("the inventory names the dial and the bind as used")
	const window = 6 * time.Second
	started := time.Now()
	var last map[string]map[string]time.Time
	for {
		inv, err := env.Admin().Controller().Inventory(ctx)
		if err != nil {
			t.Fatal(err)
		}
		last = map[string]map[string]time.Time{}
		for _, id := range inv.Identities {
			last[id.SPIFFEID] = id.LastUsed
		}
		if !last[dialer.ID().String()]["dial:"+svc].IsZero() && !last[host.ID().String()]["bind:"+svc].IsZero() {
			break
		}
		if time.Since(started) > 30*time.Second {
			t.Fatalf("after 30 s the inventory shows no dial of %s by the dialer or no bind by the host: dialer %v, host %v",
				svc, last[dialer.ID().String()], last[host.ID().String()])
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := last[idle.ID().String()]["dial:"+svc]; !got.IsZero() {
		t.Fatalf("the idle agent, which never dialed %s, has a recorded use at %s", svc, got)
	}
	t.Logf("dial and bind in the inventory %s after the dial", time.Since(started).Round(time.Millisecond))

	limit.Step("over a window of seconds, only the idle agent's grant is unused")
	// The connection stays open: the controller notes it in use every granularity, as it would a long download.
	defer conn.Close()
	unusedOf := func(rep api.PostureReport, id spiffeid.ID) string {
		for _, f := range rep.Findings {
			if f.Check == posture.CheckUnusedGrant && f.Subject == id.String() {
				return f.Evidence
			}
		}
		return ""
	}
	q := url.Values{"unused_after": {window.String()}}
	for deadline := time.Now().Add(30 * time.Second); ; {
		rep, err := env.Admin().Controller().Posture(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		idleEv := unusedOf(rep, idle.ID())
		if strings.Contains(idleEv, "dial "+svc+" (no circuit dialed on the overlay") {
			if ev := unusedOf(rep, dialer.ID()); strings.Contains(ev, svc) {
				t.Fatalf("the dialer's dial of %s, open now, is judged unused: %s", svc, ev)
			}
			if ev := unusedOf(rep, host.ID()); strings.Contains(ev, svc) {
				t.Fatalf("the host's bind of %s, listening now, is judged unused: %s", svc, ev)
			}
			if !strings.Contains(idleEv, "the overlay's grant-use records, kept since") {
				t.Fatalf("the evidence does not name what was read: %s", idleEv)
			}
			t.Logf("idle agent: %s", idleEv)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no grant-unused finding for the idle agent's dial of %s over %s; its evidence: %q", svc, window, idleEv)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
