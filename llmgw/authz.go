package llmgw

import (
	"fmt"

	"github.com/cedar-policy/cedar-go"

	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// Cedar entity types and the action of the gateway's policy model; the principal is every surface's
// (package authz).
const (
	entityModel = "Umbra::Model"
	actionUse   = "use"
)

// decision is a policy decision, the shape of every surface; its zero value denies.
type decision = authz.Decision

// authorizer holds the parsed policies. It is immutable.
type authorizer struct {
	set     *authz.Policies
	version string
}

func newAuthorizer(text string) (*authorizer, error) {
	set, err := authz.Parse("policies", text, authz.Options{})
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	return &authorizer{set: set, version: set.Version()}, nil
}

// The request headers in which a caller declares the intent of a call (see authz.Intent): the purpose,
// percent-encoded UTF-8, and an optional category. Policies see it as context.intent.
const (
	HeaderIntent         = "Umbra-Intent"
	HeaderIntentCategory = "Umbra-Intent-Category"
)

// decide answers whether p may use model for operation ("chat" or "embeddings") with intent in (nil: none
// declared). It fails closed.
func (a *authorizer) decide(p Principal, model, operation string, in *authz.Intent) decision {
	d := authz.Decide(authz.Query{
		Principal: authz.Principal{ID: p.ID, Org: p.Org, Admin: p.Admin, Workgroups: p.Workgroups}.Entity(),
		Action:    actionUse,
		Resource: cedar.Entity{
			UID:        cedar.NewEntityUID(entityModel, cedar.String(model)),
			Parents:    cedar.NewEntityUIDSet(),
			Attributes: cedar.NewRecord(cedar.RecordMap{"name": cedar.String(model)}),
		},
		Context: authz.WithIntent(cedar.RecordMap{"operation": cedar.String(operation)}, in),
		What:    "use of model " + model,
	}, a.set)
	d.Diagnostic.Version = a.version
	return d
}
