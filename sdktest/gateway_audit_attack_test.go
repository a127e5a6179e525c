package sdktest

import (
	"bufio"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// TestGatewayAuditScope attacks the audit stream as a gateway would that tries to speak beyond the callers it
// served: it names an actor for a session or workgroup the actor is not a party to, and back-dates a record.
// The controller refuses the first two and times every gateway record itself.
func TestGatewayAuditScope(t *testing.T) {
	limit := testlimit.Start(t, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	limit.Step("build the pricing world and a session")
	w := newPricingWorld(t, defaultTerms())
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	org := orgName(t, w.quoter.ID())
	gw := env.NewAgent(t, org, "gateway", uniq("gw"))

	rec := func(actor, session, wg, reason string) map[string]any {
		return map[string]any{"kind": "mcp.call", "actor": actor, "session": session, "workgroup": wg, "reason": reason,
			"time": "2000-01-01T00:00:00Z", "decision": "allow"}
	}
	outsider, buyer := w.outside.ID().String(), w.buyer.ID().String()
	for _, tc := range []struct {
		name   string
		record map[string]any
		ok     bool
	}{
		{"outsider tied to the session", rec(outsider, sess.ID().String(), "", "attack-1"), false},
		{"outsider tied to the workgroup", rec(outsider, "", w.wg.String(), "attack-2"), false},
		{"party tied to a session in another workgroup", rec(buyer, sess.ID().String(), org+"/elsewhere", "attack-3"), false},
		{"party tied to a made-up session", rec(buyer, "ses_aaaaaaaaaaaaaaaaaaaaaaaaaa", "", "attack-4"), false},
		{"party tied to its session", rec(buyer, sess.ID().String(), w.wg.String(), "honest-1"), true},
		{"member tied to its workgroup", rec(buyer, "", w.wg.String(), "honest-2"), true},
	} {
		limit.Step("append %s", tc.name)
		err := gw.Controller().AppendAudit(ctx, tc.record)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want accepted=%v", tc.name, err, tc.ok)
		}
	}

	limit.Step("read the audit export")
	resp, err := env.Admin().Controller().AuditExport(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var r struct {
			Time   time.Time `json:"time"`
			Reason string    `json:"reason"`
			Data   struct {
				Via string `json:"via"`
			} `json:"data"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(r.Reason, "attack-") && !strings.HasPrefix(r.Reason, "honest-") {
			continue
		}
		seen[r.Reason] = true
		if strings.HasPrefix(r.Reason, "attack-") {
			t.Errorf("refused record %s is in the audit trail", r.Reason)
		}
		if time.Since(r.Time) > 5*time.Minute {
			t.Errorf("record %s carries the gateway's time %s, want the controller's", r.Reason, r.Time)
		}
		if r.Data.Via != gw.ID().String() {
			t.Errorf("record %s names %q as the writer, want the gateway %s", r.Reason, r.Data.Via, gw.ID())
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !seen["honest-1"] || !seen["honest-2"] {
		t.Errorf("accepted records missing from the audit trail: %v", seen)
	}
}
