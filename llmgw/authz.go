package llmgw

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/cedar-policy/cedar-go"
)

// Cedar entity types and the action of the gateway's policy model.
const (
	entityIdentity  = "Umbra::Identity"
	entityOrg       = "Umbra::Org"
	entityWorkgroup = "Umbra::Workgroup"
	entityModel     = "Umbra::Model"
	entityAction    = "Umbra::Action"
	actionUse       = "use"
)

// decision is a policy decision; its zero value denies.
type decision struct {
	Allow      bool       `json:"allow"`
	Diagnostic diagnostic `json:"diagnostic"`
}

// diagnostic explains a decision for the audit record.
type diagnostic struct {
	Policies []string `json:"policies,omitempty"` // the permits that allowed, or the forbids that denied
	Reasons  []string `json:"reasons,omitempty"`
	Errors   []string `json:"errors,omitempty"` // evaluation errors; any error denies
}

// authorizer holds the parsed policies. It is immutable.
type authorizer struct {
	set     *cedar.PolicySet
	version string
}

func newAuthorizer(text string) (*authorizer, error) {
	list, err := cedar.NewPolicyListFromBytes("policies", []byte(text))
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	set := cedar.NewPolicySet()
	for i, p := range list {
		id := "policy" + strconv.Itoa(i)
		if v, ok := p.Annotations()["id"]; ok && string(v) != "" {
			id = string(v)
		}
		if !set.Add(cedar.PolicyID(id), p) {
			return nil, fmt.Errorf("policies: line %d: policy id %q used twice", p.Position().Line, id)
		}
	}
	sum := sha256.Sum256([]byte(text))
	return &authorizer{set: set, version: "sha256:" + hex.EncodeToString(sum[:8])}, nil
}

// decide answers whether p may use model for operation ("chat" or "embeddings"). It fails closed.
func (a *authorizer) decide(p Principal, model, operation string) decision {
	principal := cedar.NewEntityUID(entityIdentity, cedar.String(p.ID.String()))
	resource := cedar.NewEntityUID(entityModel, cedar.String(model))
	parents := []cedar.EntityUID{}
	if p.Org != "" {
		parents = append(parents, cedar.NewEntityUID(entityOrg, cedar.String(p.Org)))
	}
	wgs := make([]cedar.Value, 0, len(p.Workgroups))
	for _, wg := range p.Workgroups {
		uid := cedar.NewEntityUID(entityWorkgroup, cedar.String(wg))
		parents = append(parents, uid)
		wgs = append(wgs, uid)
	}
	entities := cedar.EntityMap{
		principal: {
			UID:     principal,
			Parents: cedar.NewEntityUIDSet(parents...),
			Attributes: cedar.NewRecord(cedar.RecordMap{
				"org":          cedar.String(p.Org),
				"admin":        cedar.Boolean(p.Admin),
				"workgroups":   cedar.NewSet(wgs...),
				"trust_domain": cedar.String(p.ID.TrustDomain().Name()),
			}),
		},
		resource: {
			UID:        resource,
			Parents:    cedar.NewEntityUIDSet(),
			Attributes: cedar.NewRecord(cedar.RecordMap{"name": cedar.String(model)}),
		},
	}
	req := cedar.Request{
		Principal: principal,
		Action:    cedar.NewEntityUID(entityAction, cedar.String(actionUse)),
		Resource:  resource,
		Context:   cedar.NewRecord(cedar.RecordMap{"operation": cedar.String(operation)}),
	}
	dec, diag := cedar.Authorize(a.set, entities, req)
	var d decision
	for _, e := range diag.Errors {
		d.Diagnostic.Errors = append(d.Diagnostic.Errors, e.String())
	}
	for _, r := range diag.Reasons {
		d.Diagnostic.Policies = append(d.Diagnostic.Policies, string(r.PolicyID))
	}
	slices.Sort(d.Diagnostic.Errors)
	slices.Sort(d.Diagnostic.Policies)
	what := fmt.Sprintf("use of model %s", model)
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
