// Package workgroups is the agent-to-agent governance domain: organisations,
// workgroups and their members, advertisements, contracts, the session state
// machine, envelope headers and their wire frame, and the Cedar policies that
// decide who may do what. It is pure: no I/O, no clocks (every time is
// passed in), no goroutines, no logging. The controller and the agent SDK
// both import it, so both sides apply the same rules.
//
// # Identities and organisations
//
// Every participant is a SPIFFE ID spiffe://<trust-domain>/<org>/<kind>/<name>
// ([ParseIdentity]); its organisation is the first path segment. Names of
// organisations, workgroups, kinds and workloads follow [ValidateName].
//
// # Workgroups
//
// An organisation owns workgroups ([WorkgroupID] "<org>/<name>"). An
// intra-org workgroup is active at once; an inter-org one invites other
// organisations and is active only when every one has accepted. A decline
// is terminal and kept: that workgroup never becomes active. Members are
// identities with role member or admin; they come only from the owner or an
// organisation that accepted, an organisation's admins manage only that
// organisation's members, and no organisation with members can lose its last
// admin ([ErrLastAdmin]).
//
// # Advertisements and discovery
//
// A provider advertises an [AgentCard] (name, skills, accepted message types)
// and the [Terms] it offers, scoped to workgroups. [Visible] returns only the
// advertisements scoped to an active workgroup the caller belongs to;
// anything else is indistinguishable from nothing.
//
// # Contracts
//
// A consumer sends a [Proposal]; [Terms.Admit] completes it with the offered
// values and, if it stays within every maximum and asks only for offered
// message types, accepts it on the provider's behalf and returns the frozen
// [Contract] — the provider need not be online. Otherwise it rejects with
// one [Deviation] per term (asked versus offered), or holds it for the
// provider when the terms say HoldForProvider. Message types are
// dot-separated ("quote.request"); a "quote.*" entry allows every type under
// "quote.".
//
// # Sessions
//
// A [Session] moves proposed → accepted → active → closed, or proposed →
// rejected, with held (awaiting the provider) between proposed and
// accepted/rejected. Each step is a [Transition] recording actor, time and
// reason; anything else is a [*TransitionError]. A session expires at
// acceptance + max_duration and closes for one of the [CloseReason]s.
//
// # Envelopes
//
// An envelope is a [Header] the network reads plus an opaque payload. On the
// wire it is a frame ([EncodeFrame], [DecodeFrame]): "UME", a version byte,
// a length-prefixed JSON header and a length-prefixed payload. The decoder
// checks lengths against [FrameLimits] before allocating, decodes the header
// strictly and verifies the payload's size and SHA-256. [CheckSend] is the
// relay's contract check: it returns a [*Violation] with a stable
// [ViolationCode] for any envelope the session does not allow, including one
// whose claimed sender is not the identity the connection proved.
//
// # Policies
//
// An [Authorizer] answers a [Request] (principal, action, resource, context)
// with a [Decision] whose zero value denies and whose [Diagnostic] names the
// deciding policies for the audit record. The model is schema-free:
//
//	principal  Umbra::Identity::"<spiffe id>"   org, kind, name, trust_domain, workgroups;
//	                                             parents: its Umbra::Org and active Umbra::Workgroups
//	actions    Umbra::Action::"discover" | "propose" | "accept" | "send"
//	resources  Umbra::Advertisement::"ad_…"     provider, provider_org, workgroups
//	           Umbra::Session::"ses_…"          consumer, consumer_org, provider, provider_org,
//	                                             workgroup, workgroups; parent: its workgroup
//	context    whatever the caller passes ([EnvelopeContext] for send), plus now
//
// The built-in policies are the only grants: discover and propose an
// advertisement that shares an active workgroup with the principal (never
// one's own, for propose); accept a session as its provider; send as a party.
// Organisation policies ([OrgPolicy]) and contract conditions
// ([ParseConditions]) are Cedar text that may only forbid, so they narrow
// and never widen. Any evaluation error denies.
package workgroups
