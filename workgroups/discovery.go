package workgroups

import (
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Membership is one identity's standing in one workgroup, with whether that
// workgroup is active. Discovery and the built-in policies count only active
// memberships.
type Membership struct {
	Workgroup WorkgroupID `json:"workgroup"`
	Role      Role        `json:"role"`
	Active    bool        `json:"active"`
}

// MembershipsOf lists id's memberships among wgs.
func MembershipsOf(id spiffeid.ID, wgs []Workgroup) []Membership {
	var ms []Membership
	for _, w := range wgs {
		if m, ok := w.Member(id); ok {
			ms = append(ms, Membership{Workgroup: w.ID, Role: m.Role, Active: w.Active()})
		}
	}
	return ms
}

// ActiveWorkgroups returns the workgroups of the active memberships in ms,
// sorted and without repeats.
func ActiveWorkgroups(ms []Membership) []WorkgroupID {
	var out []WorkgroupID
	for _, m := range ms {
		if m.Active && !m.Workgroup.IsZero() {
			out = append(out, m.Workgroup)
		}
	}
	slices.SortFunc(out, compareWorkgroupIDs)
	return slices.Compact(out)
}

// Visible returns the advertisements the caller may see: those scoped to at
// least one active workgroup the caller is a member of, in their original
// order. Everything else is left out as if it did not exist.
func Visible(caller []Membership, ads []Advertisement) []Advertisement {
	active := ActiveWorkgroups(caller)
	var out []Advertisement
	for _, ad := range ads {
		if slices.ContainsFunc(ad.Workgroups, func(wg WorkgroupID) bool {
			_, found := slices.BinarySearchFunc(active, wg, compareWorkgroupIDs)
			return found
		}) {
			out = append(out, ad)
		}
	}
	return out
}

// SeenBy is ad as the caller may see it: its workgroups, and the workgroups
// its terms require, only where the caller is an active member. The provider's
// other workgroups are none of the caller's business: naming them would tell
// that they exist. The advertisement itself is not changed.
func (ad Advertisement) SeenBy(caller []Membership) Advertisement {
	active := ActiveWorkgroups(caller)
	shared := func(wgs []WorkgroupID) []WorkgroupID {
		out := []WorkgroupID{}
		for _, wg := range wgs {
			if _, found := slices.BinarySearchFunc(active, wg, compareWorkgroupIDs); found {
				out = append(out, wg)
			}
		}
		return out
	}
	ad.Workgroups = shared(ad.Workgroups)
	if len(ad.Terms.RequiredWorkgroups) > 0 {
		ad.Terms.RequiredWorkgroups = shared(ad.Terms.RequiredWorkgroups)
	}
	return ad
}

// SatisfiedBy reports whether memberships ms cover every workgroup the
// contract requires, returning the first one missing. A session closes
// (membership_removed) when either party stops satisfying it.
func (c Contract) SatisfiedBy(ms []Membership) (missing WorkgroupID, ok bool) {
	active := ActiveWorkgroups(ms)
	for _, wg := range c.RequiredWorkgroups {
		if _, found := slices.BinarySearchFunc(active, wg, compareWorkgroupIDs); !found {
			return wg, false
		}
	}
	return WorkgroupID{}, true
}
