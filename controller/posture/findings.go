package posture

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// Check names, as findings carry them.
const (
	CheckSVIDLifetime        = "svid-lifetime"
	CheckAdMessages          = "advertisement-messages"
	CheckAdDuration          = "advertisement-duration"
	CheckStaleIdentity       = "identity-not-seen"
	CheckNeverEnrolled       = "identity-never-enrolled"
	CheckTooManyAdmins       = "too-many-admins"
	CheckForeignMember       = "workgroup-member-without-org"
	CheckRevokedMember       = "workgroup-member-revoked"
	CheckStillSuspended      = "identity-suspended"
	CheckUnusedGrant         = "grant-unused"
	CheckUsageUnknown        = "grant-use-unknown"
	CheckReachOutlier        = "reach-above-peers"
	CheckToolUnpinned        = "tool-not-pinned"
	CheckToolChanged         = "tool-definition-changed"
	CheckUngated             = "reachable-without-gateway"
	CheckGatewayNoLimits     = "gateway-without-limits"
	CheckGatewayNoGuardrails = "gateway-without-guardrails"
	CheckGatewayUnreported   = "gateway-not-reported"
)

// rank orders severities; an unknown one is -1.
func rank(severity string) int {
	return slices.Index([]string{api.SeverityInfo, api.SeverityLow, api.SeverityMedium, api.SeverityHigh, api.SeverityCritical}, severity)
}

// ParseSeverity checks a severity name.
func ParseSeverity(s string) (string, error) {
	if rank(s) < 0 {
		return "", fmt.Errorf("severity %q is not one of info, low, medium, high, critical", s)
	}
	return s, nil
}

// AtLeast reports whether severity is at or above min.
func AtLeast(severity, min string) bool { return rank(severity) >= rank(min) }

// Findings holds the state the scope sees to policy and returns what is riskier than it allows, most severe
// first. Every finding's evidence comes from the state itself.
func Findings(st State, scope Scope, p Policy) []api.Finding {
	p = p.withDefaults()
	var out []api.Finding
	add := func(check, severity, subject, summary, evidence, fix string) {
		out = append(out, api.Finding{ID: check + "/" + subject, Check: check, Severity: severity, Subject: subject,
			Summary: summary, Evidence: evidence, Fix: fix})
	}
	if st.SVIDLifetime > p.MaxSVIDLifetime {
		add(CheckSVIDLifetime, api.SeverityHigh, "platform",
			"SVIDs live longer than policy allows: a stolen one stays usable that long",
			fmt.Sprintf("the controller issues SVIDs valid for %s; policy allows %s", st.SVIDLifetime, p.MaxSVIDLifetime),
			fmt.Sprintf("restart the controller with --svid-ttl %s or less", p.MaxSVIDLifetime))
	}
	live := map[string]Identity{}
	admins := map[string][]string{}
	for _, id := range st.Identities {
		if id.Live() {
			live[id.ID.String()] = id
		}
		if !scope.sees(id.Org) {
			continue
		}
		subject := id.ID.String()
		switch {
		case id.State == StateSuspended:
			add(CheckStillSuspended, api.SeverityInfo, subject, "identity is suspended",
				fmt.Sprintf("suspended: %q", id.SuspendReason),
				"resume it (umbra identity resume) once the cause is fixed, or revoke it (umbra identity revoke)")
		case id.State == StatePending && st.Now.Sub(id.CreatedAt) > p.StaleAfter:
			add(CheckNeverEnrolled, api.SeverityLow, subject, "identity created but never enrolled",
				fmt.Sprintf("created %s, %s ago, still pending", id.CreatedAt.UTC().Format(time.RFC3339), days(st.Now.Sub(id.CreatedAt))),
				"revoke it if it is not needed (umbra identity revoke)")
		case id.State == StateEnrolled && !id.LastSeen.IsZero() && st.Now.Sub(id.LastSeen) > p.StaleAfter:
			add(CheckStaleIdentity, api.SeverityLow, subject, "identity not seen for longer than policy allows",
				fmt.Sprintf("last enrolled or renewed %s, %s ago (policy: %s)", id.LastSeen.UTC().Format(time.RFC3339),
					days(st.Now.Sub(id.LastSeen)), days(p.StaleAfter)),
				"revoke it if the workload is gone (umbra identity revoke)")
		}
		if id.Admin && id.Live() {
			admins[id.Org] = append(admins[id.Org], subject)
		}
	}
	for org, ids := range admins {
		if len(ids) > p.MaxAdmins {
			slices.Sort(ids)
			add(CheckTooManyAdmins, api.SeverityMedium, org, fmt.Sprintf("organisation %s has %d administrators", org, len(ids)),
				fmt.Sprintf("administrators (policy allows %d): %s", p.MaxAdmins, strings.Join(ids, ", ")),
				"revoke the administrator identities that are not needed (umbra identity revoke)")
		}
	}
	for _, ad := range st.Advertisements {
		if !scope.sees(orgOf(ad.Provider.Path())) {
			continue
		}
		subject := ad.ID.String()
		if ad.Terms.MaxMessages > p.MaxAdvertisedMessages {
			add(CheckAdMessages, api.SeverityMedium, subject,
				fmt.Sprintf("advertisement %q lets a session carry practically unlimited messages", ad.Card.Name),
				fmt.Sprintf("terms of %s allow max_messages %d; policy allows %d", ad.Provider, ad.Terms.MaxMessages, p.MaxAdvertisedMessages),
				fmt.Sprintf("advertise again with max_messages of %d or less", p.MaxAdvertisedMessages))
		}
		if d := time.Duration(ad.Terms.MaxDuration); d > p.MaxAdvertisedDuration {
			add(CheckAdDuration, api.SeverityMedium, subject,
				fmt.Sprintf("advertisement %q lets a session run practically without end", ad.Card.Name),
				fmt.Sprintf("terms of %s allow max_duration %s; policy allows %s", ad.Provider, d, p.MaxAdvertisedDuration),
				fmt.Sprintf("advertise again with max_duration of %s or less", p.MaxAdvertisedDuration))
		}
	}
	orgs := map[string]bool{}
	for _, o := range st.Orgs {
		orgs[o.Name] = true
	}
	for _, w := range st.Workgroups {
		if !scope.seesWorkgroup(w) {
			continue
		}
		accepted := map[string]bool{w.ID.Org: orgs[w.ID.Org]}
		for _, inv := range w.Invitations {
			if inv.State == workgroups.InvitationAccepted && orgs[inv.Org] {
				accepted[inv.Org] = true
			}
		}
		for _, m := range w.Members {
			org := orgOf(m.Identity.Path())
			subject := w.ID.String() + "/" + m.Identity.String()
			switch _, ok := live[m.Identity.String()]; {
			case !accepted[org]:
				add(CheckForeignMember, api.SeverityHigh, subject,
					fmt.Sprintf("workgroup %s has a member of an organisation that is not (or no longer) in it", w.ID),
					fmt.Sprintf("member %s of organisation %s, which is neither the owner nor an organisation that accepted and still exists", m.Identity, org),
					fmt.Sprintf("remove it: umbra workgroup member remove %s %s", w.ID, m.Identity))
			case !ok:
				add(CheckRevokedMember, api.SeverityLow, subject,
					fmt.Sprintf("workgroup %s lists a revoked or unknown identity as a member", w.ID),
					fmt.Sprintf("member %s has no live identity record", m.Identity),
					fmt.Sprintf("remove it: umbra workgroup member remove %s %s", w.ID, m.Identity))
			}
		}
	}
	memberOf := map[string][]string{}
	for _, w := range st.Workgroups {
		for _, m := range w.Members {
			memberOf[m.Identity.String()] = append(memberOf[m.Identity.String()], w.ID.String())
		}
	}
	unusedGrants(st, scope, p, memberOf, add)
	reachOutliers(st, scope, p, add)
	gatewayFindings(st, scope, add)
	slices.SortFunc(out, func(a, b api.Finding) int {
		if c := cmp.Compare(rank(b.Severity), rank(a.Severity)); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

func days(d time.Duration) string {
	if d >= 48*time.Hour {
		return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	}
	return d.Round(time.Minute).String()
}
