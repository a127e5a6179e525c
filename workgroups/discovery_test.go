package workgroups

import (
	"testing"
)

func TestMembershipsAndVisible(t *testing.T) {
	trade, err := NewWorkgroup(wgID("acme/trade"), ScopeInterOrg, acmeAdmin, []string{"globex"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	solo, _ := NewWorkgroup(wgID("acme/solo"), ScopeIntraOrg, acmeAdmin, nil, t0)
	wantErr(t, solo.AddMember(acmeAdmin, acmeAgent, RoleMember, t0), nil)
	wantErr(t, trade.AddMember(acmeAdmin, acmeAgent, RoleMember, t0), nil)
	wgs := []Workgroup{trade, solo}

	ms := MembershipsOf(acmeAgent, wgs)
	if len(ms) != 2 || ms[0].Active || !ms[1].Active {
		t.Fatalf("memberships while trade is pending: %+v", ms)
	}
	if got := MembershipsOf(globexProv, wgs); len(got) != 0 {
		t.Fatalf("non-member has memberships: %+v", got)
	}

	mk := func(seed uint64, wgs ...string) Advertisement {
		ad := sampleAd(t)
		ad.ID = mustAdID(t, seed)
		ad.Workgroups = nil
		for _, w := range wgs {
			ad.Workgroups = append(ad.Workgroups, wgID(w))
		}
		return ad
	}
	ads := []Advertisement{
		mk(1, "acme/trade"),
		mk(2, "acme/solo"),
		mk(3, "globex/secret"),
		mk(4, "globex/secret", "acme/solo"),
		mk(5),
	}
	ids := func(ads []Advertisement) []uint64 {
		var out []uint64
		for _, ad := range ads {
			for seed := uint64(1); seed <= 5; seed++ {
				if ad.ID == mustAdID(t, seed) {
					out = append(out, seed)
				}
			}
		}
		return out
	}
	if got := ids(Visible(ms, ads)); len(got) != 2 || got[0] != 2 || got[1] != 4 {
		t.Fatalf("visible while trade is pending: %v", got)
	}

	// Once globex accepts, acme/trade is active and its ad appears.
	wantErr(t, trade.AcceptInvitation(globexAdm, t0), nil)
	ms = MembershipsOf(acmeAgent, []Workgroup{trade, solo})
	if got := ids(Visible(ms, ads)); len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 4 {
		t.Fatalf("visible once active: %v", got)
	}
	if got := Visible(nil, ads); len(got) != 0 {
		t.Fatalf("no memberships sees %d ads", len(got))
	}
	// A stale membership marked inactive counts for nothing.
	if got := Visible([]Membership{{Workgroup: wgID("acme/trade"), Role: RoleAdmin}}, ads); len(got) != 0 {
		t.Fatalf("inactive membership sees %d ads", len(got))
	}
}

func TestContractSatisfiedBy(t *testing.T) {
	c := Contract{RequiredWorkgroups: []WorkgroupID{wgID("acme/a"), wgID("acme/b")}}
	ms := []Membership{{Workgroup: wgID("acme/b"), Active: true}, {Workgroup: wgID("acme/a"), Active: true}}
	if _, ok := c.SatisfiedBy(ms); !ok {
		t.Fatal("satisfied memberships refused")
	}
	ms[1].Active = false
	if missing, ok := c.SatisfiedBy(ms); ok || missing != wgID("acme/a") {
		t.Fatalf("missing = %v, %v", missing, ok)
	}
	if _, ok := (Contract{}).SatisfiedBy(nil); !ok {
		t.Fatal("no requirement is always satisfied")
	}
}

func TestSeenByHidesOtherWorkgroups(t *testing.T) {
	ad := sampleAd(t)
	ad.Workgroups = []WorkgroupID{wgID("acme/trade"), wgID("acme/secret-merger"), wgID("globex/ops")}
	ad.Terms.RequiredWorkgroups = []WorkgroupID{wgID("acme/trade"), wgID("acme/secret-merger")}
	caller := []Membership{
		{Workgroup: wgID("acme/trade"), Active: true},
		{Workgroup: wgID("globex/ops"), Active: false}, // invited, not yet active: not shown
	}
	seen := ad.SeenBy(caller)
	if len(seen.Workgroups) != 1 || seen.Workgroups[0] != wgID("acme/trade") {
		t.Errorf("workgroups seen: %v, want only acme/trade", seen.Workgroups)
	}
	if len(seen.Terms.RequiredWorkgroups) != 1 || seen.Terms.RequiredWorkgroups[0] != wgID("acme/trade") {
		t.Errorf("required workgroups seen: %v, want only acme/trade", seen.Terms.RequiredWorkgroups)
	}
	if len(ad.Workgroups) != 3 || len(ad.Terms.RequiredWorkgroups) != 2 {
		t.Errorf("SeenBy changed the advertisement itself: %v %v", ad.Workgroups, ad.Terms.RequiredWorkgroups)
	}
	if got := ad.SeenBy(nil); len(got.Workgroups) != 0 || got.Workgroups == nil {
		t.Errorf("a caller with no memberships sees workgroups %#v, want an empty list", got.Workgroups)
	}
}
