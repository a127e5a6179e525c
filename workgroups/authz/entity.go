package authz

import (
	"strings"

	"github.com/cedar-policy/cedar-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The entity types every surface shares.
const (
	TypeIdentity  = "Umbra::Identity"  // id: the SPIFFE ID
	TypeOrg       = "Umbra::Org"       // id: the organisation name
	TypeWorkgroup = "Umbra::Workgroup" // id: "<org>/<name>"
	TypeAction    = "Umbra::Action"    // id: the action's name
)

// Principal is the identity asking, as every surface's policies see it.
type Principal struct {
	ID spiffeid.ID
	// Org is the identity's organisation as the caller's directory knows it ("" when unknown; [PathOf] reads it
	// from the path of an identity the controller issued).
	Org string
	// Admin: the directory says the identity administers its organisation.
	Admin bool
	// Workgroups are the workgroups ("<org>/<name>") the identity is an active member of.
	Workgroups []string
}

// Entity is the principal as a Cedar entity: Umbra::Identity::"<SPIFFE ID>" with attributes org, kind, name,
// trust_domain, admin and workgroups (a set of Umbra::Workgroup), child of its Umbra::Org and of each of its
// Umbra::Workgroups.
func (p Principal) Entity() cedar.Entity {
	_, kind, name := PathOf(p.ID)
	org := p.Org
	parents := make([]cedar.EntityUID, 0, 1+len(p.Workgroups))
	if org != "" {
		parents = append(parents, OrgUID(org))
	}
	for _, wg := range p.Workgroups {
		parents = append(parents, WorkgroupUID(wg))
	}
	td := ""
	if !p.ID.IsZero() {
		td = p.ID.TrustDomain().Name()
	}
	return cedar.Entity{
		UID:     IdentityUID(p.ID),
		Parents: cedar.NewEntityUIDSet(parents...),
		Attributes: cedar.NewRecord(cedar.RecordMap{
			"org":          cedar.String(org),
			"kind":         cedar.String(kind),
			"name":         cedar.String(name),
			"trust_domain": cedar.String(td),
			"admin":        cedar.Boolean(p.Admin),
			"workgroups":   WorkgroupSet(p.Workgroups),
		}),
	}
}

// PathOf splits an identity's path, spiffe://<trust domain>/<org>/<kind>/<name>, into its three segments; any
// other shape yields the first segment as org and empty kind and name.
func PathOf(id spiffeid.ID) (org, kind, name string) {
	if id.IsZero() {
		return "", "", ""
	}
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) == 3 {
		return segs[0], segs[1], segs[2]
	}
	return segs[0], "", ""
}

// IdentityUID is Umbra::Identity::"<id>".
func IdentityUID(id spiffeid.ID) cedar.EntityUID {
	return cedar.NewEntityUID(TypeIdentity, cedar.String(id.String()))
}

// OrgUID is Umbra::Org::"<org>".
func OrgUID(org string) cedar.EntityUID {
	return cedar.NewEntityUID(TypeOrg, cedar.String(org))
}

// WorkgroupUID is Umbra::Workgroup::"<org>/<name>".
func WorkgroupUID(wg string) cedar.EntityUID {
	return cedar.NewEntityUID(TypeWorkgroup, cedar.String(wg))
}

// ActionUID is Umbra::Action::"<name>".
func ActionUID(name string) cedar.EntityUID {
	return cedar.NewEntityUID(TypeAction, cedar.String(name))
}

// WorkgroupSet is a set of Umbra::Workgroup entities.
func WorkgroupSet(wgs []string) cedar.Set {
	vs := make([]cedar.Value, len(wgs))
	for i, wg := range wgs {
		vs[i] = WorkgroupUID(wg)
	}
	return cedar.NewSet(vs...)
}
