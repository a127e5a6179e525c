package posture

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// unusedGrants finds identities holding grants they have not used for p.UnusedAfter. Two sources of evidence
// are read. The overlay's grant-use records (st.GrantUse) judge every dial and bind grant: a dial is used by a
// circuit the identity dialed, a bind by a circuit it hosted or by its listening on the service. The audit trail
// (st.Usage) judges workgroup memberships (a record of the identity in that workgroup: a proposal, an
// acceptance, an envelope, a session transition) and also dial grants of a gateway's service (a call through the
// gateway: mcp.call, mcp.prompt, mcp.read, llm.call). A grant is used if any source that judges it shows a use.
// A grant that no source covering p.UnusedAfter judges is not judged, and one grant-use-unknown finding says how
// many were left out and why.
func unusedGrants(st State, scope Scope, p Policy, memberOf map[string][]string, add func(check, severity, subject, summary, evidence, fix string)) {
	cutoff := st.Now.Add(-p.UnusedAfter)
	u, g := st.Usage, st.GrantUse
	audited, tracked := u.covers(cutoff), g.covers(cutoff)
	gatewayOf := map[string]string{} // service -> gateway
	for id, r := range st.Reports {
		if r.Service != "" {
			gatewayOf[r.Service] = id
		}
	}
	type candidate struct {
		id     Identity
		unused []string
	}
	var found []candidate
	var unknownService, unknownWorkgroup int // grants no covering source judges
	for _, id := range st.Identities {
		if id.State != StateEnrolled || !scope.sees(id.Org) || id.CreatedAt.After(cutoff) {
			continue
		}
		subject := id.ID.String()
		var unused []string
		// A grant given after the cutoff has not had the period to be used in; one given at an unknown time is
		// as old as the identity, which is older than the cutoff here.
		young := func(key string) bool { return id.Granted[key].After(cutoff) }
		for _, svc := range sorted(id.Dial) {
			if young("dial:" + svc) {
				continue
			}
			gw, viaGateway := gatewayOf[svc]
			viaGateway = viaGateway && audited
			if !tracked && !viaGateway {
				unknownService++
				continue
			}
			if tracked && g.usedSince(g.Dial, subject, svc, cutoff) || viaGateway && u.Gateways[subject][gw].After(cutoff) {
				continue
			}
			var none []string
			if tracked {
				none = append(none, "no circuit dialed on the overlay")
			}
			if viaGateway {
				none = append(none, "no call through gateway "+gw)
			}
			unused = append(unused, "dial "+svc+" ("+strings.Join(none, "; ")+")")
		}
		for _, svc := range sorted(id.Bind) {
			if young("bind:" + svc) {
				continue
			}
			if !tracked {
				unknownService++
				continue
			}
			if !g.usedSince(g.Bind, subject, svc, cutoff) {
				unused = append(unused, "bind "+svc+" (no circuit hosted and no listening on the overlay)")
			}
		}
		for _, wg := range sorted(memberOf[subject]) {
			if !audited {
				unknownWorkgroup++
				continue
			}
			if !u.Workgroups[subject][wg].After(cutoff) {
				unused = append(unused, "workgroup "+wg+" (no audit record in it)")
			}
		}
		if len(unused) > 0 {
			found = append(found, candidate{id, unused})
		}
	}
	auditRead := "no audit records read"
	if u.Records == 0 && u.FromStart {
		auditRead = "the whole audit trail, which holds no records yet"
	}
	if u.Records > 0 {
		auditRead = fmt.Sprintf("%d audit records read from %s", u.Records, u.From.UTC().Format(time.RFC3339))
		if u.FromStart {
			auditRead += ", the trail's start"
		}
	}
	overlayRead := "no overlay grant-use records (recording never began)"
	if !g.Since.IsZero() {
		overlayRead = fmt.Sprintf("the overlay's grant-use records, kept since %s at a granularity of %s",
			g.Since.UTC().Format(time.RFC3339), g.Granularity)
	}
	if unknownService+unknownWorkgroup > 0 {
		var why []string
		if unknownService > 0 {
			why = append(why, fmt.Sprintf("%d service grants (%s)", unknownService, overlayRead))
		}
		if unknownWorkgroup > 0 {
			why = append(why, fmt.Sprintf("%d workgroup memberships (%s)", unknownWorkgroup, auditRead))
		}
		add(CheckUsageUnknown, api.SeverityInfo, "platform", "some grants' use could not be judged: their evidence is shorter than the policy's period",
			fmt.Sprintf("unused grants are judged over %s, since %s; not judged: %s", days(p.UnusedAfter),
				cutoff.UTC().Format(time.RFC3339), strings.Join(why, "; ")),
			"shorten --unused-after to what the evidence covers, or judge again once it does")
	}
	for _, c := range found {
		subject := c.id.ID.String()
		var last []string
		if t := g.last(subject); !t.IsZero() {
			last = append(last, "its newest overlay use of any service recorded "+t.UTC().Format(time.RFC3339))
		}
		if t := u.Last[subject]; !t.IsZero() {
			last = append(last, "its newest audit record of use "+t.UTC().Format(time.RFC3339))
		}
		if len(last) == 0 {
			last = append(last, "no recorded use at all")
		}
		var read []string
		if tracked {
			read = append(read, overlayRead)
		}
		if audited {
			read = append(read, auditRead)
		}
		add(CheckUnusedGrant, api.SeverityLow, subject, fmt.Sprintf("identity holds grants it has not used for %s", days(p.UnusedAfter)),
			fmt.Sprintf("no use since %s of: %s (%s; read: %s)", cutoff.UTC().Format(time.RFC3339),
				strings.Join(c.unused, "; "), strings.Join(last, ", "), strings.Join(read, "; ")),
			"take away what it does not need: umbra workgroup member remove WORKGROUP ID for a workgroup; a service grant "+
				"cannot be withdrawn alone yet: revoke the identity and create it again with the grants it uses")
	}
}

// reachOutliers finds identities that may dial or bind far more services than the median of the live
// identities of their kind (across the platform: the evidence names only counts and the median).
func reachOutliers(st State, scope Scope, p Policy, add func(check, severity, subject, summary, evidence, fix string)) {
	reach := func(id Identity) int {
		s := map[string]bool{}
		for _, x := range id.Dial {
			s[x] = true
		}
		for _, x := range id.Bind {
			s[x] = true
		}
		return len(s)
	}
	byKind := map[string][]int{}
	for _, id := range st.Identities {
		if id.Live() {
			byKind[id.Kind] = append(byKind[id.Kind], reach(id))
		}
	}
	medians := map[string]float64{}
	for kind, rs := range byKind {
		slices.Sort(rs)
		n := len(rs)
		if n%2 == 1 {
			medians[kind] = float64(rs[n/2])
		} else {
			medians[kind] = float64(rs[n/2-1]+rs[n/2]) / 2
		}
	}
	for _, id := range st.Identities {
		peers := len(byKind[id.Kind])
		if !id.Live() || !scope.sees(id.Org) || peers < p.ReachMinPeers {
			continue
		}
		r, med := reach(id), medians[id.Kind]
		if float64(r) <= p.ReachFactor*max(med, 1) {
			continue
		}
		add(CheckReachOutlier, api.SeverityMedium, id.ID.String(),
			fmt.Sprintf("identity can reach far more services than others of its kind (%s)", id.Kind),
			fmt.Sprintf("it may dial %d and bind %d services, %d in all; the median of the %d live identities of kind %s is %g (policy: at most %g times the median, or %g)",
				len(id.Dial), len(id.Bind), r, peers, id.Kind, med, p.ReachFactor, p.ReachFactor*max(med, 1)),
			"check which of its grants it needs; split the workload into identities with narrower grants")
	}
}
