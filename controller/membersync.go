package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"

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
// grant interrupted between its record and the overlay is completed the same way. One where all agree costs a
// listing of the identities and one read of the overlay's store per identity.
func (s *Server) reconcileMembers(ctx context.Context) error {
	wgs, err := s.gov.wgCopy.current(ctx)
	if err != nil {
		return fmt.Errorf("read the workgroups: %w", err)
	}
	ads, err := s.gov.adCopy.current(ctx)
	if err != nil {
		return fmt.Errorf("read the advertisements: %w", err)
	}
	of := map[spiffeid.ID][]workgroups.Workgroup{} // each identity's workgroups
	for _, w := range wgs {
		for _, m := range w.Members {
			of[m.Identity] = append(of[m.Identity], w)
		}
	}
	retracted := 0
	for _, ad := range ads {
		ms := workgroups.MembershipsOf(ad.Provider, of[ad.Provider])
		for _, wg := range ad.Workgroups {
			if slices.ContainsFunc(ms, func(m workgroups.Membership) bool { return m.Workgroup == wg }) {
				continue
			}
			s.retractAds(ctx, func(a workgroups.Advertisement) bool { return a.ID == ad.ID }, wg)
			retracted++
		}
	}
	recs, err := s.ids.ids.all(ctx)
	if err != nil {
		return fmt.Errorf("read the identities: %w", err)
	}
	var synced []spiffeid.ID
	for _, r := range recs {
		if r.State == stateRevoked || r.OverlayID == "" {
			continue
		}
		id, err := spiffeid.FromString(r.SPIFFEID)
		if err != nil {
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
			return err
		}
		if !found || zitictrl.SameRoles(have, want) {
			continue
		}
		if err := s.syncOverlay(ctx, id); err != nil {
			return fmt.Errorf("sync the overlay attributes of %s: %w", id, err)
		}
		synced = append(synced, id)
	}
	if retracted+len(synced) > 0 {
		s.log.Warn("brought advertisements and overlay attributes in line with the workgroups (a change stopped half way)",
			"retracted", retracted, "identities_synced", len(synced))
	}
	return nil
}
