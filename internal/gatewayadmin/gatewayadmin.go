// Package gatewayadmin decides who administers a gateway, and over whose held calls and usage. Both gateways
// (mcpgw, llmgw) ask it the same question with what their directory says of the caller; the answer is a pure,
// total function of the gateway's Grant and the caller, and its zero value grants nothing.
//
// The decisions are Cedar decisions of every surface's policy language (package authz): the administration
// actions read_gateway, release_tool, refuse_tool, approve_call, deny_call and read_usage, on the resources
// Umbra::Gateway, Umbra::Tool, Umbra::HeldCall and Umbra::Usage, decided by built-in policies that express the
// default grants below and by the operator's Grant.Policies, which may forbid (or permit) any of them; see
// builtinPolicies in policies.go for the entities and context they see. [Authorizer.Decide] answers one action on
// one target; [Authorizer.Access] sums up what a caller may administer, for listing.
//
// Who administers a gateway by default:
//
//   - an identity the gateway's configuration lists in Grant.Admins: everything, for every organisation;
//   - the platform administrator (an administrator of organisation "umbra"): the same;
//   - an administrator of the gateway's own organisation (the organisation in the gateway's SPIFFE ID): the
//     gateway-wide decisions (tool versions, backends, metrics), and the held calls and usage of that
//     organisation's identities only;
//   - an administrator of an organisation listed in Grant.Orgs: the held calls and usage of that organisation's
//     identities only;
//   - nobody else: an administrator of any other organisation is refused, with a one-line reason.
package gatewayadmin

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// PlatformOrg is the organisation of the platform administrator (the controller's api.PlatformAdminOrg).
const PlatformOrg = "umbra"

// Grant is a gateway's administration setting. The zero value admits the platform administrator only.
type Grant struct {
	// Gateway is the gateway's own identity; its organisation (the first segment of its path) is the one whose
	// administrators administer the gateway by default. Zero: no organisation of its own.
	Gateway spiffeid.ID
	// Admins administer the gateway fully, for every organisation, whatever the directory says of them.
	Admins []spiffeid.ID
	// Orgs are organisations whose administrators may administer this gateway for their own organisation's
	// callers: decide their held calls, read their usage.
	Orgs []string
	// Policies is Cedar text the operator adds to the built-in administration policies (file name
	// "admin_policies" in errors): a forbid takes a default grant away, a permit adds one. Empty: the defaults.
	Policies string
}

var orgName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// Check reports a malformed organisation name in g.Orgs.
func (g Grant) Check() error {
	for _, o := range g.Orgs {
		if !orgName.MatchString(o) {
			return fmt.Errorf("admin_orgs: %q is not an organisation name: use 1-63 of [a-z0-9_-], starting with a letter", o)
		}
	}
	return nil
}

// Org is the gateway's own organisation, or "".
func (g Grant) Org() string {
	if g.Gateway.IsZero() {
		return ""
	}
	return OrgOf(g.Gateway)
}

// OrgOf is the organisation an identity belongs to: the first segment of its path, as the controller issues them
// (spiffe://<trust domain>/<org>/<kind>/<name>).
func OrgOf(id spiffeid.ID) string {
	org, _, _ := strings.Cut(strings.TrimPrefix(id.Path(), "/"), "/")
	return org
}

// Caller is what the gateway's directory says of the identity asking.
type Caller struct {
	ID      spiffeid.ID
	Org     string
	Admin   bool
	Revoked bool
}

// Access is what an identity may administer at a gateway. The zero value grants nothing.
type Access struct {
	// All: held calls and usage of every organisation's identities.
	All bool
	// Org, when not All: only the held calls and usage of this organisation's identities.
	Org string
	// Gateway: the decisions that affect every caller (tool versions), and the gateway's own state (backends,
	// metrics).
	Gateway bool
	// Basis says why access was granted, for the audit record; Reason why it was refused, one line for the caller.
	Basis, Reason string
}

// Granted reports whether a may administer anything at all.
func (a Access) Granted() bool { return a.All || a.Org != "" }

// Covers reports whether a extends to identities of org.
func (a Access) Covers(org string) bool { return a.All || a.Org != "" && a.Org == org }

// CoversID reports whether a extends to the identity id.
func (a Access) CoversID(id spiffeid.ID) bool { return a.Covers(OrgOf(id)) }

// Decide says what c may administer at the gateway g: [Authorizer.Access] with g's policies. A Grant whose
// Policies do not parse grants nothing, and says so.
func (g Grant) Decide(c Caller) Access {
	a, err := NewAuthorizer(g)
	if err != nil {
		return Access{Reason: err.Error()}
	}
	return a.Access(c)
}

// probeOrg is an organisation name no identity has (names start with a letter): access to its usage is access to
// every organisation's.
const probeOrg = "*"

// Access says what c may administer here, as the policies decide: Gateway when read_gateway on the gateway is
// allowed; All when read_usage of an organisation no policy names is; else Org when read_usage of c's own
// organisation is. Acting on one item is decided again, by [Authorizer.Decide] on that item.
func (a *Authorizer) Access(c Caller) Access {
	gw := a.Decide(c, ActionReadGateway, a.GatewayTarget())
	all := a.Decide(c, ActionReadUsage, a.UsageTarget("org:"+probeOrg, spiffeid.ID{}, probeOrg))
	acc := Access{Gateway: gw.Allow, All: all.Allow}
	basisOf := all
	if !acc.All && c.Org != "" {
		own := a.Decide(c, ActionReadUsage, a.UsageTarget("org:"+c.Org, spiffeid.ID{}, c.Org))
		if own.Allow {
			acc.Org, basisOf = c.Org, own
		}
	}
	if !acc.Granted() {
		if acc.Gateway { // an operator's policy grants the gateway and no organisation: keep the zero Access
			acc.Gateway = false
		}
		acc.Reason = a.refusal(c, all)
		return acc
	}
	acc.Basis = a.basis(c, basisOf)
	return acc
}

// basis says, for the audit record, why d granted c access.
func (a *Authorizer) basis(c Caller, d authz.Decision) string {
	words := ""
	switch {
	case slices.Contains(d.Diagnostic.Policies, PolicyGatewayAdmins):
		words = "named in the gateway's admins"
	case slices.Contains(d.Diagnostic.Policies, PolicyPlatformAdmin):
		words = "platform administrator"
	case c.Org == a.grant.Org():
		words = "administrator of the gateway's organisation " + c.Org
	case slices.Contains(a.grant.Orgs, c.Org):
		words = "administrator of " + c.Org + ", named in the gateway's admin_orgs"
	default:
		words = "granted by the administration policies"
	}
	return words + " (policy " + strings.Join(d.Diagnostic.Policies, ", ") + ")"
}

// refusal says, in one line, why c administers nothing here.
func (a *Authorizer) refusal(c Caller, d authz.Decision) string {
	switch {
	case c.ID.IsZero():
		return "no verified identity"
	case c.Revoked:
		return "the identity is revoked"
	case len(d.Diagnostic.Policies) > 0 || len(d.Diagnostic.Errors) > 0: // an operator's forbid, or an error
		return d.Reason()
	case !c.Admin:
		return "administrators only"
	case c.Org == "":
		return "the administrator's organisation is unknown"
	}
	return fmt.Sprintf("an administrator of organisation %s does not administer this gateway unless its admins or admin_orgs name them", c.Org)
}
