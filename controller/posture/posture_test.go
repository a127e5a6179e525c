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
	"github.com/umbra-mesh/umbra/internal/audit"
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

// Gateways of the clean platform: acme's MCP gateway in front of a dark MCP server, globex's LLM gateway in
// front of a dark model server; only they may dial those servers.
var (
	mcpGW = sid("acme", "gateway", "mcp")
	llmGW = sid("globex", "gateway", "llm")
)

// clean is a platform that meets the default policy: two organisations, an inter-organisation workgroup both
// accepted, members of both that used it this week, a bounded advertisement, identities seen within the hour,
// two gateways that reported limits, guardrails and approved tools, and an audit trail read from its start.
func clean(t *testing.T) posture.State {
	t.Helper()
	seen := now.Add(-time.Hour)
	quoter := ident("acme", "agent", "quoter", posture.StateEnrolled, seen)
	quoter.Bind = []string{"prices"}
	buyer := ident("globex", "agent", "buyer", posture.StateEnrolled, seen)
	buyer.Dial = []string{"prices", "mcpgw"}
	mcpID := ident("acme", api.GatewayKind, "mcp", posture.StateEnrolled, seen)
	mcpID.Dial, mcpID.Bind = []string{"crm-mcp"}, []string{"mcpgw"}
	llmID := ident("globex", api.GatewayKind, "llm", posture.StateEnrolled, seen)
	llmID.Dial, llmID.Bind = []string{"ollama"}, []string{"llmgw"}
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
	reports := map[string]posture.GatewayReport{
		mcpGW.String(): {Kind: "mcp", At: seen, GatewayReport: api.GatewayReport{Service: "mcpgw",
			Servers:    []api.GatewayServer{{Name: "crm", Kind: "overlay", Service: "crm-mcp"}},
			Tools:      []api.GatewayTool{{Name: "crm__lookup", Server: "crm", Digest: "d1", State: "approved"}},
			Limits:     []string{"each caller: 120 calls/min"},
			Guardrails: []string{"tool definitions pinned"}}},
		llmGW.String(): {Kind: "llm", At: seen, GatewayReport: api.GatewayReport{Service: "llmgw",
			Models:     []api.GatewayModel{{Name: "small", Endpoints: []api.GatewayEndpoint{{Provider: "openai-compatible", Service: "ollama"}}}},
			Limits:     []string{"organisation globex: 200000 tokens/day"},
			Guardrails: []string{"pii:redact"}}},
	}
	var u posture.Usage
	for _, r := range []audit.Record{
		{Time: now.Add(-60 * 24 * time.Hour), Kind: "org.created", Actor: "spiffe://umbra.local/umbra/admin/admin"},
		{Time: now.Add(-20 * 24 * time.Hour), Kind: "workgroup.member_added", Actor: acmeAdmin.ID.String(), Workgroup: wgID.String(), Decision: "allow"},
		{Time: now.Add(-3 * 24 * time.Hour), Kind: "session.transition", Actor: buyer.ID.String(), Session: "s1", Workgroup: wgID.String(), Decision: "allow"},
		{Time: now.Add(-3 * 24 * time.Hour), Kind: "envelope.accepted", Actor: quoter.ID.String(), Session: "s1", Decision: "allow"},
		{Time: now.Add(-2 * 24 * time.Hour), Kind: "mcp.call", Actor: buyer.ID.String(), Decision: "allow",
			Data: []byte(`{"via":"` + mcpGW.String() + `","detail":{"tool":"crm__lookup"}}`)},
	} {
		u.Add(r)
	}
	u.FromStart = true
	// The overlay showed every dial and bind grant in use this week, and has been recording for 60 days.
	used := now.Add(-5 * 24 * time.Hour)
	g := posture.GrantUse{Since: now.Add(-60 * 24 * time.Hour), Granularity: time.Hour,
		Dial: map[string]map[string]time.Time{}, Bind: map[string]map[string]time.Time{}}
	for _, id := range []posture.Identity{quoter, buyer, mcpID, llmID} {
		for _, svc := range id.Dial {
			if g.Dial[id.ID.String()] == nil {
				g.Dial[id.ID.String()] = map[string]time.Time{}
			}
			g.Dial[id.ID.String()][svc] = used
		}
		for _, svc := range id.Bind {
			if g.Bind[id.ID.String()] == nil {
				g.Bind[id.ID.String()] = map[string]time.Time{}
			}
			g.Bind[id.ID.String()][svc] = used
		}
	}
	return posture.State{Now: now, SVIDLifetime: time.Hour, PlatformOrg: "umbra",
		Orgs:           []posture.Org{{Name: "acme", CreatedAt: now.Add(-100 * 24 * time.Hour)}, {Name: "globex", CreatedAt: now.Add(-100 * 24 * time.Hour)}},
		Identities:     []posture.Identity{quoter, buyer, acmeAdmin, globexAdmin, mcpID, llmID},
		Workgroups:     []workgroups.Workgroup{w},
		Advertisements: []workgroups.Advertisement{ad(t, quoter.ID, "Quoter", 100, time.Hour, wgID)},
		Reports:        reports,
		Routers:        []api.InventoryRouter{{Name: "edge-1", Online: true, Enrolled: true, Version: "v1.7.2"}},
		Usage:          u,
		GrantUse:       g}
}

// useDial records on the overlay that id dialed svc an hour ago.
func useDial(st *posture.State, id posture.Identity, svc string) {
	if st.GrantUse.Dial[id.ID.String()] == nil {
		st.GrantUse.Dial[id.ID.String()] = map[string]time.Time{}
	}
	st.GrantUse.Dial[id.ID.String()][svc] = now.Add(-time.Hour)
}

// report changes the report of gateway id in st.
func report(st *posture.State, id spiffeid.ID, change func(r *posture.GatewayReport)) {
	r := st.Reports[id.String()]
	change(&r)
	st.Reports[id.String()] = r
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
		{"workgroup membership unused", func(st *posture.State) { delete(st.Usage.Workgroups, sid("globex", "agent", "buyer").String()) },
			posture.CheckUnusedGrant, sid("globex", "agent", "buyer").String(), api.SeverityLow, "workgroup acme/pricing"},
		{"dial grant of a gateway unused", func(st *posture.State) {
			delete(st.Usage.Gateways, sid("globex", "agent", "buyer").String())
			delete(st.GrantUse.Dial[sid("globex", "agent", "buyer").String()], "mcpgw")
		}, posture.CheckUnusedGrant, sid("globex", "agent", "buyer").String(), api.SeverityLow,
			"dial mcpgw (no circuit dialed on the overlay; no call through gateway " + mcpGW.String()},
		{"audit read too short to judge workgroup memberships", func(st *posture.State) {
			st.Usage.FromStart, st.Usage.From = false, now.Add(-10*24*time.Hour)
		}, posture.CheckUsageUnknown, "platform", api.SeverityInfo, "3 workgroup memberships (5 audit records read from 2026-11-24"},
		{"reach far above the peers' median", func(st *posture.State) {
			for i := range 4 {
				a := ident("acme", "agent", "peer"+string(rune('a'+i)), posture.StateEnrolled, now)
				a.CreatedAt = now // too new for its grants' use to be judged
				a.Dial = []string{"prices"}
				st.Identities = append(st.Identities, a)
			}
			big := ident("acme", "agent", "octopus", posture.StateEnrolled, now)
			big.CreatedAt = now
			for i := range 10 {
				big.Dial = append(big.Dial, "svc"+string(rune('a'+i)))
			}
			st.Identities = append(st.Identities, big)
		}, posture.CheckReachOutlier, sid("acme", "agent", "octopus").String(), api.SeverityMedium, "10 in all; the median of the 7 live identities of kind agent is 1"},
		{"gateway without limits", func(st *posture.State) { report(st, llmGW, func(r *posture.GatewayReport) { r.Limits = nil }) },
			posture.CheckGatewayNoLimits, llmGW.String(), api.SeverityMedium, "lists no limits"},
		{"gateway without guardrails", func(st *posture.State) { report(st, llmGW, func(r *posture.GatewayReport) { r.Guardrails = nil }) },
			posture.CheckGatewayNoGuardrails, llmGW.String(), api.SeverityMedium, "lists no guardrails"},
		{"gateway that never reported", func(st *posture.State) { delete(st.Reports, mcpGW.String()) },
			posture.CheckGatewayUnreported, mcpGW.String(), api.SeverityLow, "mcp.inventory"},
		{"tool held without an approved pin", func(st *posture.State) {
			report(st, mcpGW, func(r *posture.GatewayReport) {
				r.Tools = []api.GatewayTool{{Name: "crm__lookup", Server: "crm", Digest: "d2", State: "pending"}}
			})
		}, posture.CheckToolUnpinned, mcpGW.String() + "/crm__lookup", api.SeverityLow, "state pending"},
		{"tool definition changed after approval", func(st *posture.State) {
			report(st, mcpGW, func(r *posture.GatewayReport) {
				r.Tools = []api.GatewayTool{{Name: "crm__lookup", Server: "crm", Digest: "d2", State: "quarantined"}}
			})
		}, posture.CheckToolChanged, mcpGW.String() + "/crm__lookup", api.SeverityMedium, "definition d2"},
		{"tool definition changed since the baseline", func(st *posture.State) {
			st.Baseline = posture.Items(posture.Inventory(*st, posture.Scope{}))
			report(st, mcpGW, func(r *posture.GatewayReport) {
				r.Tools = []api.GatewayTool{{Name: "crm__lookup", Server: "crm", Digest: "d3", State: "approved"}}
			})
		}, posture.CheckToolChanged, mcpGW.String() + "/crm__lookup", api.SeverityMedium, "at the baseline d1, now d3"},
		{"MCP server dialable without the gateway", func(st *posture.State) {
			st.Identities[1].Dial = append(st.Identities[1].Dial, "crm-mcp")
			useDial(st, st.Identities[1], "crm-mcp")
		},
			posture.CheckUngated, mcpGW.String() + "/crm-mcp", api.SeverityHigh, sid("globex", "agent", "buyer").String()},
		{"model endpoint dialable without the gateway", func(st *posture.State) {
			st.Identities[0].Dial = append(st.Identities[0].Dial, "ollama")
			useDial(st, st.Identities[0], "ollama")
		},
			posture.CheckUngated, llmGW.String() + "/ollama", api.SeverityHigh, sid("acme", "agent", "quoter").String()},
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
	if len(all.Identities) != 6 || len(all.Organisations) != 2 || len(all.Advertisements) != 1 || len(all.Workgroups) != 1 {
		t.Fatalf("platform inventory: %d identities, %d orgs, %d ads, %d workgroups", len(all.Identities), len(all.Organisations), len(all.Advertisements), len(all.Workgroups))
	}
	if len(all.Services) != 5 || all.Services[4].Name != "prices" || len(all.Services[4].Bind) != 1 || len(all.Services[4].Dial) != 1 {
		t.Fatalf("services %+v", all.Services)
	}
	globex := posture.Inventory(st, posture.Scope{Org: "globex"})
	for _, id := range globex.Identities {
		if id.Org != "globex" {
			t.Fatalf("globex's inventory lists %s", id.SPIFFEID)
		}
	}
	if len(globex.Identities) != 3 || len(globex.Advertisements) != 0 || len(globex.Workgroups) != 1 {
		t.Fatalf("globex inventory: %d identities, %d ads, %d workgroups", len(globex.Identities), len(globex.Advertisements), len(globex.Workgroups))
	}
	for _, s := range globex.Services {
		for _, id := range append(slices.Clone(s.Bind), s.Dial...) {
			if !strings.Contains(id, "/globex/") {
				t.Fatalf("globex sees services %+v: another organisation's grantee leaked", globex.Services)
			}
		}
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
	st.Identities = slices.Delete(st.Identities, 2, 3)              // acme's admin removed
	st.Advertisements[0].Terms.MaxMessages = 500                    // changed
	d := posture.Diff(base, now, posture.Items(posture.Inventory(st, posture.Scope{})))
	want := api.Drift{BaselineAt: now, Added: []string{"service:orders"},
		Removed: []string{"identity:" + sid("acme", "admin", "admin").String()},
		Changed: []string{"advertisement:" + st.Advertisements[0].ID.String(), "identity:" + sid("globex", "agent", "buyer").String()}}
	if !slices.Equal(d.Added, want.Added) || !slices.Equal(d.Removed, want.Removed) || !slices.Equal(d.Changed, want.Changed) {
		t.Fatalf("drift %+v\nwant  %+v", d, want)
	}
}

func TestGatewayInventoryAndDrift(t *testing.T) {
	st := clean(t)
	all := posture.Inventory(st, posture.Scope{})
	if len(all.Gateways) != 2 || len(all.Tools) != 1 || len(all.Models) != 1 || len(all.Routers) != 1 {
		t.Fatalf("platform inventory: %d gateways, %d tools, %d models, %d routers", len(all.Gateways), len(all.Tools), len(all.Models), len(all.Routers))
	}
	if g := all.Gateways[0]; g.SPIFFEID != mcpGW.String() || g.Kind != "mcp" || g.Service != "mcpgw" || len(g.Servers) != 1 || g.Servers[0].Service != "crm-mcp" {
		t.Fatalf("MCP gateway %+v", g)
	}
	if tl := all.Tools[0]; tl.Gateway != mcpGW.String() || tl.Name != "crm__lookup" || tl.Digest != "d1" || tl.State != "approved" {
		t.Fatalf("tool %+v", tl)
	}
	acme := posture.Inventory(st, posture.Scope{Org: "acme"})
	if len(acme.Gateways) != 1 || len(acme.Tools) != 1 || len(acme.Models) != 0 || len(acme.Routers) != 0 {
		t.Fatalf("acme inventory: %d gateways, %d tools, %d models, %d routers (routers are the platform's)",
			len(acme.Gateways), len(acme.Tools), len(acme.Models), len(acme.Routers))
	}

	base := posture.Items(all)
	st.Routers[0].Online, st.Routers[0].Version = false, ""                            // a router going offline is not drift
	report(&st, mcpGW, func(r *posture.GatewayReport) { r.At = now.Add(time.Minute) }) // nor a newer report of the same
	if d := posture.Diff(base, now, posture.Items(posture.Inventory(st, posture.Scope{}))); len(d.Added)+len(d.Removed)+len(d.Changed) != 0 {
		t.Fatalf("an offline router or a new report of the same drifted: %+v", d)
	}
	report(&st, mcpGW, func(r *posture.GatewayReport) { r.Tools[0].Digest = "d9" })
	report(&st, llmGW, func(r *posture.GatewayReport) { r.Models[0].Endpoints[0].Service = "vllm" })
	st.Routers = append(st.Routers, api.InventoryRouter{Name: "edge-2", Enrolled: true})
	d := posture.Diff(base, now, posture.Items(posture.Inventory(st, posture.Scope{})))
	want := api.Drift{Added: []string{"router:edge-2"}, Removed: []string{},
		Changed: []string{"model:" + llmGW.String() + "/small", "tool:" + mcpGW.String() + "/crm__lookup"}}
	if !slices.Equal(d.Added, want.Added) || !slices.Equal(d.Removed, want.Removed) || !slices.Equal(d.Changed, want.Changed) {
		t.Fatalf("drift %+v\nwant  %+v", d, want)
	}
}

// TestUsageFromAuditRecords: what counts as use, per identity, workgroup and gateway.
func TestUsageFromAuditRecords(t *testing.T) {
	a, b, gw := sid("acme", "agent", "a").String(), sid("acme", "agent", "b").String(), mcpGW.String()
	t0 := now.Add(-5 * 24 * time.Hour)
	var u posture.Usage
	for i, r := range []audit.Record{
		{Kind: "session.transition", Actor: a, Session: "s1", Workgroup: "acme/w", Decision: "allow"},
		{Kind: "envelope.accepted", Actor: b, Session: "s1", Decision: "allow"}, // its workgroup from the session
		{Kind: "mcp.call", Actor: a, Decision: "allow", Data: []byte(`{"via":"` + gw + `","detail":null}`)},
		{Kind: "mcp.denied", Actor: b, Decision: "deny", Data: []byte(`{"via":"` + gw + `"}`)}, // refused: no use
		{Kind: "session.propose", Actor: b, Decision: "deny", Workgroup: "acme/other"},         // refused: no use
		{Kind: "identity.suspended", Actor: b, Decision: "allow"},                              // no use kind, no workgroup
	} {
		r.Time = t0.Add(time.Duration(i) * time.Hour)
		u.Add(r)
	}
	if u.Records != 6 || !u.From.Equal(t0) {
		t.Fatalf("records %d from %s", u.Records, u.From)
	}
	if !u.Workgroups[b]["acme/w"].Equal(t0.Add(time.Hour)) || !u.Workgroups[b]["acme/other"].IsZero() {
		t.Fatalf("b's workgroups %v", u.Workgroups[b])
	}
	if !u.Gateways[a][gw].Equal(t0.Add(2*time.Hour)) || len(u.Gateways[b]) != 0 {
		t.Fatalf("gateways: a %v, b %v", u.Gateways[a], u.Gateways[b])
	}
	if !u.Last[b].Equal(t0.Add(time.Hour)) || !u.Last[a].Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("last: %v", u.Last)
	}
}

// TestUngatedScoped: an organisation's administrator sees the finding about its gateway's model endpoint, with
// the other organisation's dialer counted, not named.
func TestUngatedScoped(t *testing.T) {
	st := clean(t)
	st.Identities[0].Dial = append(st.Identities[0].Dial, "ollama") // acme's quoter may dial globex's model server
	useDial(&st, st.Identities[0], "ollama")
	fs := posture.Findings(st, posture.Scope{Org: "globex"}, posture.Policy{})
	if len(fs) != 1 || fs[0].Check != posture.CheckUngated || strings.Contains(fs[0].Evidence, "quoter") ||
		!strings.Contains(fs[0].Evidence, "identities of other organisations: 1") {
		t.Fatalf("globex's findings %+v: want the ungated model endpoint with acme's dialer counted, not named", fs)
	}
	if fs := posture.Findings(st, posture.Scope{Org: "acme"}, posture.Policy{}); len(fs) != 0 {
		t.Fatalf("acme sees findings about globex's gateway: %v", checks(fs))
	}
}
