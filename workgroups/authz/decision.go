package authz

import (
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"

	"github.com/cedar-policy/cedar-go"
)

// ErrNotAuthorized is what [Decision.Err] wraps when a decision denies.
var ErrNotAuthorized = errors.New("not authorized")

// Effect is what a decision says.
type Effect string

// The effects.
const (
	Allow Effect = "allow"
	Deny  Effect = "deny"
)

// Decision is the answer to a query. Its zero value denies.
type Decision struct {
	Allow      bool       `json:"allow"`
	Diagnostic Diagnostic `json:"diagnostic"`
}

// Diagnostic explains a decision. Its JSON is the diagnostic field of every audit record that records a policy
// decision, in every surface.
type Diagnostic struct {
	// Effect repeats the decision, so that the diagnostic explains itself alone.
	Effect Effect `json:"effect"`
	// Policies that determined the decision: the permits that matched when allowed, the forbids that matched
	// when denied by a forbid; none when denied because nothing permits.
	Policies []string `json:"policies,omitempty"`
	// Reasons, in words, one line each.
	Reasons []string `json:"reasons,omitempty"`
	// Errors met while evaluating; any error denies.
	Errors []string `json:"errors,omitempty"`
	// Version of the policy text that decided, where the surface has one.
	Version string `json:"policy_version,omitempty"`
}

// Effect is [Allow] or [Deny].
func (d Decision) Effect() Effect {
	if d.Allow {
		return Allow
	}
	return Deny
}

// Reason is the decision in one line: its reasons, then its errors, separated by "; ".
func (d Decision) Reason() string {
	msg := oneLine(strings.Join(slices.Concat(d.Diagnostic.Reasons, d.Diagnostic.Errors), "; "))
	if msg == "" {
		return string(d.Effect()) + "ed"
	}
	return msg
}

// Err returns nil when d allows, otherwise an error wrapping [ErrNotAuthorized] with the reason.
func (d Decision) Err() error {
	if d.Allow {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrNotAuthorized, d.Reason())
}

// JSON is the diagnostic as an audit record carries it. The effect is always the decision's.
func (d Decision) JSON() json.RawMessage {
	diag := d.Diagnostic
	diag.Effect = d.Effect()
	b, err := json.Marshal(diag)
	if err != nil { // a struct of strings always encodes
		return nil
	}
	return b
}

// Denied is the decision on a request that could not be asked: it denies, and says why.
func Denied(err error) Decision {
	return Decision{Diagnostic: Diagnostic{Effect: Deny, Reasons: []string{"invalid request, denying"}, Errors: []string{oneLine(err.Error())}}}
}

// Query is one authorization question, in Cedar entities.
type Query struct {
	Principal cedar.Entity
	Action    string // the ID of an Umbra::Action
	Resource  cedar.Entity
	// Entities are further entities policies may reach, such as parents with attributes.
	Entities []cedar.Entity
	Context  cedar.RecordMap
	// What names the request in reasons, as "call_tool on bank__pay"; unset, "<action> on <resource ID>".
	What string
}

// Decide answers q with the policies of every set, evaluated as one. It fails closed: nothing permitting, a
// forbid matching or any evaluation error denies, and the diagnostic says which and why.
func Decide(q Query, sets ...*Policies) Decision {
	if len(sets) == 0 {
		return Denied(errors.New("no policies"))
	}
	entities := make(cedar.EntityMap, 2+len(q.Entities))
	for _, e := range q.Entities {
		entities[e.UID] = e
	}
	entities[q.Principal.UID] = q.Principal
	entities[q.Resource.UID] = q.Resource
	req := cedar.Request{
		Principal: q.Principal.UID,
		Action:    ActionUID(q.Action),
		Resource:  q.Resource.UID,
		Context:   cedar.NewRecord(q.Context),
	}
	dec, diag := cedar.Authorize(chain(sets), entities, req)
	d := Decision{Diagnostic: Diagnostic{Effect: Deny}}
	for _, e := range diag.Errors {
		d.Diagnostic.Errors = append(d.Diagnostic.Errors, oneLine(e.String()))
	}
	for _, r := range diag.Reasons {
		d.Diagnostic.Policies = append(d.Diagnostic.Policies, string(r.PolicyID))
	}
	slices.Sort(d.Diagnostic.Errors)
	slices.Sort(d.Diagnostic.Policies)
	what := q.What
	if what == "" {
		what = q.Action + " on " + string(q.Resource.UID.ID)
	}
	switch {
	case len(diag.Errors) > 0:
		d.Diagnostic.Reasons = []string{"policy evaluation failed, denying " + what}
	case dec == cedar.Allow:
		d.Allow, d.Diagnostic.Effect = true, Allow
		d.Diagnostic.Reasons = []string{"permitted " + what + " by " + strings.Join(d.Diagnostic.Policies, ", ")}
	case len(d.Diagnostic.Policies) > 0:
		d.Diagnostic.Reasons = []string{"forbade " + what + " by " + strings.Join(d.Diagnostic.Policies, ", ")}
	default:
		d.Diagnostic.Reasons = []string{"no policy permits " + what}
	}
	return d
}

// chain evaluates several policy sets as one without copying them.
type chain []*Policies

func (c chain) All() iter.Seq2[cedar.PolicyID, *cedar.Policy] {
	return func(yield func(cedar.PolicyID, *cedar.Policy) bool) {
		for _, s := range c {
			for id, p := range s.All() {
				if !yield(id, p) {
					return
				}
			}
		}
	}
}
