// Package authz is Umbra's one policy language: the Cedar text, entities and decisions shared by the three
// surfaces (A2A in package workgroups, the MCP gateway, the LLM gateway) and by gateway administration.
//
// [Parse] loads Cedar policy text into [Policies]; a bad text is refused with one line naming file:line. [Decide]
// answers a [Query] with a [Decision], a pure function that fails closed: its zero value denies, any evaluation
// error denies, and its [Diagnostic] names the policies that determined it and why, in words. That Diagnostic,
// as JSON, is what every audit record carries in its diagnostic field, whatever the surface:
//
//	{"effect":"deny","policies":["no-secrets"],"reasons":["forbade call_tool on bank__pay by no-secrets"],
//	 "errors":[...],"policy_version":"sha256:..."}
//
// Every surface builds its principal the same way, with [Principal.Entity]: Umbra::Identity::"<SPIFFE ID>" with
// attributes org, kind, name, trust_domain, admin and workgroups (a set of Umbra::Workgroup entities), and as
// parents its Umbra::Org and every Umbra::Workgroup it is an active member of. So `principal in
// Umbra::Workgroup::"acme/research"` and `principal.org == "acme"` mean the same in every surface's policies.
//
// The package is pure: no I/O, no clock, no logging; it lives in the workgroups module so that module (which the
// agent SDK imports) can use it without depending on the root module.
package authz
