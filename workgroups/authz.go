package workgroups

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cedar-policy/cedar-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// Cedar entity types and actions of the built-in, schema-free model.
const (
	EntityIdentity      = authz.TypeIdentity     // id: the SPIFFE ID
	EntityOrg           = authz.TypeOrg          // id: the organisation name
	EntityWorkgroup     = authz.TypeWorkgroup    // id: "<org>/<name>"
	EntityAdvertisement = "Umbra::Advertisement" // id: "ad_..."
	EntitySession       = "Umbra::Session"       // id: "ses_..."
	EntityAction        = authz.TypeAction
)

// Action is what a principal asks to do.
type Action string

const (
	ActionDiscover Action = "discover" // see an advertisement
	ActionPropose  Action = "propose"  // propose a session on an advertisement
	ActionAccept   Action = "accept"   // accept a held proposal, as its provider
	ActionSend     Action = "send"     // send an envelope in a session
)

func (a Action) valid() bool {
	return a == ActionDiscover || a == ActionPropose || a == ActionAccept || a == ActionSend
}

// builtinPolicies grant every permission there is; organisation policies and
// contract conditions can only take permissions away (they may only forbid).
const builtinPolicies = `
@id("discover-in-workgroup")
permit (
  principal is Umbra::Identity,
  action in [Umbra::Action::"discover", Umbra::Action::"propose"],
  resource is Umbra::Advertisement
) when { principal.workgroups.containsAny(resource.workgroups) };

@id("no-self-proposal")
forbid (
  principal,
  action == Umbra::Action::"propose",
  resource is Umbra::Advertisement
) when { resource.provider == principal };

@id("accept-as-provider")
permit (
  principal is Umbra::Identity,
  action == Umbra::Action::"accept",
  resource is Umbra::Session
) when { resource.provider == principal && principal.workgroups.contains(resource.workgroup) };

@id("send-as-party")
permit (
  principal is Umbra::Identity,
  action == Umbra::Action::"send",
  resource is Umbra::Session
) when {
  (resource.consumer == principal || resource.provider == principal) &&
  principal.workgroups.contains(resource.workgroup)
};
`

// Principal is the identity asking, with the workgroups it is a member of.
// Only active workgroups count; [PrincipalFor] builds it from memberships.
type Principal struct {
	ID         spiffeid.ID
	Workgroups []WorkgroupID
}

// PrincipalFor returns id as a principal with the active workgroups among ms.
func PrincipalFor(id spiffeid.ID, ms []Membership) Principal {
	return Principal{ID: id, Workgroups: ActiveWorkgroups(ms)}
}

// Resource is what the request is about: an advertisement or a session
// (exactly one ID set). Build it with [AdvertisementResource] or
// [SessionResource].
type Resource struct {
	Advertisement AdvertisementID
	Session       SessionID
	// Workgroups: the advertisement's scope, or the session's one workgroup.
	Workgroups []WorkgroupID
	Provider   spiffeid.ID
	Consumer   spiffeid.ID // sessions only
}

// AdvertisementResource describes ad as a request resource.
func AdvertisementResource(ad Advertisement) Resource {
	return Resource{Advertisement: ad.ID, Workgroups: ad.Workgroups, Provider: ad.Provider}
}

// SessionResource describes s as a request resource.
func SessionResource(s Session) Resource {
	return Resource{Session: s.ID, Workgroups: []WorkgroupID{s.Workgroup}, Provider: s.Provider, Consumer: s.Consumer}
}

// Request is one authorization question.
type Request struct {
	Principal Principal
	Action    Action
	Resource  Resource
	// Context is passed to policies as `context`; see [EnvelopeContext].
	Context cedar.RecordMap
	// At, when set, is passed as `context.now` (a Cedar datetime).
	At time.Time
	// Conditions are the session contract's conditions; pass them only for
	// requests about that session.
	Conditions Conditions
}

// Decision is the answer: the one decision type of every surface ([authz.Decision]). Its zero value denies.
type Decision = authz.Decision

// Diagnostic explains a decision for the audit record ([authz.Diagnostic]).
type Diagnostic = authz.Diagnostic

// Conditions is a parsed set of forbid-only Cedar policies, as found in a
// contract. The zero value holds none.
type Conditions struct {
	set *authz.Policies
}

// Len returns the number of policies.
func (c Conditions) Len() int {
	return c.set.Len()
}

// ParseConditions parses contract conditions: Cedar policies that may only
// forbid. Policy IDs are "contract/<@id>" when annotated, else
// "contract/<index>".
func ParseConditions(text string) (Conditions, error) {
	if strings.TrimSpace(text) == "" {
		return Conditions{}, nil
	}
	if len(text) > 2*MaxConditionsBytes {
		return Conditions{}, fmt.Errorf("%w: conditions longer than %d bytes", ErrInvalid, 2*MaxConditionsBytes)
	}
	set, err := parseForbidOnly("contract", "contract", text)
	if err != nil {
		return Conditions{}, err
	}
	return Conditions{set: set}, nil
}

// OrgPolicy is a named Cedar text an organisation adds. It may only forbid.
// It is evaluated on requests whose principal, provider or consumer belongs
// to Org, so an organisation cannot affect requests between others.
type OrgPolicy struct {
	Org  string
	Name string // a valid name, unique within Org
	Text string
}

// Authorizer decides requests with the built-in policies, organisation
// policies and per-request contract conditions. It is immutable and safe for
// concurrent use.
type Authorizer struct {
	builtin *authz.Policies
	orgs    map[string][]*authz.Policies
}

// NewAuthorizer parses the built-in policies and orgPolicies. Errors name the
// organisation and policy, and carry Cedar's position.
func NewAuthorizer(orgPolicies ...OrgPolicy) (*Authorizer, error) {
	builtin, err := authz.Parse("builtin", builtinPolicies, authz.Options{Prefix: "umbra"})
	if err != nil {
		return nil, fmt.Errorf("workgroups: built-in policies: %w", err)
	}
	a := &Authorizer{builtin: builtin, orgs: make(map[string][]*authz.Policies)}
	seen := make(map[[2]string]bool)
	for _, op := range orgPolicies {
		if err := ValidateName(op.Org); err != nil {
			return nil, fmt.Errorf("organisation policy: %w", err)
		}
		if err := ValidateName(op.Name); err != nil {
			return nil, fmt.Errorf("organisation %s policy: %w", op.Org, err)
		}
		if seen[[2]string{op.Org, op.Name}] {
			return nil, fmt.Errorf("%w: organisation %s: policy %s given twice", ErrInvalid, op.Org, op.Name)
		}
		seen[[2]string{op.Org, op.Name}] = true
		if len(op.Text) > MaxConditionsBytes*4 {
			return nil, fmt.Errorf("%w: organisation %s policy %s longer than %d bytes", ErrInvalid, op.Org, op.Name, MaxConditionsBytes*4)
		}
		set, err := parseForbidOnly(op.Org+"/"+op.Name, "org/"+op.Org+"/"+op.Name, op.Text)
		if err != nil {
			return nil, fmt.Errorf("organisation %s: %w", op.Org, err)
		}
		a.orgs[op.Org] = append(a.orgs[op.Org], set)
	}
	return a, nil
}

func parseForbidOnly(file, prefix, text string) (*authz.Policies, error) {
	set, err := authz.Parse(file, text, authz.Options{Prefix: prefix, ForbidOnly: true})
	if err != nil {
		return nil, fmt.Errorf("%w: policy %w", ErrInvalid, err)
	}
	return set, nil
}

// Decide answers r. It never panics on bad input and fails closed: a
// malformed request, a missing attribute or any policy evaluation error
// denies, and the diagnostic says why.
func (a *Authorizer) Decide(r Request) Decision {
	if a == nil || a.builtin == nil {
		return denied(errors.New("no authorizer"))
	}
	q, orgs, err := buildRequest(r)
	if err != nil {
		return denied(err)
	}
	chain := []*authz.Policies{a.builtin}
	for _, org := range orgs {
		chain = append(chain, a.orgs[org]...)
	}
	if r.Conditions.set != nil {
		chain = append(chain, r.Conditions.set)
	}
	q.What = fmt.Sprintf("%s on %s", r.Action, q.Resource.UID.ID)
	return authz.Decide(q, chain...)
}

func denied(err error) Decision { return authz.Denied(err) }

// buildRequest turns r into Cedar's request and entities, and lists the
// organisations whose policies apply.
func buildRequest(r Request) (authz.Query, []string, error) {
	var zero authz.Query
	pid, err := ParseIdentity(r.Principal.ID)
	if err != nil {
		return zero, nil, fmt.Errorf("principal: %w", err)
	}
	if !r.Action.valid() {
		return zero, nil, fmt.Errorf("action %q", clip(string(r.Action)))
	}
	res := r.Resource
	prov, err := ParseIdentity(res.Provider)
	if err != nil {
		return zero, nil, fmt.Errorf("resource provider: %w", err)
	}
	if len(res.Workgroups) == 0 {
		return zero, nil, errors.New("resource has no workgroup")
	}
	for _, wg := range slices.Concat(res.Workgroups, r.Principal.Workgroups) {
		if err := wg.Validate(); err != nil {
			return zero, nil, err
		}
	}
	orgs := []string{pid.Org, prov.Org}
	attrs := cedar.RecordMap{
		"provider":     identityUID(res.Provider),
		"provider_org": cedar.String(prov.Org),
		"workgroups":   workgroupSet(res.Workgroups),
	}
	var resUID cedar.EntityUID
	var parents []cedar.EntityUID
	switch {
	case !res.Advertisement.IsZero() && res.Session.IsZero():
		if !res.Consumer.IsZero() {
			return zero, nil, errors.New("an advertisement resource has no consumer")
		}
		resUID = cedar.NewEntityUID(EntityAdvertisement, cedar.String(res.Advertisement.String()))
	case !res.Session.IsZero() && res.Advertisement.IsZero():
		cons, err := ParseIdentity(res.Consumer)
		if err != nil {
			return zero, nil, fmt.Errorf("resource consumer: %w", err)
		}
		if len(res.Workgroups) != 1 {
			return zero, nil, errors.New("a session resource has exactly one workgroup")
		}
		orgs = append(orgs, cons.Org)
		resUID = cedar.NewEntityUID(EntitySession, cedar.String(res.Session.String()))
		attrs["consumer"] = identityUID(res.Consumer)
		attrs["consumer_org"] = cedar.String(cons.Org)
		attrs["workgroup"] = workgroupUID(res.Workgroups[0])
		parents = append(parents, workgroupUID(res.Workgroups[0]))
	default:
		return zero, nil, errors.New("resource must be exactly one of advertisement or session")
	}

	ctx := make(cedar.RecordMap, len(r.Context)+1)
	for k, v := range r.Context {
		if v == nil {
			return zero, nil, fmt.Errorf("context %q has no value", clip(string(k)))
		}
		ctx[k] = v
	}
	if !r.At.IsZero() {
		if _, clash := ctx["now"]; clash {
			return zero, nil, errors.New(`context key "now" is reserved for the request time`)
		}
		ctx["now"] = cedar.NewDatetime(r.At)
	}

	wgs := make([]string, len(r.Principal.Workgroups))
	for i, wg := range r.Principal.Workgroups {
		wgs[i] = wg.String()
	}
	principal := authz.Principal{ID: r.Principal.ID, Org: pid.Org, Workgroups: wgs}.Entity()
	slices.Sort(orgs)
	q := authz.Query{
		Principal: principal,
		Action:    string(r.Action),
		Resource:  cedar.Entity{UID: resUID, Parents: cedar.NewEntityUIDSet(parents...), Attributes: cedar.NewRecord(attrs)},
		Context:   ctx,
	}
	return q, slices.Compact(orgs), nil
}

func identityUID(id spiffeid.ID) cedar.EntityUID { return authz.IdentityUID(id) }

func workgroupUID(wg WorkgroupID) cedar.EntityUID { return authz.WorkgroupUID(wg.String()) }

func workgroupSet(wgs []WorkgroupID) cedar.Set {
	ss := make([]string, len(wgs))
	for i, wg := range wgs {
		ss[i] = wg.String()
	}
	return authz.WorkgroupSet(ss)
}

// EnvelopeContext is the Cedar context for a send request: message_type,
// content_type, size (payload bytes), seq, the number of envelopes the
// session has accepted so far, and intent when the envelope declares one.
func EnvelopeContext(h Header, accepted uint64) cedar.RecordMap {
	return authz.WithIntent(cedar.RecordMap{
		"message_type": cedar.String(h.Type),
		"content_type": cedar.String(h.ContentType),
		"size":         cedar.Long(clampInt64(h.Size)),
		"seq":          cedar.Long(clampInt64(h.Seq)),
		"accepted":     cedar.Long(clampInt64(accepted)),
	}, h.Intent)
}

// ProposalContext is the Cedar context for a propose request: intent when
// the proposal declares one.
func ProposalContext(p Proposal) cedar.RecordMap {
	return authz.WithIntent(cedar.RecordMap{}, p.Intent)
}

func clampInt64(v uint64) int64 {
	if v > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(v)
}
