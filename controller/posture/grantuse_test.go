package posture_test

import (
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/controller/posture"
)

// TestUnusedServiceGrants judges plain dial and bind grants by the overlay's grant-use records, and a gateway's
// dial grant by either source, from the clean platform: buyer may dial prices and mcpgw (the MCP gateway's
// service), quoter may bind prices.
func TestUnusedServiceGrants(t *testing.T) {
	buyer, quoter := sid("globex", "agent", "buyer").String(), sid("acme", "agent", "quoter").String()
	old := now.Add(-45 * 24 * time.Hour)
	for _, tc := range []struct {
		name    string
		change  func(st *posture.State)
		unused  map[string]string // subject -> what its grant-unused evidence names; absent: no finding
		unknown string            // what the grant-use-unknown evidence names; "": no such finding
	}{
		{"every grant used", func(*posture.State) {}, nil, ""},
		{"dial of a plain service not used for 45 days", func(st *posture.State) { st.GrantUse.Dial[buyer]["prices"] = old },
			map[string]string{buyer: "dial prices (no circuit dialed on the overlay)"}, ""},
		{"dial of a plain service never used", func(st *posture.State) { delete(st.GrantUse.Dial[buyer], "prices") },
			map[string]string{buyer: "dial prices (no circuit dialed on the overlay)"}, ""},
		{"bind never used", func(st *posture.State) { delete(st.GrantUse.Bind, quoter) },
			map[string]string{quoter: "bind prices (no circuit hosted and no listening on the overlay)"}, ""},
		{"identity old, grant new: not reported", func(st *posture.State) {
			delete(st.GrantUse.Dial[buyer], "prices")
			grantedAt(st, buyer, "dial:prices", now.Add(-10*24*time.Hour))
		}, nil, ""},
		{"identity old, grant recorded old: reported", func(st *posture.State) {
			delete(st.GrantUse.Dial[buyer], "prices")
			grantedAt(st, buyer, "dial:prices", old)
		}, map[string]string{buyer: "dial prices (no circuit dialed on the overlay)"}, ""},
		{"a use recorded within one granularity before the cutoff may be after it", func(st *posture.State) {
			st.GrantUse.Bind[quoter]["prices"] = now.Add(-30*24*time.Hour - 30*time.Minute)
		}, nil, ""},
		{"a use recorded more than one granularity before the cutoff is not", func(st *posture.State) {
			st.GrantUse.Bind[quoter]["prices"] = now.Add(-30*24*time.Hour - 61*time.Minute)
		}, map[string]string{quoter: "bind prices"}, ""},
		{"gateway dial: the audit's call is enough", func(st *posture.State) { delete(st.GrantUse.Dial[buyer], "mcpgw") }, nil, ""},
		{"gateway dial: the overlay's circuit is enough", func(st *posture.State) { delete(st.Usage.Gateways, buyer) }, nil, ""},
		{"recording began after the cutoff: service grants not judged", func(st *posture.State) {
			st.GrantUse.Since = now.Add(-10 * 24 * time.Hour)
			delete(st.GrantUse.Dial[buyer], "prices")
			delete(st.GrantUse.Bind, quoter)
		}, nil, "6 service grants (the overlay's grant-use records, kept since 2026-11-24T12:00:00Z at a granularity of 1h0m0s)"},
		{"never recorded: the gateway's grant is still judged by the audit", func(st *posture.State) {
			st.GrantUse = posture.GrantUse{}
			delete(st.Usage.Gateways, buyer)
		}, map[string]string{buyer: "dial mcpgw (no call through gateway " + mcpGW.String() + ")"},
			"6 service grants (no overlay grant-use records (recording never began))"},
		{"both sources short: nothing judged", func(st *posture.State) {
			st.GrantUse.Since = now.Add(-time.Hour)
			st.Usage.FromStart, st.Usage.From = false, now.Add(-time.Hour)
			delete(st.GrantUse.Dial, buyer)
			delete(st.Usage.Gateways, buyer)
		}, nil, "7 service grants (the overlay's grant-use records, kept since 2026-12-04T11:00:00Z at a granularity of 1h0m0s); 3 workgroup memberships"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := clean(t)
			tc.change(&st)
			var unknown string
			got := map[string]string{}
			for _, f := range posture.Findings(st, posture.Scope{}, posture.Policy{}) {
				switch f.Check {
				case posture.CheckUnusedGrant:
					got[f.Subject] = f.Evidence
				case posture.CheckUsageUnknown:
					unknown = f.Evidence
				default:
					t.Fatalf("unexpected finding %s %s", f.Check, f.Subject)
				}
			}
			if len(got) != len(tc.unused) {
				t.Fatalf("grant-unused findings for %v, want for %v", got, tc.unused)
			}
			for subject, want := range tc.unused {
				if !strings.Contains(got[subject], want) {
					t.Fatalf("grant-unused evidence of %s is %q, want it to name %q", subject, got[subject], want)
				}
			}
			if tc.unknown == "" && unknown != "" || !strings.Contains(unknown, tc.unknown) {
				t.Fatalf("grant-use-unknown evidence %q, want %q", unknown, tc.unknown)
			}
		})
	}
}

// grantedAt records when subject's grant key was given.
func grantedAt(st *posture.State, subject, key string, at time.Time) {
	for i := range st.Identities {
		if st.Identities[i].ID.String() == subject {
			st.Identities[i].Granted = map[string]time.Time{key: at}
		}
	}
}

func TestInventoryNamesLastUse(t *testing.T) {
	st := clean(t)
	inv := posture.Inventory(st, posture.Scope{})
	buyer := sid("globex", "agent", "buyer").String()
	for _, id := range inv.Identities {
		if id.SPIFFEID != buyer {
			continue
		}
		want := now.Add(-5 * 24 * time.Hour)
		if len(id.LastUsed) != 2 || !id.LastUsed["dial:prices"].Equal(want) || !id.LastUsed["dial:mcpgw"].Equal(want) {
			t.Fatalf("buyer's last uses %v, want dial:prices and dial:mcpgw at %s", id.LastUsed, want)
		}
		before := posture.Items(inv)
		st.GrantUse.Dial[buyer]["prices"] = now
		if after := posture.Items(posture.Inventory(st, posture.Scope{})); after["identity:"+buyer] != before["identity:"+buyer] {
			t.Fatal("a new use changed the identity's drift digest: use is not a change anyone made")
		}
		return
	}
	t.Fatalf("buyer missing from the inventory")
}
