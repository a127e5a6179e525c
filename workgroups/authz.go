package workgroups

import (
	"errors"
	"fmt"
	"iter"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cedar-policy/cedar-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Cedar entity types and actions of the built-in, schema-free model.
const (
	EntityIdentity      = "Umbra::Identity"      // id: the SPIFFE ID
	EntityOrg           = "Umbra::Org"           // id: the organisation name
	EntityWorkgroup     = "Umbra::Workgroup"     // id: "<org>/<name>"
	EntityAdvertisement = "Umbra::Advertisement" // id: "ad_..."
	EntitySession       = "Umbra::Session"       // id: "ses_..."
	EntityAction        = "Umbra::Action"
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

// Decision is the answer. Its zero value denies.
type Decision struct {
	Allow      bool       `json:"allow"`
	Diagnostic Diagnostic `json:"diagnostic"`
}

// Diagnostic explains a decision for the audit record.
type Diagnostic struct {
	// Policies that determined the decision: the permits that matched when
	// allowed, the forbids that matched when denied by a forbid.
	Policies []string `json:"policies,omitempty"`
	Reasons  []string `json:"reasons,omitempty"`
	// Errors met while evaluating; any error denies.
	Errors []string `json:"errors,omitempty"`
}

// Err returns nil when d allows, otherwise an error wrapping
// [ErrNotAuthorized] with the reasons.
func (d Decision) Err() error {
	if d.Allow {
		return nil
	}
	msg := strings.Join(slices.Concat(d.Diagnostic.Reasons, d.Diagnostic.Errors), "; ")
	if msg == "" {
		msg = "denied"
	}
	return fmt.Errorf("%w: %s", ErrNotAuthorized, msg)
}

// Conditions is a parsed set of forbid-only Cedar policies, as found in a
// contract. The zero value holds none.
type Conditions struct {
	set *cedar.PolicySet
}

// Len returns the number of policies.
func (c Conditions) Len() int {
	n := 0
	if c.set != nil {
		for range c.set.All() {
			n++
		}
	}
	return n
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
	builtin *cedar.PolicySet
	orgs    map[string]*cedar.PolicySet
}

// NewAuthorizer parses the built-in policies and orgPolicies. Errors name the
// organisation and policy, and carry Cedar's position.
func NewAuthorizer(orgPolicies ...OrgPolicy) (*Authorizer, error) {
	builtin, err := parsePolicies("builtin", "umbra", builtinPolicies, false)
	if err != nil {
		return nil, fmt.Errorf("workgroups: built-in policies: %w", err)
	}
	a := &Authorizer{builtin: builtin, orgs: make(map[string]*cedar.PolicySet)}
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
		dst := a.orgs[op.Org]
		if dst == nil {
			dst = cedar.NewPolicySet()
			a.orgs[op.Org] = dst
		}
		for id, p := range set.All() {
			dst.Add(id, p)
		}
	}
	return a, nil
}

func parseForbidOnly(file, prefix, text string) (*cedar.PolicySet, error) {
	set, err := parsePolicies(file, prefix, text, true)
	if err != nil {
		return nil, fmt.Errorf("%w: policy %s: %w", ErrInvalid, file, err)
	}
	return set, nil
}

// parsePolicies parses text into a set whose IDs are prefix + "/" + the @id
// annotation, or the policy's index when it has none.
func parsePolicies(file, prefix, text string, forbidOnly bool) (*cedar.PolicySet, error) {
	list, err := cedar.NewPolicyListFromBytes(file, []byte(text))
	if err != nil {
		return nil, err
	}
	set := cedar.NewPolicySet()
	for i, p := range list {
		pos := p.Position()
		if forbidOnly && p.Effect() != cedar.Forbid {
			return nil, fmt.Errorf("line %d: only forbid policies may be added; the built-in policies grant every permission", pos.Line)
		}
		name := strconv.Itoa(i)
		if v, ok := p.Annotations()["id"]; ok {
			name = string(v)
			if !validPolicyName(name) {
				return nil, fmt.Errorf("line %d: @id %q: want 1-64 of [A-Za-z0-9._-]", pos.Line, clip(name))
			}
		}
		if !set.Add(cedar.PolicyID(prefix+"/"+name), p) {
			return nil, fmt.Errorf("line %d: policy id %q used twice", pos.Line, name)
		}
	}
	return set, nil
}

func validPolicyName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// policyChain evaluates several policy sets as one without copying them.
type policyChain []*cedar.PolicySet

func (c policyChain) All() iter.Seq2[cedar.PolicyID, *cedar.Policy] {
	return func(yield func(cedar.PolicyID, *cedar.Policy) bool) {
		for _, s := range c {
			if s == nil {
				continue
			}
			for id, p := range s.All() {
				if !yield(id, p) {
					return
				}
			}
		}
	}
}

// Decide answers r. It never panics on bad input and fails closed: a
// malformed request, a missing attribute or any policy evaluation error
// denies, and the diagnostic says why.
func (a *Authorizer) Decide(r Request) Decision {
	if a == nil || a.builtin == nil {
		return denied(errors.New("no authorizer"))
	}
	creq, entities, orgs, err := buildRequest(r)
	if err != nil {
		return denied(err)
	}
	chain := policyChain{a.builtin}
	for _, org := range orgs {
		chain = append(chain, a.orgs[org])
	}
	chain = append(chain, r.Conditions.set)

	dec, diag := cedar.Authorize(chain, entities, creq)
	var d Decision
	for _, e := range diag.Errors {
		d.Diagnostic.Errors = append(d.Diagnostic.Errors, e.String())
	}
	for _, reason := range diag.Reasons {
		d.Diagnostic.Policies = append(d.Diagnostic.Policies, string(reason.PolicyID))
	}
	slices.Sort(d.Diagnostic.Errors)
	slices.Sort(d.Diagnostic.Policies)
	what := fmt.Sprintf("%s on %s", r.Action, creq.Resource.ID)
	switch {
	case len(diag.Errors) > 0:
		d.Diagnostic.Reasons = []string{"policy evaluation failed, denying " + what}
	case dec == cedar.Allow:
		d.Allow = true
		d.Diagnostic.Reasons = []string{"permitted " + what + " by " + strings.Join(d.Diagnostic.Policies, ", ")}
	case len(d.Diagnostic.Policies) > 0:
		d.Diagnostic.Reasons = []string{"forbade " + what + " by " + strings.Join(d.Diagnostic.Policies, ", ")}
	default:
		d.Diagnostic.Reasons = []string{"no policy permits " + what}
	}
	return d
}

func denied(err error) Decision {
	return Decision{Diagnostic: Diagnostic{Reasons: []string{"invalid request, denying"}, Errors: []string{err.Error()}}}
}

// buildRequest turns r into Cedar's request and entities, and lists the
// organisations whose policies apply.
func buildRequest(r Request) (cedar.Request, cedar.EntityMap, []string, error) {
	var zero cedar.Request
	pid, err := ParseIdentity(r.Principal.ID)
	if err != nil {
		return zero, nil, nil, fmt.Errorf("principal: %w", err)
	}
	if !r.Action.valid() {
		return zero, nil, nil, fmt.Errorf("action %q", clip(string(r.Action)))
	}
	res := r.Resource
	prov, err := ParseIdentity(res.Provider)
	if err != nil {
		return zero, nil, nil, fmt.Errorf("resource provider: %w", err)
	}
	if len(res.Workgroups) == 0 {
		return zero, nil, nil, errors.New("resource has no workgroup")
	}
	for _, wg := range slices.Concat(res.Workgroups, r.Principal.Workgroups) {
		if err := wg.Validate(); err != nil {
			return zero, nil, nil, err
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
			return zero, nil, nil, errors.New("an advertisement resource has no consumer")
		}
		resUID = cedar.NewEntityUID(EntityAdvertisement, cedar.String(res.Advertisement.String()))
	case !res.Session.IsZero() && res.Advertisement.IsZero():
		cons, err := ParseIdentity(res.Consumer)
		if err != nil {
			return zero, nil, nil, fmt.Errorf("resource consumer: %w", err)
		}
		if len(res.Workgroups) != 1 {
			return zero, nil, nil, errors.New("a session resource has exactly one workgroup")
		}
		orgs = append(orgs, cons.Org)
		resUID = cedar.NewEntityUID(EntitySession, cedar.String(res.Session.String()))
		attrs["consumer"] = identityUID(res.Consumer)
		attrs["consumer_org"] = cedar.String(cons.Org)
		attrs["workgroup"] = workgroupUID(res.Workgroups[0])
		parents = append(parents, workgroupUID(res.Workgroups[0]))
	default:
		return zero, nil, nil, errors.New("resource must be exactly one of advertisement or session")
	}

	ctx := make(cedar.RecordMap, len(r.Context)+1)
	for k, v := range r.Context {
		if v == nil {
			return zero, nil, nil, fmt.Errorf("context %q has no value", clip(string(k)))
		}
		ctx[k] = v
	}
	if !r.At.IsZero() {
		if _, clash := ctx["now"]; clash {
			return zero, nil, nil, errors.New(`context key "now" is reserved for the request time`)
		}
		ctx["now"] = cedar.NewDatetime(r.At)
	}

	principalUID := identityUID(r.Principal.ID)
	principalParents := []cedar.EntityUID{cedar.NewEntityUID(EntityOrg, cedar.String(pid.Org))}
	for _, wg := range r.Principal.Workgroups {
		principalParents = append(principalParents, workgroupUID(wg))
	}
	entities := cedar.EntityMap{
		principalUID: {
			UID:     principalUID,
			Parents: cedar.NewEntityUIDSet(principalParents...),
			Attributes: cedar.NewRecord(cedar.RecordMap{
				"org":          cedar.String(pid.Org),
				"kind":         cedar.String(pid.Kind),
				"name":         cedar.String(pid.Name),
				"trust_domain": cedar.String(r.Principal.ID.TrustDomain().Name()),
				"workgroups":   workgroupSet(r.Principal.Workgroups),
			}),
		},
	}
	entities[resUID] = cedar.Entity{UID: resUID, Parents: cedar.NewEntityUIDSet(parents...), Attributes: cedar.NewRecord(attrs)}
	slices.Sort(orgs)
	req := cedar.Request{
		Principal: principalUID,
		Action:    cedar.NewEntityUID(EntityAction, cedar.String(r.Action)),
		Resource:  resUID,
		Context:   cedar.NewRecord(ctx),
	}
	return req, entities, slices.Compact(orgs), nil
}

func identityUID(id spiffeid.ID) cedar.EntityUID {
	return cedar.NewEntityUID(EntityIdentity, cedar.String(id.String()))
}

func workgroupUID(wg WorkgroupID) cedar.EntityUID {
	return cedar.NewEntityUID(EntityWorkgroup, cedar.String(wg.String()))
}

func workgroupSet(wgs []WorkgroupID) cedar.Set {
	vs := make([]cedar.Value, len(wgs))
	for i, wg := range wgs {
		vs[i] = workgroupUID(wg)
	}
	return cedar.NewSet(vs...)
}

// EnvelopeContext is the Cedar context for a send request: message_type,
// content_type, size (payload bytes), seq and the number of envelopes the
// session has accepted so far.
func EnvelopeContext(h Header, accepted uint64) cedar.RecordMap {
	return cedar.RecordMap{
		"message_type": cedar.String(h.Type),
		"content_type": cedar.String(h.ContentType),
		"size":         cedar.Long(clampInt64(h.Size)),
		"seq":          cedar.Long(clampInt64(h.Seq)),
		"accepted":     cedar.Long(clampInt64(accepted)),
	}
}

func clampInt64(v uint64) int64 {
	if v > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(v)
}
