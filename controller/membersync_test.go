package controller

import (
	"errors"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/zitictrl"
	"github.com/umbra-mesh/umbra/workgroups"
)

// TestStartCompletesAMemberRemoval: removing a member writes the workgroup, then retracts the member's
// advertisements from it and takes the workgroup's attribute off its overlay identity. A controller stopped in
// between leaves the removed member able to dial, on the overlay, what the workgroup's members dial, and its
// advertisement listed in a workgroup it is no longer in. Started again on the same data directory, the
// controller completes both; an identity whose overlay attributes agree with its record is left as it is, and a
// grant that reached the record but not the overlay is completed.
func TestStartCompletesAMemberRemoval(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a controller twice")
	}
	dir, ports := t.TempDir(), freePorts(t, 3)
	first, stop := startAdminWorldAt(t, dir, ports, nil)
	s, ctx := first.s, first.ctx
	<-s.adsSettled
	pricing := workgroups.WorkgroupID{Org: "acme", Name: "pricing"}
	register := func(name string) (spiffeid.ID, identityRecord) {
		t.Helper()
		id := spiffeid.RequireFromSegments(s.td, "acme", "agent", name)
		rec, err := s.registerIdentity(ctx, id, "acme", "agent", name, false, s.AdminID())
		if err != nil {
			t.Fatal(err)
		}
		return id, rec
	}
	left, leftRec := register("left")
	_, keptRec := register("kept")
	granted, grantedRec := register("granted")
	// The state a removal from acme/pricing leaves when it stops after writing the workgroup: the overlay identity
	// still carries the workgroup's attribute, and the member's advertisement is still listed in it, its service
	// dialable by the workgroup.
	if err := s.zc.Mgmt().SetAttributes(leftRec.OverlayID, append(slices.Clone(leftRec.Attributes), wgAttr(pricing))); err != nil {
		t.Fatal(err)
	}
	ad := workgroups.Advertisement{ID: newAdID(t), Provider: left, Workgroups: []workgroups.WorkgroupID{pricing},
		Card: workgroups.AgentCard{Name: "Left", Version: "1"}}
	if err := s.gov.ads.create(ctx, ad.ID.String(), ad); err != nil {
		t.Fatal(err)
	}
	if err := s.ensureAdService(ctx, ad, true); err != nil {
		t.Fatal(err)
	}
	// A grant that wrote the record but not the overlay.
	const grantAttr = "svc.reports.dial"
	if _, err := s.ids.update(ctx, granted, func(r *identityRecord) error {
		r.Attributes = append(r.Attributes, grantAttr)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stop()

	second, _ := startAdminWorldAt(t, dir, ports, nil)
	s, ctx = second.s, second.ctx
	<-s.adsSettled
	attrs := func(rec identityRecord) []string {
		t.Helper()
		a, found, err := s.zc.Attributes(rec.OverlayID)
		if err != nil || !found {
			t.Fatalf("attributes of %s: found=%v err=%v", rec.SPIFFEID, found, err)
		}
		return a
	}
	if a := attrs(leftRec); slices.Contains(a, wgAttr(pricing)) {
		t.Errorf("the removed member's overlay identity still carries %s: %v", wgAttr(pricing), a)
	}
	if _, _, err := s.gov.ads.get(ctx, ad.ID.String()); !errors.Is(err, errNotFound) {
		t.Errorf("the removed member's advertisement in a workgroup it left: %v, want it retracted", err)
	}
	if svc, ok := readAdState(t, s.zc.Mgmt()).services[AdvertisementService(ad.ID)]; ok && len(svc.Attributes) > 0 {
		t.Errorf("the retracted advertisement's service still carries %v", svc.Attributes)
	}
	if a := attrs(keptRec); !zitictrl.SameRoles(a, keptRec.Attributes) {
		t.Errorf("an identity that agreed was changed: %v, want %v", a, keptRec.Attributes)
	}
	if a := attrs(grantedRec); !slices.Contains(a, grantAttr) {
		t.Errorf("the grant that reached only the record: overlay attributes %v, want %s among them", a, grantAttr)
	}
	if n := second.logs.count("brought advertisements and overlay attributes in line"); n != 1 {
		t.Errorf("the reconciliation was logged %d times, want once", n)
	}
}
