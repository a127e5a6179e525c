package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/zitictrl"
	"github.com/umbra-mesh/umbra/workgroups"
)

// reconcileMembers brings the advertisements and the overlay in line with the workgroups, at start. Removing a
// member or deleting a workgroup writes the workgroup first, then retracts the member's advertisements from it
// and recomputes the overlay attributes of the identities concerned (syncOverlay). A controller stopped in
// between, or an overlay that failed, would leave an identity that can still dial, on the overlay, the
// advertisements of a workgroup it left, and advertisements listed in a workgroup their provider is no longer
// in. So every advertisement listed in a workgroup its provider is not a member of is retracted from it, and
// every identity whose overlay attributes are not those its record and active memberships give it is synced. A
// grant interrupted between its record and the overlay is completed the same way. What is out of line is looked
// at again after memberGrace and only what still is is changed. One where all agree costs a listing of the
// identities and one read of the overlay's store per identity.
func (s *Server) reconcileMembers(ctx context.Context) error {
	ads, ids, err := s.outOfLine(ctx, nil)
	if err != nil || len(ads)+len(ids) == 0 {
		return err
	}
	// A request under way (a grant, a membership change) writes its record before the overlay, so what is out of
	// line only because of it is in line once it ends: look again after a grace, at what was out of line only.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(memberGrace):
	}
	before := ads
	ads, ids, err = s.outOfLine(ctx, func(id spiffeid.ID) bool { return slices.Contains(ids, id) })
	if err != nil {
		return err
	}
	ads = slices.DeleteFunc(ads, func(r retraction) bool { return !slices.Contains(before, r) })
	for _, r := range ads {
		s.retractAds(ctx, func(a workgroups.Advertisement) bool { return a.ID == r.ad }, r.wg)
	}
	for _, id := range ids {
		if err := s.syncOverlay(ctx, id); err != nil {
			return fmt.Errorf("sync the overlay attributes of %s: %w", id, err)
		}
	}
	if len(ads)+len(ids) > 0 {
		s.log.Warn("brought advertisements and overlay attributes in line with the workgroups (a change stopped half way)",
			"retracted", len(ads), "identities_synced", len(ids))
	}
	return nil
}

// memberGrace is how long reconcileMembers leaves what it found out of line to the requests that may be changing
// it.
const memberGrace = 5 * time.Second

// retraction is an advertisement listed in a workgroup its provider is not a member of.
type retraction struct {
	ad workgroups.AdvertisementID
	wg workgroups.WorkgroupID
}

// outOfLine lists the advertisements listed in a workgroup their provider is not a member of, and the identities
// (of those only matches, if it is not nil) whose overlay attributes are not those their record and active
// memberships give them.
func (s *Server) outOfLine(ctx context.Context, only func(spiffeid.ID) bool) ([]retraction, []spiffeid.ID, error) {
	wgs, err := s.gov.wgCopy.current(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("read the workgroups: %w", err)
	}
	all, err := s.gov.adCopy.current(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("read the advertisements: %w", err)
	}
	of := map[spiffeid.ID][]workgroups.Workgroup{} // each identity's workgroups
	for _, w := range wgs {
		for _, m := range w.Members {
			of[m.Identity] = append(of[m.Identity], w)
		}
	}
	var ads []retraction
	for _, ad := range all {
		ms := workgroups.MembershipsOf(ad.Provider, of[ad.Provider])
		for _, wg := range ad.Workgroups {
			if !slices.ContainsFunc(ms, func(m workgroups.Membership) bool { return m.Workgroup == wg }) {
				ads = append(ads, retraction{ad.ID, wg})
			}
		}
	}
	recs, err := s.ids.ids.all(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("read the identities: %w", err)
	}
	var ids []spiffeid.ID
	for _, r := range recs {
		if r.State == stateRevoked || r.OverlayID == "" {
			continue
		}
		id, err := spiffeid.FromString(r.SPIFFEID)
		if err != nil || only != nil && !only(id) {
			continue
		}
		want := slices.DeleteFunc(slices.Clone(r.Attributes), func(a string) bool {
			return strings.HasPrefix(a, "wg.") || strings.HasPrefix(a, "ad.")
		})
		for _, wg := range workgroups.ActiveWorkgroups(workgroups.MembershipsOf(id, of[id])) {
			want = append(want, wgAttr(wg))
		}
		have, found, err := s.zc.Attributes(r.OverlayID)
		if err != nil {
			return nil, nil, err
		}
		if found && !zitictrl.SameRoles(have, want) {
			ids = append(ids, id)
		}
	}
	return ads, ids, nil
}
