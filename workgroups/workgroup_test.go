package workgroups

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestWorkgroupID(t *testing.T) {
	id, err := ParseWorkgroupID("acme/trade")
	if err != nil || id.Org != "acme" || id.Name != "trade" || id.String() != "acme/trade" {
		t.Fatalf("got %+v, %v", id, err)
	}
	for _, s := range []string{"", "acme", "acme/", "/trade", "acme/trade/x", "Acme/trade", "acme/tr ade"} {
		if _, err := ParseWorkgroupID(s); err == nil {
			t.Errorf("ParseWorkgroupID(%q) succeeded", s)
		}
	}
	var out struct {
		W WorkgroupID `json:"w"`
	}
	if err := json.Unmarshal([]byte(`{"w":"acme/trade"}`), &out); err != nil || out.W != id {
		t.Fatalf("unmarshal: %v %v", out.W, err)
	}
	if err := json.Unmarshal([]byte(`{"w":"acme"}`), &out); err == nil {
		t.Fatal("bad workgroup id unmarshalled")
	}
	wantErr(t, WorkgroupID{}.Validate(), ErrInvalid)
}

func TestNewWorkgroup(t *testing.T) {
	trade := wgID("acme/trade")
	for _, tc := range []struct {
		name    string
		id      WorkgroupID
		scope   Scope
		creator spiffeid.ID
		invited []string
		at      time.Time
		want    error
	}{
		{"intra", trade, ScopeIntraOrg, acmeAdmin, nil, t0, nil},
		{"inter", trade, ScopeInterOrg, acmeAdmin, []string{"globex", "initech"}, t0, nil},
		{"intra with invites", trade, ScopeIntraOrg, acmeAdmin, []string{"globex"}, t0, ErrInvalid},
		{"inter without invites", trade, ScopeInterOrg, acmeAdmin, nil, t0, ErrInvalid},
		{"creator of other org", trade, ScopeIntraOrg, globexAdm, nil, t0, ErrNotAuthorized},
		{"creator not an identity", trade, ScopeIntraOrg, spiffeid.RequireFromString("spiffe://acme.example/x"), nil, t0, ErrInvalid},
		{"owner invited", trade, ScopeInterOrg, acmeAdmin, []string{"acme"}, t0, ErrInvalid},
		{"invited twice", trade, ScopeInterOrg, acmeAdmin, []string{"globex", "globex"}, t0, ErrConflict},
		{"bad invited name", trade, ScopeInterOrg, acmeAdmin, []string{"Globex"}, t0, ErrInvalid},
		{"bad scope", trade, Scope("public"), acmeAdmin, nil, t0, ErrInvalid},
		{"bad id", WorkgroupID{Org: "acme", Name: "Trade"}, ScopeIntraOrg, acmeAdmin, nil, t0, ErrInvalid},
		{"zero time", trade, ScopeIntraOrg, acmeAdmin, nil, time.Time{}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := NewWorkgroup(tc.id, tc.scope, tc.creator, tc.invited, tc.at)
			wantErr(t, err, tc.want)
			if err != nil {
				return
			}
			if err := w.Validate(); err != nil {
				t.Fatal(err)
			}
			m, ok := w.Member(tc.creator)
			if !ok || m.Role != RoleAdmin {
				t.Fatalf("creator not admin: %+v", m)
			}
		})
	}
}

func interWG(t *testing.T) Workgroup {
	t.Helper()
	w, err := NewWorkgroup(wgID("acme/trade"), ScopeInterOrg, acmeAdmin, []string{"globex", "initech"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestWorkgroupActivation(t *testing.T) {
	intra, err := NewWorkgroup(wgID("acme/solo"), ScopeIntraOrg, acmeAdmin, nil, t0)
	if err != nil || !intra.Active() {
		t.Fatalf("intra-org workgroup not active: %v", err)
	}

	w := interWG(t)
	if w.Status() != StatusPending || w.Active() {
		t.Fatalf("status %s", w.Status())
	}
	wantErr(t, w.AcceptInvitation(globexAdm, t0), nil)
	if w.Status() != StatusPending {
		t.Fatalf("active with initech pending: %s", w.Status())
	}
	if !w.OrgAdmitted("globex") || w.OrgAdmitted("initech") || !w.OrgAdmitted("acme") || w.OrgAdmitted("") {
		t.Fatal("OrgAdmitted")
	}
	wantErr(t, w.AcceptInvitation(globexAdm, t0), ErrConflict)                      // answered already
	wantErr(t, w.DeclineInvitation(ident("globex", "user", "g2"), t0), ErrConflict) // accept is final too
	wantErr(t, w.AcceptInvitation(ident("umbrella", "user", "u"), t0), ErrNotFound)
	wantErr(t, w.AcceptInvitation(initechAdm, time.Time{}), ErrInvalid)
	wantErr(t, w.AcceptInvitation(spiffeid.ID{}, t0), ErrInvalid)
	wantErr(t, w.AcceptInvitation(initechAdm, t0), nil)
	if !w.Active() {
		t.Fatalf("status %s after every org accepted", w.Status())
	}
	if m, ok := w.Member(globexAdm); !ok || m.Role != RoleAdmin {
		t.Fatal("accepting identity is not its org's admin")
	}
	if got := w.Orgs(); len(got) != 3 || got[0] != "acme" {
		t.Fatalf("Orgs = %v", got)
	}
	// Once active, the set of organisations is fixed.
	wantErr(t, w.Invite(acmeAdmin, "umbrella", t0), ErrConflict)
	wantErr(t, w.Validate(), nil)
}

func TestWorkgroupDecline(t *testing.T) {
	w := interWG(t)
	wantErr(t, w.AcceptInvitation(globexAdm, t0), nil)
	wantErr(t, w.DeclineInvitation(initechAdm, t0.Add(time.Hour)), nil)
	if w.Status() != StatusDeclined || w.Active() {
		t.Fatalf("status %s", w.Status())
	}
	wantErr(t, w.AcceptInvitation(initechAdm, t0), ErrConflict) // terminal
	inv := w.Invitations[w.invitation("initech")]
	if inv.State != InvitationDeclined || inv.AnsweredBy != initechAdm || !inv.AnsweredAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("decline not kept: %+v", inv)
	}
	if w.OrgAdmitted("initech") {
		t.Fatal("declined org admitted")
	}
	wantErr(t, w.Invite(acmeAdmin, "umbrella", t0), ErrConflict)
	wantErr(t, w.AddMember(acmeAdmin, acmeAgent, RoleMember, t0), ErrConflict)
	wantErr(t, w.Validate(), nil)
}

func TestWorkgroupInvite(t *testing.T) {
	w := interWG(t)
	wantErr(t, w.Invite(globexAdm, "umbrella", t0), ErrNotAuthorized) // not a member yet
	wantErr(t, w.AcceptInvitation(globexAdm, t0), nil)
	wantErr(t, w.Invite(globexAdm, "umbrella", t0), ErrNotAuthorized) // admin, but not of the owner org
	wantErr(t, w.AddMember(acmeAdmin, acmeAgent, RoleMember, t0), nil)
	wantErr(t, w.Invite(acmeAgent, "umbrella", t0), ErrNotAuthorized) // owner org, but not admin
	wantErr(t, w.Invite(acmeAdmin, "globex", t0), ErrConflict)
	wantErr(t, w.Invite(acmeAdmin, "acme", t0), ErrInvalid)
	wantErr(t, w.Invite(acmeAdmin, "Bad", t0), ErrInvalid)
	wantErr(t, w.Invite(acmeAdmin, "umbrella", time.Time{}), ErrInvalid)
	wantErr(t, w.Invite(acmeAdmin, "umbrella", t0), nil)
	if w.Status() != StatusPending {
		t.Fatal("new invitation should keep the workgroup pending")
	}
	intra, _ := NewWorkgroup(wgID("acme/solo"), ScopeIntraOrg, acmeAdmin, nil, t0)
	wantErr(t, intra.Invite(acmeAdmin, "globex", t0), ErrConflict)
}

func TestWorkgroupMembers(t *testing.T) {
	globexAgent := globexProv
	w := interWG(t)
	wantErr(t, w.AcceptInvitation(globexAdm, t0), nil)
	wantErr(t, w.AcceptInvitation(initechAdm, t0), nil)

	for _, tc := range []struct {
		name   string
		actor  spiffeid.ID
		member spiffeid.ID
		role   Role
		want   error
	}{
		{"owner admin adds own org", acmeAdmin, acmeAgent, RoleMember, nil},
		{"partner admin adds own org", globexAdm, globexAgent, RoleMember, nil},
		{"owner admin adds partner's member", acmeAdmin, ident("globex", "agent", "x"), RoleMember, ErrNotAuthorized},
		{"partner admin adds owner's member", globexAdm, acmeOther, RoleMember, ErrNotAuthorized},
		{"member adds", acmeAgent, acmeOther, RoleMember, ErrNotAuthorized},
		{"non-member adds", ident("acme", "user", "x"), acmeOther, RoleMember, ErrNotAuthorized},
		{"org not admitted", acmeAdmin, ident("umbrella", "agent", "u"), RoleMember, ErrNotAuthorized},
		{"duplicate", acmeAdmin, acmeAgent, RoleMember, ErrConflict},
		{"bad role", acmeAdmin, acmeOther, Role("owner"), ErrInvalid},
		{"bad identity", acmeAdmin, spiffeid.RequireFromString("spiffe://acme.example/acme"), RoleMember, ErrInvalid},
		{"admin added", acmeAdmin, ident("acme", "user", "bob"), RoleAdmin, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, w.AddMember(tc.actor, tc.member, tc.role, t0), tc.want)
		})
	}
	wantErr(t, w.AddMember(acmeAdmin, acmeOther, RoleMember, time.Time{}), ErrInvalid)
	wantErr(t, w.Validate(), nil)

	// Role changes and removals stay within an organisation.
	bob := ident("acme", "user", "bob")
	wantErr(t, w.SetRole(globexAdm, acmeAgent, RoleAdmin), ErrNotAuthorized)
	wantErr(t, w.SetRole(acmeAgent, acmeAgent, RoleAdmin), ErrNotAuthorized)
	wantErr(t, w.SetRole(acmeAdmin, acmeOther, RoleAdmin), ErrNotFound)
	wantErr(t, w.SetRole(acmeAdmin, acmeAgent, Role("x")), ErrInvalid)
	wantErr(t, w.SetRole(acmeAdmin, acmeAgent, RoleAdmin), nil)
	wantErr(t, w.RemoveMember(globexAdm, acmeAgent), ErrNotAuthorized)
	wantErr(t, w.RemoveMember(acmeAdmin, acmeOther), ErrNotFound)
	wantErr(t, w.RemoveMember(bob, acmeAgent), nil)
	wantErr(t, w.RemoveMember(globexAgent, globexAgent), nil) // leaving
	if _, ok := w.Member(globexAgent); ok {
		t.Fatal("member still present after leaving")
	}
	wantErr(t, w.Validate(), nil)
}

func TestWorkgroupLastAdmin(t *testing.T) {
	w := interWG(t)
	wantErr(t, w.AcceptInvitation(globexAdm, t0), nil)
	wantErr(t, w.AddMember(globexAdm, globexProv, RoleMember, t0), nil)

	wantErr(t, w.RemoveMember(acmeAdmin, acmeAdmin), ErrLastAdmin)
	wantErr(t, w.SetRole(acmeAdmin, acmeAdmin, RoleMember), ErrLastAdmin)
	wantErr(t, w.RemoveMember(globexAdm, globexAdm), ErrLastAdmin) // per organisation
	wantErr(t, w.SetRole(globexAdm, globexAdm, RoleMember), ErrLastAdmin)
	wantErr(t, w.SetRole(acmeAdmin, acmeAdmin, RoleAdmin), nil) // no-op is fine

	// With a second admin, the first can step down.
	bob := ident("acme", "user", "bob")
	wantErr(t, w.AddMember(acmeAdmin, bob, RoleAdmin, t0), nil)
	wantErr(t, w.SetRole(bob, acmeAdmin, RoleMember), nil)
	wantErr(t, w.RemoveMember(bob, bob), ErrLastAdmin)
	wantErr(t, w.RemoveMember(bob, acmeAdmin), nil)
	wantErr(t, w.Validate(), nil)
}

func TestWorkgroupValidate(t *testing.T) {
	base := interWG(t)
	if err := base.AcceptInvitation(globexAdm, t0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(w *Workgroup)
	}{
		{"bad id", func(w *Workgroup) { w.ID.Name = "" }},
		{"bad scope", func(w *Workgroup) { w.Scope = "x" }},
		{"zero created", func(w *Workgroup) { w.Created = time.Time{} }},
		{"intra with invitations", func(w *Workgroup) { w.Scope = ScopeIntraOrg }},
		{"inter without invitations", func(w *Workgroup) { w.Invitations = nil; w.Members = w.Members[:1] }},
		{"owner invited", func(w *Workgroup) { w.Invitations[1].Org = "acme" }},
		{"repeated invitation", func(w *Workgroup) { w.Invitations[1].Org = "globex" }},
		{"bad invitation state", func(w *Workgroup) { w.Invitations[1].State = "maybe" }},
		{"answered by another org", func(w *Workgroup) { w.Invitations[0].AnsweredBy = acmeAdmin }},
		{"member from pending org", func(w *Workgroup) {
			w.Members = append(w.Members, Member{Identity: initechAdm, Role: RoleAdmin, Since: t0})
		}},
		{"repeated member", func(w *Workgroup) { w.Members = append(w.Members, w.Members[0]) }},
		{"bad role", func(w *Workgroup) { w.Members[0].Role = "boss" }},
		{"org without admin", func(w *Workgroup) { w.Members[1].Role = RoleMember }},
		{"no owner member", func(w *Workgroup) { w.Members = w.Members[1:] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := base
			w.Invitations = append([]Invitation(nil), base.Invitations...)
			w.Members = append([]Member(nil), base.Members...)
			tc.mutate(&w)
			wantErr(t, w.Validate(), ErrInvalid)
		})
	}
	wantErr(t, base.Validate(), nil)

	// JSON round trip keeps it valid.
	b, err := json.Marshal(base)
	if err != nil {
		t.Fatal(err)
	}
	var back Workgroup
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	wantErr(t, back.Validate(), nil)
	if back.Status() != base.Status() || len(back.Members) != len(base.Members) {
		t.Fatalf("round trip changed the workgroup: %s", b)
	}
}
