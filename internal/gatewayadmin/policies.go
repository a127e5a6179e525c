package gatewayadmin

import (
	"fmt"
	"slices"

	"github.com/cedar-policy/cedar-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// The administration actions, Cedar actions Umbra::Action::"<name>" of every surface's policy language (package
// authz).
const (
	ActionReadGateway = "read_gateway" // the gateway's own state: backends, tool versions awaiting a decision, metrics
	ActionReleaseTool = "release_tool" // approve a tool version (release a quarantined or new tool for every caller)
	ActionRefuseTool  = "refuse_tool"  // refuse a tool version
	ActionApproveCall = "approve_call" // approve a held call
	ActionDenyCall    = "deny_call"    // deny a held call
	ActionReadUsage   = "read_usage"   // read another identity's, or an organisation's, usage
)

// Resource types of the administration actions.
const (
	TypeGateway  = "Umbra::Gateway"  // id: the gateway's SPIFFE ID; read_gateway
	TypeTool     = "Umbra::Tool"     // id: the exposed tool name; attributes backend, digest; release_tool, refuse_tool
	TypeHeldCall = "Umbra::HeldCall" // id: the approval ID; attributes caller (an Umbra::Identity), org, tool
	TypeUsage    = "Umbra::Usage"    // id: the usage subject; attributes org and, for an identity's, identity
)

// builtinPolicies are the default grants. The context of every request holds gateway_org (the gateway's own
// organisation, or ""), admin_orgs (Grant.Orgs), named_admin (the principal is in Grant.Admins) and revoked.
const builtinPolicies = `
@id("gateway-admins")
permit (principal, action, resource) when { context.named_admin };

@id("platform-admin")
permit (principal, action, resource) when { principal.admin && principal.org == "` + PlatformOrg + `" };

@id("gateway-org-admin")
permit (
  principal,
  action in [Umbra::Action::"read_gateway", Umbra::Action::"release_tool", Umbra::Action::"refuse_tool"],
  resource
) when { principal.admin && principal.org != "" && principal.org == context.gateway_org };

@id("org-admin-own-callers")
permit (
  principal,
  action in [Umbra::Action::"approve_call", Umbra::Action::"deny_call", Umbra::Action::"read_usage"],
  resource
) when {
  principal.admin && principal.org != "" &&
  (principal.org == context.gateway_org || context.admin_orgs.contains(principal.org)) &&
  resource.org == principal.org
};

@id("no-self-approval")
forbid (principal, action == Umbra::Action::"approve_call", resource) when { resource.caller == principal };

@id("revoked")
forbid (principal, action, resource) when { context.revoked };
`

// Policy IDs of the built-in policies, as diagnostics name them.
const (
	PolicyGatewayAdmins  = "umbra/gateway-admins"
	PolicyPlatformAdmin  = "umbra/platform-admin"
	PolicyGatewayOrg     = "umbra/gateway-org-admin"
	PolicyOwnCallers     = "umbra/org-admin-own-callers"
	PolicyNoSelfApproval = "umbra/no-self-approval"
)

// Target is what an administration action is about. Build it with [GatewayTarget], [ToolTarget],
// [HeldCallTarget] or [UsageTarget].
type Target struct {
	entity cedar.Entity
	what   string
}

// GatewayTarget is the gateway itself, for read_gateway.
func (a *Authorizer) GatewayTarget() Target {
	return Target{entity: cedar.Entity{UID: a.gatewayUID(), Parents: cedar.NewEntityUIDSet(),
		Attributes: cedar.NewRecord(cedar.RecordMap{"org": cedar.String(a.grant.Org())})}, what: "this gateway"}
}

// ToolTarget is a tool version, for release_tool and refuse_tool.
func (a *Authorizer) ToolTarget(name, backend, digest string) Target {
	return Target{entity: cedar.Entity{UID: cedar.NewEntityUID(TypeTool, cedar.String(name)),
		Parents: cedar.NewEntityUIDSet(a.gatewayUID()),
		Attributes: cedar.NewRecord(cedar.RecordMap{"backend": cedar.String(backend), "digest": cedar.String(digest),
			"name": cedar.String(name)})}, what: "tool " + name}
}

// HeldCallTarget is a held call, by caller (of organisation org), of tool, for approve_call and deny_call.
func (a *Authorizer) HeldCallTarget(id string, caller spiffeid.ID, org, tool string) Target {
	return Target{entity: cedar.Entity{UID: cedar.NewEntityUID(TypeHeldCall, cedar.String(id)),
		Parents: cedar.NewEntityUIDSet(a.gatewayUID()),
		Attributes: cedar.NewRecord(cedar.RecordMap{"caller": authz.IdentityUID(caller), "org": cedar.String(org),
			"tool": cedar.String(tool)})}, what: "held call " + id}
}

// UsageTarget is the usage of subject, for read_usage: an identity's (identity set, org its organisation) or an
// organisation's total (identity zero).
func (a *Authorizer) UsageTarget(subject string, identity spiffeid.ID, org string) Target {
	attrs := cedar.RecordMap{"org": cedar.String(org), "subject": cedar.String(subject)}
	if !identity.IsZero() {
		attrs["identity"] = authz.IdentityUID(identity)
	}
	return Target{entity: cedar.Entity{UID: cedar.NewEntityUID(TypeUsage, cedar.String(subject)),
		Parents: cedar.NewEntityUIDSet(a.gatewayUID()), Attributes: cedar.NewRecord(attrs)}, what: "usage of " + subject}
}

func (a *Authorizer) gatewayUID() cedar.EntityUID {
	return cedar.NewEntityUID(TypeGateway, cedar.String(a.grant.Gateway.String()))
}

// Authorizer decides administration actions at one gateway with the built-in policies and the gateway's
// Grant.Policies. It is immutable and safe for concurrent use.
type Authorizer struct {
	grant Grant
	sets  []*authz.Policies
}

// NewAuthorizer checks g and parses its policies.
func NewAuthorizer(g Grant) (*Authorizer, error) {
	if err := g.Check(); err != nil {
		return nil, err
	}
	builtin, err := authz.Parse("gatewayadmin-builtin", builtinPolicies, authz.Options{Prefix: "umbra"})
	if err != nil {
		return nil, fmt.Errorf("gatewayadmin: built-in policies: %w", err)
	}
	a := &Authorizer{grant: g, sets: []*authz.Policies{builtin}}
	a.grant.Admins, a.grant.Orgs = slices.Clone(g.Admins), slices.Clone(g.Orgs)
	if g.Policies != "" {
		ops, err := authz.Parse("admin_policies", g.Policies, authz.Options{})
		if err != nil {
			return nil, fmt.Errorf("admin_policies: %w", err)
		}
		a.sets = append(a.sets, ops)
	}
	return a, nil
}

// Decide answers whether c may do action on t. It fails closed, and the decision names its policies.
func (a *Authorizer) Decide(c Caller, action string, t Target) authz.Decision {
	if a == nil {
		return authz.Denied(fmt.Errorf("no administration policies"))
	}
	if c.ID.IsZero() {
		return authz.Denied(fmt.Errorf("no verified identity"))
	}
	orgs := make([]cedar.Value, len(a.grant.Orgs))
	for i, o := range a.grant.Orgs {
		orgs[i] = cedar.String(o)
	}
	return authz.Decide(authz.Query{
		Principal: authz.Principal{ID: c.ID, Org: c.Org, Admin: c.Admin}.Entity(),
		Action:    action,
		Resource:  t.entity,
		Context: cedar.RecordMap{
			"gateway_org": cedar.String(a.grant.Org()),
			"admin_orgs":  cedar.NewSet(orgs...),
			"named_admin": cedar.Boolean(slices.Contains(a.grant.Admins, c.ID)),
			"revoked":     cedar.Boolean(c.Revoked),
		},
		What: action + " on " + t.what,
	}, a.sets...)
}
