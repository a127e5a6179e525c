package posture

import (
	"cmp"
	"slices"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// Inventory lists what the scope sees: its organisations, identities (with their grants and workgroups),
// services (with the scope's grantees), workgroups, advertisements, gateways with their tools and models, and
// (for the platform) routers. Lists are sorted, so two inventories of
// the same state are equal.
func Inventory(st State, scope Scope) api.Inventory {
	inv := api.Inventory{GeneratedAt: st.Now.UTC(), Scope: scope.String(), Organisations: []api.InventoryOrg{},
		Identities: []api.InventoryIdentity{}, Services: []api.InventoryService{}, Workgroups: []api.InventoryWorkgroup{},
		Advertisements: []api.InventoryAdvertisement{}}
	for _, o := range st.Orgs {
		if scope.sees(o.Name) {
			inv.Organisations = append(inv.Organisations, api.InventoryOrg{Name: o.Name, CreatedAt: o.CreatedAt.UTC()})
		}
	}
	memberOf := map[string][]string{}
	for _, w := range st.Workgroups {
		for _, m := range w.Members {
			memberOf[m.Identity.String()] = append(memberOf[m.Identity.String()], w.ID.String())
		}
		if !scope.seesWorkgroup(w) {
			continue
		}
		iw := api.InventoryWorkgroup{ID: w.ID.String(), Scope: string(w.Scope), Status: string(w.Status()),
			Orgs: []string{w.ID.Org}, Members: []string{}}
		for _, inv := range w.Invitations {
			iw.Orgs = append(iw.Orgs, inv.Org)
		}
		for _, m := range w.Members {
			iw.Members = append(iw.Members, m.Identity.String())
		}
		slices.Sort(iw.Members)
		inv.Workgroups = append(inv.Workgroups, iw)
	}
	services := map[string]*api.InventoryService{}
	service := func(name string) *api.InventoryService {
		if services[name] == nil {
			services[name] = &api.InventoryService{Name: name, Bind: []string{}, Dial: []string{}}
		}
		return services[name]
	}
	for _, id := range st.Identities {
		if !scope.sees(id.Org) {
			continue
		}
		ii := api.InventoryIdentity{SPIFFEID: id.ID.String(), Org: id.Org, Kind: id.Kind, Name: id.Name, Admin: id.Admin,
			State: id.State, CreatedAt: id.CreatedAt.UTC(), EnrolledAt: utc(id.EnrolledAt), LastSeen: utc(id.LastSeen),
			SVIDExpiresAt: utc(id.SVIDExpiresAt), Dial: sorted(id.Dial), Bind: sorted(id.Bind),
			Workgroups: sorted(memberOf[id.ID.String()]), Suspended: id.SuspendReason,
			LastUsed: st.GrantUse.lastUsed(id)}
		inv.Identities = append(inv.Identities, ii)
		if !id.Live() {
			continue
		}
		for _, s := range id.Dial {
			service(s).Dial = append(service(s).Dial, id.ID.String())
		}
		for _, s := range id.Bind {
			service(s).Bind = append(service(s).Bind, id.ID.String())
		}
	}
	for _, s := range services {
		slices.Sort(s.Bind)
		slices.Sort(s.Dial)
		inv.Services = append(inv.Services, *s)
	}
	for _, ad := range st.Advertisements {
		if !scope.sees(orgOf(ad.Provider.Path())) {
			continue
		}
		ia := api.InventoryAdvertisement{ID: ad.ID.String(), Provider: ad.Provider.String(), Name: ad.Card.Name,
			Workgroups: []string{}, MaxMessages: ad.Terms.MaxMessages, MaxDuration: time.Duration(ad.Terms.MaxDuration),
			AllowedTypes: slices.Clone(ad.Terms.AllowedMessageTypes), HoldForProvider: ad.Terms.HoldForProvider}
		for _, w := range ad.Workgroups {
			ia.Workgroups = append(ia.Workgroups, w.String())
		}
		inv.Advertisements = append(inv.Advertisements, ia)
	}
	gatewayInventory(st, scope, &inv)
	slices.SortFunc(inv.Organisations, func(a, b api.InventoryOrg) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(inv.Identities, func(a, b api.InventoryIdentity) int { return cmp.Compare(a.SPIFFEID, b.SPIFFEID) })
	slices.SortFunc(inv.Services, func(a, b api.InventoryService) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(inv.Workgroups, func(a, b api.InventoryWorkgroup) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(inv.Advertisements, func(a, b api.InventoryAdvertisement) int { return cmp.Compare(a.ID, b.ID) })
	return inv
}

// orgOf is the organisation of a SPIFFE ID path /<org>/<kind>/<name>.
func orgOf(path string) string {
	if len(path) < 2 {
		return ""
	}
	rest := path[1:]
	for i := range len(rest) {
		if rest[i] == '/' {
			return rest[:i]
		}
	}
	return rest
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

func sorted(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}
