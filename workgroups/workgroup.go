package workgroups

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Bounds on a workgroup's size, so a stored workgroup cannot grow without limit.
const (
	MaxInvitedOrgs = 64
	MaxMembers     = 4096
)

// WorkgroupID names a workgroup: its owner organisation and a name unique
// within it, written "<org>/<name>".
type WorkgroupID struct {
	Org  string
	Name string
}

// ParseWorkgroupID parses "<org>/<name>", both valid names.
func ParseWorkgroupID(s string) (WorkgroupID, error) {
	org, name, ok := strings.Cut(s, "/")
	if !ok || !validName(org) || !validName(name) {
		return WorkgroupID{}, fmt.Errorf("%w: workgroup %q: want <org>/<name>, both valid names", ErrInvalid, clip(s))
	}
	return WorkgroupID{Org: org, Name: name}, nil
}

// String returns "<org>/<name>", or "" for the zero value.
func (id WorkgroupID) String() string {
	if id.IsZero() {
		return ""
	}
	return id.Org + "/" + id.Name
}

// IsZero reports whether id is the zero value.
func (id WorkgroupID) IsZero() bool { return id == WorkgroupID{} }

// Validate checks both parts are valid names.
func (id WorkgroupID) Validate() error {
	if !validName(id.Org) || !validName(id.Name) {
		return fmt.Errorf("%w: workgroup %q: want <org>/<name>, both valid names", ErrInvalid, clip(id.Org+"/"+id.Name))
	}
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (id WorkgroupID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; empty text gives the
// zero value.
func (id *WorkgroupID) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*id = WorkgroupID{}
		return nil
	}
	v, err := ParseWorkgroupID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

func compareWorkgroupIDs(a, b WorkgroupID) int {
	if c := strings.Compare(a.Org, b.Org); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

// Scope says whether a workgroup spans organisations.
type Scope string

const (
	ScopeIntraOrg Scope = "intra_org" // members come from the owner organisation only
	ScopeInterOrg Scope = "inter_org" // invited organisations join once they accept
)

// Role is a member's role in a workgroup.
type Role string

const (
	RoleMember Role = "member"
	RoleAdmin  Role = "admin" // manages its own organisation's members
)

func (r Role) valid() bool { return r == RoleMember || r == RoleAdmin }

// InvitationState is the answer an invited organisation gave.
type InvitationState string

const (
	InvitationPending  InvitationState = "pending"
	InvitationAccepted InvitationState = "accepted"
	InvitationDeclined InvitationState = "declined" // terminal, and kept
)

// WorkgroupStatus is derived from the scope and the invitations.
type WorkgroupStatus string

const (
	StatusPending  WorkgroupStatus = "pending"  // an invitation is unanswered
	StatusActive   WorkgroupStatus = "active"   // intra-org, or every invitation accepted
	StatusDeclined WorkgroupStatus = "declined" // an invitation was declined; never becomes active
)

// Invitation is one organisation's invitation to an inter-org workgroup.
type Invitation struct {
	Org        string          `json:"org"`
	State      InvitationState `json:"state"`
	InvitedAt  time.Time       `json:"invited_at"`
	AnsweredBy spiffeid.ID     `json:"answered_by,omitzero"`
	AnsweredAt time.Time       `json:"answered_at,omitzero"`
}

// Member is an identity in a workgroup. Its organisation is the one in its
// SPIFFE ID.
type Member struct {
	Identity spiffeid.ID `json:"identity"`
	Role     Role        `json:"role"`
	Since    time.Time   `json:"since"`
}

// Workgroup is a set of identities that may discover and engage each other.
//
// Only the owner organisation's identities and those of organisations that
// accepted an invitation can be members; each organisation's admins manage
// only that organisation's members, and every organisation with members keeps
// at least one admin (so the workgroup always has one: its creator's
// organisation can never lose its last). An inter-org workgroup is active only
// once every invited organisation accepted; a decline is terminal and kept, so
// such a workgroup never becomes active: its owner creates a new one without
// the declining organisation. The set of invited organisations can grow only
// while the workgroup is still pending.
//
// Methods with a pointer receiver change the workgroup and return an error
// without changing anything when the operation is refused.
type Workgroup struct {
	ID          WorkgroupID  `json:"id"`
	Scope       Scope        `json:"scope"`
	Created     time.Time    `json:"created"`
	Invitations []Invitation `json:"invitations,omitempty"`
	Members     []Member     `json:"members"`
}

// NewWorkgroup creates a workgroup owned by id.Org with creator, an identity
// of that organisation, as its first admin. An inter-org workgroup needs at
// least one invited organisation; an intra-org one accepts none.
func NewWorkgroup(id WorkgroupID, scope Scope, creator spiffeid.ID, invited []string, now time.Time) (Workgroup, error) {
	if err := id.Validate(); err != nil {
		return Workgroup{}, err
	}
	if now.IsZero() {
		return Workgroup{}, fmt.Errorf("%w: workgroup %s: zero creation time", ErrInvalid, id)
	}
	ident, err := ParseIdentity(creator)
	if err != nil {
		return Workgroup{}, fmt.Errorf("workgroup %s: creator: %w", id, err)
	}
	if ident.Org != id.Org {
		return Workgroup{}, fmt.Errorf("%w: workgroup %s: creator %s is not of organisation %s", ErrNotAuthorized, id, creator, id.Org)
	}
	switch scope {
	case ScopeIntraOrg:
		if len(invited) != 0 {
			return Workgroup{}, fmt.Errorf("%w: workgroup %s: an intra-org workgroup invites no organisations", ErrInvalid, id)
		}
	case ScopeInterOrg:
		if len(invited) == 0 {
			return Workgroup{}, fmt.Errorf("%w: workgroup %s: an inter-org workgroup invites at least one organisation", ErrInvalid, id)
		}
	default:
		return Workgroup{}, fmt.Errorf("%w: workgroup %s: scope %q", ErrInvalid, id, clip(string(scope)))
	}
	w := Workgroup{
		ID:      id,
		Scope:   scope,
		Created: now,
		Members: []Member{{Identity: creator, Role: RoleAdmin, Since: now}},
	}
	for _, org := range invited {
		if err := w.addInvitation(org, now); err != nil {
			return Workgroup{}, err
		}
	}
	return w, nil
}

func (w *Workgroup) addInvitation(org string, now time.Time) error {
	if err := ValidateName(org); err != nil {
		return fmt.Errorf("workgroup %s: invited organisation: %w", w.ID, err)
	}
	if org == w.ID.Org {
		return fmt.Errorf("%w: workgroup %s: the owner organisation cannot be invited", ErrInvalid, w.ID)
	}
	if w.invitation(org) >= 0 {
		return fmt.Errorf("%w: workgroup %s: organisation %s already invited", ErrConflict, w.ID, org)
	}
	if len(w.Invitations) >= MaxInvitedOrgs {
		return fmt.Errorf("%w: workgroup %s: more than %d invited organisations", ErrInvalid, w.ID, MaxInvitedOrgs)
	}
	w.Invitations = append(w.Invitations, Invitation{Org: org, State: InvitationPending, InvitedAt: now})
	return nil
}

func (w Workgroup) invitation(org string) int {
	return slices.IndexFunc(w.Invitations, func(i Invitation) bool { return i.Org == org })
}

func (w Workgroup) member(id spiffeid.ID) int {
	return slices.IndexFunc(w.Members, func(m Member) bool { return m.Identity == id })
}

// Status derives the workgroup's status from its scope and invitations.
func (w Workgroup) Status() WorkgroupStatus {
	if w.Scope != ScopeInterOrg {
		return StatusActive
	}
	status := StatusActive
	for _, inv := range w.Invitations {
		switch inv.State {
		case InvitationDeclined:
			return StatusDeclined
		case InvitationPending:
			status = StatusPending
		}
	}
	return status
}

// Active reports whether members can discover and engage each other.
func (w Workgroup) Active() bool { return w.Status() == StatusActive }

// OrgAdmitted reports whether identities of org may be members: org owns the
// workgroup or accepted its invitation.
func (w Workgroup) OrgAdmitted(org string) bool {
	if org == "" {
		return false
	}
	if org == w.ID.Org {
		return true
	}
	i := w.invitation(org)
	return i >= 0 && w.Invitations[i].State == InvitationAccepted
}

// Member returns id's membership, if any.
func (w Workgroup) Member(id spiffeid.ID) (Member, bool) {
	if i := w.member(id); i >= 0 {
		return w.Members[i], true
	}
	return Member{}, false
}

// Orgs returns the admitted organisations: the owner first, then those that
// accepted, in invitation order.
func (w Workgroup) Orgs() []string {
	orgs := []string{w.ID.Org}
	for _, inv := range w.Invitations {
		if inv.State == InvitationAccepted {
			orgs = append(orgs, inv.Org)
		}
	}
	return orgs
}

// requireAdmin checks that actor is an admin of the workgroup from org.
func (w Workgroup) requireAdmin(actor spiffeid.ID, org, doing string) error {
	m, ok := w.Member(actor)
	if !ok || m.Role != RoleAdmin || orgOf(actor) != org {
		return fmt.Errorf("%w: workgroup %s: %s needs an admin of organisation %s", ErrNotAuthorized, w.ID, doing, org)
	}
	return nil
}

// Invite adds a pending invitation for org. The actor must be an admin from
// the owner organisation, and the workgroup inter-org and still pending.
func (w *Workgroup) Invite(actor spiffeid.ID, org string, now time.Time) error {
	if err := w.requireAdmin(actor, w.ID.Org, "inviting"); err != nil {
		return err
	}
	if w.Scope != ScopeInterOrg {
		return fmt.Errorf("%w: workgroup %s is intra-org", ErrConflict, w.ID)
	}
	if st := w.Status(); st != StatusPending {
		return fmt.Errorf("%w: workgroup %s is %s: invitations can be added only while pending", ErrConflict, w.ID, st)
	}
	if now.IsZero() {
		return fmt.Errorf("%w: workgroup %s: zero time", ErrInvalid, w.ID)
	}
	return w.addInvitation(org, now)
}

// AcceptInvitation records that actor's organisation accepts its invitation;
// actor becomes that organisation's first admin in the workgroup. (Whether
// actor may speak for its organisation is decided by the caller.)
func (w *Workgroup) AcceptInvitation(actor spiffeid.ID, now time.Time) error {
	return w.answer(actor, InvitationAccepted, now)
}

// DeclineInvitation records that actor's organisation declines. The decline
// is terminal: the workgroup will never become active.
func (w *Workgroup) DeclineInvitation(actor spiffeid.ID, now time.Time) error {
	return w.answer(actor, InvitationDeclined, now)
}

func (w *Workgroup) answer(actor spiffeid.ID, state InvitationState, now time.Time) error {
	ident, err := ParseIdentity(actor)
	if err != nil {
		return fmt.Errorf("workgroup %s: answering invitation: %w", w.ID, err)
	}
	if now.IsZero() {
		return fmt.Errorf("%w: workgroup %s: zero time", ErrInvalid, w.ID)
	}
	i := w.invitation(ident.Org)
	if i < 0 {
		return fmt.Errorf("%w: workgroup %s: no invitation for organisation %s", ErrNotFound, w.ID, ident.Org)
	}
	if inv := w.Invitations[i]; inv.State != InvitationPending {
		return fmt.Errorf("%w: workgroup %s: organisation %s already %s", ErrConflict, w.ID, ident.Org, inv.State)
	}
	if state == InvitationAccepted && len(w.Members) >= MaxMembers {
		return fmt.Errorf("%w: workgroup %s: more than %d members", ErrInvalid, w.ID, MaxMembers)
	}
	inv := &w.Invitations[i]
	inv.State, inv.AnsweredBy, inv.AnsweredAt = state, actor, now
	if state == InvitationAccepted {
		w.Members = append(w.Members, Member{Identity: actor, Role: RoleAdmin, Since: now})
	}
	return nil
}

// AddMember adds id with role. The actor must be an admin of the workgroup
// from id's organisation, which must be admitted.
func (w *Workgroup) AddMember(actor, id spiffeid.ID, role Role, now time.Time) error {
	ident, err := ParseIdentity(id)
	if err != nil {
		return fmt.Errorf("workgroup %s: new member: %w", w.ID, err)
	}
	if !role.valid() {
		return fmt.Errorf("%w: workgroup %s: role %q", ErrInvalid, w.ID, clip(string(role)))
	}
	if now.IsZero() {
		return fmt.Errorf("%w: workgroup %s: zero time", ErrInvalid, w.ID)
	}
	if !w.OrgAdmitted(ident.Org) {
		return fmt.Errorf("%w: workgroup %s: organisation %s is not admitted", ErrNotAuthorized, w.ID, ident.Org)
	}
	if err := w.requireAdmin(actor, ident.Org, "adding a member"); err != nil {
		return err
	}
	if w.Status() == StatusDeclined {
		return fmt.Errorf("%w: workgroup %s was declined", ErrConflict, w.ID)
	}
	if w.member(id) >= 0 {
		return fmt.Errorf("%w: workgroup %s: %s is already a member", ErrConflict, w.ID, id)
	}
	if len(w.Members) >= MaxMembers {
		return fmt.Errorf("%w: workgroup %s: more than %d members", ErrInvalid, w.ID, MaxMembers)
	}
	w.Members = append(w.Members, Member{Identity: id, Role: role, Since: now})
	return nil
}

// RemoveMember removes id. The actor must be an admin from id's organisation,
// or id itself (leaving). The last admin of an organisation cannot be removed.
func (w *Workgroup) RemoveMember(actor, id spiffeid.ID) error {
	i := w.member(id)
	if i < 0 {
		return fmt.Errorf("%w: workgroup %s: %s is not a member", ErrNotFound, w.ID, id)
	}
	org := orgOf(id)
	if actor != id {
		if err := w.requireAdmin(actor, org, "removing a member"); err != nil {
			return err
		}
	}
	if w.Members[i].Role == RoleAdmin && w.admins(org) == 1 {
		return fmt.Errorf("%w: workgroup %s: %s is the last admin of organisation %s", ErrLastAdmin, w.ID, id, org)
	}
	w.Members = slices.Delete(w.Members, i, i+1)
	return nil
}

// SetRole changes id's role. The actor must be an admin from id's
// organisation. Demoting the last admin of an organisation is refused.
func (w *Workgroup) SetRole(actor, id spiffeid.ID, role Role) error {
	if !role.valid() {
		return fmt.Errorf("%w: workgroup %s: role %q", ErrInvalid, w.ID, clip(string(role)))
	}
	i := w.member(id)
	if i < 0 {
		return fmt.Errorf("%w: workgroup %s: %s is not a member", ErrNotFound, w.ID, id)
	}
	org := orgOf(id)
	if err := w.requireAdmin(actor, org, "changing a role"); err != nil {
		return err
	}
	if w.Members[i].Role == RoleAdmin && role != RoleAdmin && w.admins(org) == 1 {
		return fmt.Errorf("%w: workgroup %s: %s is the last admin of organisation %s", ErrLastAdmin, w.ID, id, org)
	}
	w.Members[i].Role = role
	return nil
}

func (w Workgroup) admins(org string) int {
	n := 0
	for _, m := range w.Members {
		if m.Role == RoleAdmin && orgOf(m.Identity) == org {
			n++
		}
	}
	return n
}

// Validate checks every invariant; use it on workgroups read from storage.
func (w Workgroup) Validate() error {
	if err := w.ID.Validate(); err != nil {
		return err
	}
	if w.Scope != ScopeIntraOrg && w.Scope != ScopeInterOrg {
		return fmt.Errorf("%w: workgroup %s: scope %q", ErrInvalid, w.ID, clip(string(w.Scope)))
	}
	if w.Created.IsZero() {
		return fmt.Errorf("%w: workgroup %s: zero creation time", ErrInvalid, w.ID)
	}
	if w.Scope == ScopeIntraOrg && len(w.Invitations) != 0 {
		return fmt.Errorf("%w: workgroup %s: an intra-org workgroup has invitations", ErrInvalid, w.ID)
	}
	if w.Scope == ScopeInterOrg && len(w.Invitations) == 0 {
		return fmt.Errorf("%w: workgroup %s: an inter-org workgroup has no invitation", ErrInvalid, w.ID)
	}
	if len(w.Invitations) > MaxInvitedOrgs || len(w.Members) > MaxMembers {
		return fmt.Errorf("%w: workgroup %s: too many invitations or members", ErrInvalid, w.ID)
	}
	seenOrg := map[string]bool{w.ID.Org: true}
	for _, inv := range w.Invitations {
		if !validName(inv.Org) || seenOrg[inv.Org] {
			return fmt.Errorf("%w: workgroup %s: invitation for %q is invalid or repeated", ErrInvalid, w.ID, clip(inv.Org))
		}
		seenOrg[inv.Org] = true
		switch inv.State {
		case InvitationPending:
		case InvitationAccepted, InvitationDeclined:
			if orgOf(inv.AnsweredBy) != inv.Org {
				return fmt.Errorf("%w: workgroup %s: invitation for %s answered by %s", ErrInvalid, w.ID, inv.Org, inv.AnsweredBy)
			}
		default:
			return fmt.Errorf("%w: workgroup %s: invitation state %q", ErrInvalid, w.ID, clip(string(inv.State)))
		}
	}
	seen := make(map[spiffeid.ID]bool, len(w.Members))
	orgs := make(map[string]bool)
	for _, m := range w.Members {
		org := orgOf(m.Identity)
		if org == "" || seen[m.Identity] || !m.Role.valid() {
			return fmt.Errorf("%w: workgroup %s: member %s is invalid or repeated", ErrInvalid, w.ID, m.Identity)
		}
		if !w.OrgAdmitted(org) {
			return fmt.Errorf("%w: workgroup %s: member %s is from organisation %s, which is not admitted", ErrInvalid, w.ID, m.Identity, org)
		}
		seen[m.Identity] = true
		orgs[org] = true
	}
	if !orgs[w.ID.Org] {
		return fmt.Errorf("%w: workgroup %s: no member from the owner organisation", ErrInvalid, w.ID)
	}
	for org := range orgs {
		if w.admins(org) == 0 {
			return fmt.Errorf("%w: workgroup %s: organisation %s has members but no admin", ErrInvalid, w.ID, org)
		}
	}
	return nil
}
