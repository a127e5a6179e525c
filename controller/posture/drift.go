package posture

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// Items are an inventory's items by key ("identity:<spiffe-id>", "service:<name>", "workgroup:<id>",
// "advertisement:<id>", "org:<name>", "gateway:<spiffe-id>", "tool:<gateway>/<tool>", "model:<gateway>/<model>",
// "router:<name>"), each with a digest of what it is; a tool's is the digest of its pinned definition. Times and
// states that change by themselves (last seen, last use, SVID expiry, a report's time, a router being online) are left out,
// so only what someone changed counts as drift.
func Items(inv api.Inventory) map[string]string {
	out := map[string]string{}
	put := func(key string, v any) {
		b, _ := json.Marshal(v)
		sum := sha256.Sum256(b)
		out[key] = hex.EncodeToString(sum[:8])
	}
	for _, o := range inv.Organisations {
		put("org:"+o.Name, o)
	}
	for _, id := range inv.Identities {
		id.LastSeen, id.SVIDExpiresAt, id.EnrolledAt, id.LastUsed = time.Time{}, time.Time{}, time.Time{}, nil
		put("identity:"+id.SPIFFEID, id)
	}
	for _, s := range inv.Services {
		put("service:"+s.Name, s)
	}
	for _, w := range inv.Workgroups {
		put("workgroup:"+w.ID, w)
	}
	for _, a := range inv.Advertisements {
		put("advertisement:"+a.ID, a)
	}
	for _, g := range inv.Gateways {
		g.ReportedAt = time.Time{}
		put("gateway:"+g.SPIFFEID, g)
	}
	for _, t := range inv.Tools {
		out[toolKey(t)] = cmp.Or(t.Digest, "unpinned")
	}
	for _, m := range inv.Models {
		put("model:"+m.Gateway+"/"+m.Name, m)
	}
	for _, r := range inv.Routers {
		r.Online, r.Version = false, ""
		put("router:"+r.Name, r)
	}
	return out
}

// Diff compares the items of a baseline recorded at baseAt with those of now.
func Diff(base map[string]string, baseAt time.Time, now map[string]string) api.Drift {
	d := api.Drift{BaselineAt: baseAt.UTC(), Added: []string{}, Removed: []string{}, Changed: []string{}}
	for k, v := range now {
		switch old, ok := base[k]; {
		case !ok:
			d.Added = append(d.Added, k)
		case old != v:
			d.Changed = append(d.Changed, k)
		}
	}
	for k := range base {
		if _, ok := now[k]; !ok {
			d.Removed = append(d.Removed, k)
		}
	}
	slices.Sort(d.Added)
	slices.Sort(d.Removed)
	slices.Sort(d.Changed)
	return d
}
