package posture_test

import (
	"crypto/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/posture"
	"github.com/umbra-mesh/umbra/workgroups"
)

var now = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func sid(org, kind, name string) spiffeid.ID {
	return spiffeid.RequireFromSegments(spiffeid.RequireTrustDomainFromString("umbra.local"), org, kind, name)
}

func ident(org, kind, name string, state string, lastSeen time.Time) posture.Identity {
	return posture.Identity{ID: sid(org, kind, name), Org: org, Kind: kind, Name: name, State: state,
		CreatedAt: now.Add(-90 * 24 * time.Hour), EnrolledAt: lastSeen, LastSeen: lastSeen, SVIDExpiresAt: lastSeen.Add(time.Hour)}
}

func ad(t *testing.T, provider spiffeid.ID, name string, msgs uint64, d time.Duration, wg workgroups.WorkgroupID) workgroups.Advertisement {
	t.Helper()
	id, err := workgroups.NewAdvertisementID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return workgroups.Advertisement{ID: id, Provider: provider, Workgroups: []workgroups.WorkgroupID{wg},
		Card:  workgroups.AgentCard{Name: name, Version: "1"},
		Terms: workgroups.Terms{MaxMessages: msgs, MaxDuration: workgroups.Duration(d), AllowedMessageTypes: []string{"q.*"}, MaxEnvelopeBytes: 1024}}
}

// clean is a platform that meets the default policy: two organisations, an inter-organisation workgroup both
// accepted, members of both, a bounded advertisement, identities seen within the hour.
func clean(t *testing.T) posture.State {
	t.Helper()
	seen := now.Add(-time.Hour)
	quoter := ident("acme", "agent", "quoter", posture.StateEnrolled, seen)
	quoter.Bind = []string{"prices"}
	buyer := ident("globex", "agent", "buyer", posture.StateEnrolled, seen)
	buyer.Dial = []string{"prices"}
	acmeAdmin := ident("acme", "admin", "admin", posture.StateEnrolled, seen)
	acmeAdmin.Admin = true
	globexAdmin := ident("globex", "admin", "admin", posture.StateEnrolled, seen)
	globexAdmin.Admin = true
	wgID := workgroups.WorkgroupID{Org: "acme", Name: "pricing"}
	w, err := workgroups.NewWorkgroup(wgID, workgroups.ScopeInterOrg, acmeAdmin.ID, []string{"globex"}, now.Add(-48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	w.Invitations[0].State = workgroups.InvitationAccepted
	w.Members = append(w.Members, workgroups.Member{Identity: quoter.ID, Role: workgroups.RoleMember, Since: now},
		workgroups.Member{Identity: buyer.ID, Role: workgroups.RoleMember, Since: now})
	return posture.State{Now: now, SVIDLifetime: time.Hour, PlatformOrg: "umbra",
		Orgs:           []posture.Org{{Name: "acme", CreatedAt: now.Add(-100 * 24 * time.Hour)}, {Name: "globex", CreatedAt: now.Add(-100 * 24 * time.Hour)}},
		Identities:     []posture.Identity{quoter, buyer, acmeAdmin, globexAdmin},
		Workgroups:     []workgroups.Workgroup{w},
		Advertisements: []workgroups.Advertisement{ad(t, quoter.ID, "Quoter", 100, time.Hour, wgID)}}
}

func checks(fs []api.Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Check+" "+f.Subject)
	}
	return out
}

func TestCleanPlatformHasNoFindings(t *testing.T) {
	if fs := posture.Findings(clean(t), posture.Scope{}, posture.Policy{}); len(fs) != 0 {
		t.Fatalf("a platform within policy has findings: %v", checks(fs))
	}
}

// TestFindings builds one scenario per check from the clean platform and expects exactly that finding, with
// evidence naming the offending value.
func TestFindings(t *testing.T) {
	for _, tc := range []struct {
		name     string
		change   func(st *posture.State)
		check    string
		subject  string
		severity string
		evidence string
	}{
		{"SVID lifetime over policy", func(st *posture.State) { st.SVIDLifetime = 72 * time.Hour },
			posture.CheckSVIDLifetime, "platform", api.SeverityHigh, "72h0m0s"},
		{"advertisement with practically unlimited messages", func(st *posture.State) { st.Advertisements[0].Terms.MaxMessages = 1 << 40 },
			posture.CheckAdMessages, "", api.SeverityMedium, "1099511627776"},
		{"advertisement with practically unlimited duration", func(st *posture.State) {
			st.Advertisements[0].Terms.MaxDuration = workgroups.Duration(30 * 24 * time.Hour)
		}, posture.CheckAdDuration, "", api.SeverityMedium, "720h0m0s"},
		{"identity not seen for 45 days", func(st *posture.State) { st.Identities[1].LastSeen = now.Add(-45 * 24 * time.Hour) },
			posture.CheckStaleIdentity, sid("globex", "agent", "buyer").String(), api.SeverityLow, "45 days"},
		{"identity never enrolled", func(st *posture.State) {
			st.Identities = append(st.Identities, posture.Identity{ID: sid("acme", "agent", "ghost"), Org: "acme", Kind: "agent",
				Name: "ghost", State: posture.StatePending, CreatedAt: now.Add(-40 * 24 * time.Hour)})
		}, posture.CheckNeverEnrolled, sid("acme", "agent", "ghost").String(), api.SeverityLow, "40 days"},
		{"more administrators than policy allows", func(st *posture.State) {
			for _, n := range []string{"a2", "a3", "a4"} {
				a := ident("acme", "admin", n, posture.StateEnrolled, now)
				a.Admin = true
				st.Identities = append(st.Identities, a)
			}
		}, posture.CheckTooManyAdmins, "acme", api.SeverityMedium, "a4"},
		{"member of an organisation that left", func(st *posture.State) { st.Orgs = st.Orgs[:1] },
			posture.CheckForeignMember, "acme/pricing/" + sid("globex", "agent", "buyer").String(), api.SeverityHigh, "organisation globex"},
		{"member whose organisation declined", func(st *posture.State) { st.Workgroups[0].Invitations[0].State = workgroups.InvitationDeclined },
			posture.CheckForeignMember, "acme/pricing/" + sid("globex", "agent", "buyer").String(), api.SeverityHigh, "organisation globex"},
		{"revoked member", func(st *posture.State) { st.Identities[0].State = posture.StateRevoked },
			posture.CheckRevokedMember, "acme/pricing/" + sid("acme", "agent", "quoter").String(), api.SeverityLow, "no live identity"},
		{"suspended identity", func(st *posture.State) {
			st.Identities[1].State, st.Identities[1].SuspendReason = posture.StateSuspended, "odd traffic"
		}, posture.CheckStillSuspended, sid("globex", "agent", "buyer").String(), api.SeverityInfo, "odd traffic"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := clean(t)
			tc.change(&st)
			if tc.subject == "" {
				tc.subject = st.Advertisements[0].ID.String()
			}
			fs := posture.Findings(st, posture.Scope{}, posture.Policy{})
			if len(fs) != 1 || fs[0].Check != tc.check || fs[0].Subject != tc.subject || fs[0].Severity != tc.severity {
				t.Fatalf("findings %v, want exactly %s %s (%s)", checks(fs), tc.check, tc.subject, tc.severity)
			}
			if f := fs[0]; !strings.Contains(f.Evidence, tc.evidence) || f.Fix == "" || f.Summary == "" {
				t.Fatalf("finding %+v: evidence should name %q and a fix and summary are required", f, tc.evidence)
			}
		})
	}
}

func TestFindingsOrderedAndScoped(t *testing.T) {
	st := clean(t)
	st.SVIDLifetime = 48 * time.Hour
	st.Identities[1].LastSeen = now.Add(-60 * 24 * time.Hour) // globex's buyer
	st.Advertisements[0].Terms.MaxMessages = 1 << 30          // acme's advertisement
	fs := posture.Findings(st, posture.Scope{}, posture.Policy{})
	if got := checks(fs); len(got) != 3 || fs[0].Severity != api.SeverityHigh || fs[2].Severity != api.SeverityLow {
		t.Fatalf("platform findings %v: want three, most severe first", got)
	}
	for _, f := range posture.Findings(st, posture.Scope{Org: "acme"}, posture.Policy{}) {
		if f.Check == posture.CheckStaleIdentity {
			t.Fatalf("acme's scope shows globex's identity: %+v", f)
		}
	}
	// A stricter policy finds what the default allows.
	if fs := posture.Findings(clean(t), posture.Scope{}, posture.Policy{MaxAdvertisedMessages: 10}); len(fs) != 1 || fs[0].Check != posture.CheckAdMessages {
		t.Fatalf("with max 10 advertised messages: %v", checks(fs))
	}
	if !posture.AtLeast(api.SeverityHigh, api.SeverityMedium) || posture.AtLeast(api.SeverityLow, api.SeverityMedium) {
		t.Fatal("severity order is wrong")
	}
	if _, err := posture.ParseSeverity("urgent"); err == nil {
		t.Fatal("an unknown severity was accepted")
	}
}

func TestInventoryScope(t *testing.T) {
	st := clean(t)
	all := posture.Inventory(st, posture.Scope{})
	if len(all.Identities) != 4 || len(all.Organisations) != 2 || len(all.Advertisements) != 1 || len(all.Workgroups) != 1 {
		t.Fatalf("platform inventory: %d identities, %d orgs, %d ads, %d workgroups", len(all.Identities), len(all.Organisations), len(all.Advertisements), len(all.Workgroups))
	}
	if len(all.Services) != 1 || all.Services[0].Name != "prices" || len(all.Services[0].Bind) != 1 || len(all.Services[0].Dial) != 1 {
		t.Fatalf("services %+v", all.Services)
	}
	globex := posture.Inventory(st, posture.Scope{Org: "globex"})
	for _, id := range globex.Identities {
		if id.Org != "globex" {
			t.Fatalf("globex's inventory lists %s", id.SPIFFEID)
		}
	}
	if len(globex.Identities) != 2 || len(globex.Advertisements) != 0 || len(globex.Workgroups) != 1 {
		t.Fatalf("globex inventory: %d identities, %d ads, %d workgroups", len(globex.Identities), len(globex.Advertisements), len(globex.Workgroups))
	}
	if s := globex.Services; len(s) != 1 || len(s[0].Bind) != 0 || s[0].Dial[0] != sid("globex", "agent", "buyer").String() {
		t.Fatalf("globex sees services %+v: another organisation's grantee leaked", s)
	}
	if w := all.Identities; !slices.IsSortedFunc(w, func(a, b api.InventoryIdentity) int { return strings.Compare(a.SPIFFEID, b.SPIFFEID) }) {
		t.Fatal("identities are not sorted")
	}
}

func TestDrift(t *testing.T) {
	st := clean(t)
	base := posture.Items(posture.Inventory(st, posture.Scope{}))
	// Time passing (renewals, last seen) is not drift.
	st.Now = now.Add(2 * time.Hour)
	st.Identities[0].LastSeen, st.Identities[0].SVIDExpiresAt = now.Add(time.Hour), now.Add(3*time.Hour)
	if d := posture.Diff(base, now, posture.Items(posture.Inventory(st, posture.Scope{}))); len(d.Added)+len(d.Removed)+len(d.Changed) != 0 {
		t.Fatalf("renewals alone drifted: %+v", d)
	}
	st.Identities[1].Dial = append(st.Identities[1].Dial, "orders") // changed, and a new service
	st.Identities = append(st.Identities[:2], st.Identities[3])     // acme's admin removed
	st.Advertisements[0].Terms.MaxMessages = 500                    // changed
	d := posture.Diff(base, now, posture.Items(posture.Inventory(st, posture.Scope{})))
	want := api.Drift{BaselineAt: now, Added: []string{"service:orders"},
		Removed: []string{"identity:" + sid("acme", "admin", "admin").String()},
		Changed: []string{"advertisement:" + st.Advertisements[0].ID.String(), "identity:" + sid("globex", "agent", "buyer").String()}}
	if !slices.Equal(d.Added, want.Added) || !slices.Equal(d.Removed, want.Removed) || !slices.Equal(d.Changed, want.Changed) {
		t.Fatalf("drift %+v\nwant  %+v", d, want)
	}
}
