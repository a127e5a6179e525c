package controller

import (
	"crypto/rand"
	"slices"
	"sync"
	"testing"

	"github.com/umbra-mesh/umbra/workgroups"
)

// TestAdPoliciesFollowProviderAndWorkgroups checks on a real overlay that an advertisement's bind policy names
// its provider's overlay identity and its dial policy the roles of its workgroups' members; that
// reconcileAdPolicies moves a network whose policies named per-advertisement attributes (ad.<id>.bind and
// ad.<id>.dial, as networks did before) to those, empties the policies of an advertisement that is gone, and is
// idempotent; and that narrowing an advertisement narrows its dial policy, retracting it empties both.
func TestAdPoliciesFollowProviderAndWorkgroups(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a controller")
	}
	w := startAdminWorld(t)
	s, ctx, m := w.s, w.ctx, w.s.zc.Mgmt()
	newID := func() workgroups.AdvertisementID {
		id, err := workgroups.NewAdvertisementID(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	pricing, ops := workgroups.WorkgroupID{Org: "acme", Name: "pricing"}, workgroups.WorkgroupID{Org: "acme", Name: "ops"}
	provider, _, err := s.ids.get(ctx, s.AdminID())
	if err != nil {
		t.Fatal(err)
	}
	live := workgroups.Advertisement{ID: newID(), Provider: s.AdminID(), Workgroups: []workgroups.WorkgroupID{pricing, ops}}
	gone := newID()
	// The shape of before: the provider carried ad.<id>.bind, each member ad.<id>.dial, and the policies named them.
	for _, id := range []workgroups.AdvertisementID{live.ID, gone} {
		if _, err := m.EnsureService(AdvertisementService(id), []string{adAttr(id)}); err != nil {
			t.Fatal(err)
		}
		if err := m.EnsureServicePolicy(adBindPolicy(id), "Bind", []string{"#" + adAttr(id) + ".bind"}, []string{"#" + adAttr(id)}); err != nil {
			t.Fatal(err)
		}
		if err := m.EnsureServicePolicy(adDialPolicy(id), "Dial", []string{"#" + adAttr(id) + ".dial"}, []string{"#" + adAttr(id)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.gov.ads.create(ctx, live.ID.String(), live); err != nil {
		t.Fatal(err)
	}
	roles := func() map[string][]string {
		t.Helper()
		have, err := m.ServicePolicyRoles("umbra-" + adServicePrefix)
		if err != nil {
			t.Fatal(err)
		}
		for name, r := range have {
			slices.Sort(r)
			have[name] = r
		}
		return have
	}
	want := func(what, policy string, r ...string) {
		t.Helper()
		slices.Sort(r)
		if got := roles()[policy]; !slices.Equal(got, r) && !(len(got) == 0 && len(r) == 0) {
			t.Fatalf("%s: policy %s names %q, want %q", what, policy, got, r)
		}
	}
	for range 2 { // the second pass finds nothing to change
		if err := s.reconcileAdPolicies(ctx); err != nil {
			t.Fatal(err)
		}
		want("reconciled", adDialPolicy(live.ID), "#wg.acme.pricing", "#wg.acme.ops")
		want("reconciled", adBindPolicy(live.ID), "@"+provider.OverlayID)
		want("reconciled, advertisement gone", adDialPolicy(gone))
		want("reconciled, advertisement gone", adBindPolicy(gone))
	}
	narrowed := live
	narrowed.Workgroups = []workgroups.WorkgroupID{ops}
	if err := s.ensureAdService(ctx, narrowed, false); err != nil {
		t.Fatal(err)
	}
	want("narrowed", adDialPolicy(live.ID), "#wg.acme.ops")
	want("narrowed", adBindPolicy(live.ID), "@"+provider.OverlayID)
	narrowed.Workgroups = nil
	if err := s.ensureAdService(ctx, narrowed, false); err != nil {
		t.Fatal(err)
	}
	want("retracted", adDialPolicy(live.ID))
	want("retracted", adBindPolicy(live.ID))
}

// TestNewAdServiceConvergesAfterPartialCreate checks on a real overlay the path of a new advertisement, which
// creates its service and policies without looking them up first: when some of them exist already (a controller
// that stopped half way, then the same advertisement again) or another controller creates them at the same time,
// the refused creates fall back to the look-up and the service and both policies end as they should, once each.
func TestNewAdServiceConvergesAfterPartialCreate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a controller")
	}
	w := startAdminWorld(t)
	s, ctx, m := w.s, w.ctx, w.s.zc.Mgmt()
	provider, _, err := s.ids.get(ctx, s.AdminID())
	if err != nil {
		t.Fatal(err)
	}
	newAd := func() workgroups.Advertisement {
		id, err := workgroups.NewAdvertisementID(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return workgroups.Advertisement{ID: id, Provider: s.AdminID(),
			Workgroups: []workgroups.WorkgroupID{{Org: "acme", Name: "pricing"}}}
	}
	check := func(what string, ad workgroups.Advertisement) {
		t.Helper()
		have, err := m.ServicePolicyRoles(adBindPolicy(ad.ID))
		if err != nil {
			t.Fatal(err)
		}
		if got := have[adBindPolicy(ad.ID)]; !slices.Equal(got, []string{"@" + provider.OverlayID}) {
			t.Errorf("%s: bind policy names %q, want the provider's identity", what, got)
		}
		if have, err = m.ServicePolicyRoles(adDialPolicy(ad.ID)); err != nil {
			t.Fatal(err)
		}
		if got := have[adDialPolicy(ad.ID)]; !slices.Equal(got, []string{"#wg.acme.pricing"}) {
			t.Errorf("%s: dial policy names %q, want the workgroup's role", what, got)
		}
	}

	// Stopped after the service and a bind policy that names someone else, before the dial policy.
	ad := newAd()
	serviceID, err := m.EnsureService(AdvertisementService(ad.ID), []string{adAttr(ad.ID)})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.EnsureServicePolicy(adBindPolicy(ad.ID), "Bind", []string{"#someone.else"}, []string{"#" + adAttr(ad.ID)}); err != nil {
		t.Fatal(err)
	}
	for _, what := range []string{"after a partial create", "all there already"} {
		if err := s.ensureAdService(ctx, ad, true); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		check(what, ad)
	}
	if id, err := m.CreateOrFindService(AdvertisementService(ad.ID), []string{adAttr(ad.ID)}); err != nil || id != serviceID {
		t.Errorf("creating the service again gave %q, %v; want the existing one, %q", id, err, serviceID)
	}

	// Two controllers of a cluster racing on the same new advertisement.
	ad = newAd()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = s.ensureAdService(ctx, ad, true) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("racing creates: %v", err)
		}
	}
	check("racing creates", ad)
}
