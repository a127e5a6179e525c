// Package gatewayadmin decides who administers a gateway, and over whose held calls and usage. Both gateways
// (mcpgw, llmgw) ask it the same question with what their directory says of the caller; the answer is a pure,
// total function of the gateway's Grant and the caller, and its zero value grants nothing.
//
// Who administers a gateway:
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

// Decide says what c may administer at the gateway g.
func (g Grant) Decide(c Caller) Access {
	switch {
	case c.ID.IsZero():
		return Access{Reason: "no verified identity"}
	case c.Revoked:
		return Access{Reason: "the identity is revoked"}
	case slices.Contains(g.Admins, c.ID):
		return Access{All: true, Gateway: true, Basis: "named in the gateway's admins"}
	case !c.Admin:
		return Access{Reason: "administrators only"}
	case c.Org == "":
		return Access{Reason: "the administrator's organisation is unknown"}
	case c.Org == PlatformOrg:
		return Access{All: true, Gateway: true, Basis: "platform administrator"}
	case c.Org == g.Org():
		return Access{Org: c.Org, Gateway: true, Basis: "administrator of the gateway's organisation " + c.Org}
	case slices.Contains(g.Orgs, c.Org):
		return Access{Org: c.Org, Basis: "administrator of " + c.Org + ", named in the gateway's admin_orgs"}
	}
	return Access{Reason: fmt.Sprintf("an administrator of organisation %s does not administer this gateway unless its admins or admin_orgs name them", c.Org)}
}
