package posture

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// unusedGrants finds identities holding grants they have not used for p.UnusedAfter, by the audit trail: a
// workgroup membership is used by a record of the identity in that workgroup (a proposal, an acceptance, an
// envelope, a session transition), a dial grant of a gateway's service by a call through that gateway (mcp.call,
// mcp.prompt, mcp.read, llm.call). Other service grants are not judged: plain overlay connections leave no
// audit record. When the summary does not reach back p.UnusedAfter, nothing is judged and one finding says so.
func unusedGrants(st State, scope Scope, p Policy, memberOf map[string][]string, add func(check, severity, subject, summary, evidence, fix string)) {
	cutoff := st.Now.Add(-p.UnusedAfter)
	u := st.Usage
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
	judged := 0
	for _, id := range st.Identities {
		if id.State != StateEnrolled || !scope.sees(id.Org) || id.CreatedAt.After(cutoff) {
			continue
		}
		subject := id.ID.String()
		var unused []string
		for _, svc := range sorted(id.Dial) {
			gw, ok := gatewayOf[svc]
			if !ok {
				continue
			}
			judged++
			if !u.Gateways[subject][gw].After(cutoff) {
				unused = append(unused, "dial "+svc+" (gateway "+gw+")")
			}
		}
		for _, wg := range sorted(memberOf[subject]) {
			judged++
			if !u.Workgroups[subject][wg].After(cutoff) {
				unused = append(unused, "workgroup "+wg)
			}
		}
		if len(unused) > 0 {
			found = append(found, candidate{id, unused})
		}
	}
	if judged == 0 {
		return
	}
	if !u.covers(cutoff) {
		from := "no records"
		if u.Records > 0 {
			from = fmt.Sprintf("the %d records read reach back to %s only", u.Records, u.From.UTC().Format(time.RFC3339))
		}
		add(CheckUsageUnknown, api.SeverityInfo, "platform", "grant use could not be judged: the audit trail read is shorter than the policy's period",
			fmt.Sprintf("unused grants are judged over %s; %s", days(p.UnusedAfter), from),
			"shorten --unused-after to what the audit trail read covers")
		return
	}
	for _, c := range found {
		last := "no record of use at all"
		if t := u.Last[c.id.ID.String()]; !t.IsZero() {
			last = "its newest record of use is of " + t.UTC().Format(time.RFC3339)
		}
		add(CheckUnusedGrant, api.SeverityLow, c.id.ID.String(), fmt.Sprintf("identity holds grants it has not used for %s", days(p.UnusedAfter)),
			fmt.Sprintf("no audit record of use since %s of: %s (%s; %d records read from %s)", cutoff.UTC().Format(time.RFC3339),
				strings.Join(c.unused, "; "), last, u.Records, u.From.UTC().Format(time.RFC3339)),
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
