package controller

import (
	"crypto/rand"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/workgroups"
)

// TestAdDialPoliciesFollowWorkgroups checks on a real overlay that an advertisement's dial policy names the roles
// of its workgroups' members, and that reconcileAdPolicies moves a network whose dial policies named
// per-advertisement attributes (ad.<id>.dial, as networks did before) to those roles, empties the policy of an
// advertisement that is gone, and is idempotent; narrowing an advertisement narrows its policy.
func TestAdDialPoliciesFollowWorkgroups(t *testing.T) {
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
	live := workgroups.Advertisement{ID: newID(), Provider: spiffeid.RequireFromString("spiffe://umbra.local/acme/agent/seller"),
		Workgroups: []workgroups.WorkgroupID{pricing, ops}}
	gone := newID()
	// The shape of before: each member carried ad.<id>.dial, and the policy named that attribute.
	for _, id := range []workgroups.AdvertisementID{live.ID, gone} {
		if _, err := m.EnsureService(AdvertisementService(id), []string{adAttr(id)}); err != nil {
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
	want := func(what string, id workgroups.AdvertisementID, r ...string) {
		t.Helper()
		slices.Sort(r)
		if got := roles()[adDialPolicy(id)]; !slices.Equal(got, r) && !(len(got) == 0 && len(r) == 0) {
			t.Fatalf("%s: dial policy of %s names %q, want %q", what, id, got, r)
		}
	}
	for range 2 { // the second pass finds nothing to change
		if err := s.reconcileAdPolicies(ctx); err != nil {
			t.Fatal(err)
		}
		want("reconciled", live.ID, "#wg.acme.pricing", "#wg.acme.ops")
		want("reconciled, advertisement gone", gone)
	}
	narrowed := live
	narrowed.Workgroups = []workgroups.WorkgroupID{ops}
	if err := s.ensureAdService(narrowed); err != nil {
		t.Fatal(err)
	}
	want("narrowed", live.ID, "#wg.acme.ops")
	narrowed.Workgroups = nil
	if err := s.ensureAdService(narrowed); err != nil {
		t.Fatal(err)
	}
	want("retracted", live.ID)
}
