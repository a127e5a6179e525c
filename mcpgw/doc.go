// Package mcpgw is the MCP gateway: it aggregates MCP servers (stdio child processes, streamable HTTP servers,
// and dark MCP servers on the overlay) behind one MCP endpoint, and shows each caller only what policy lets
// that caller use, decided on the caller's verified SPIFFE ID. Tool definitions are pinned against rug pulls
// and poisoning, sensitive calls wait for a human, every caller is rate limited, and every decision is audited.
//
// # Embedding
//
// The gateway is a value: New checks the configuration, Run connects the backends and keeps them connected
// until its context ends, Ready says when it serves, Handler is the http.Handler to serve, on a listener whose
// TLS configuration verifies client SVIDs (the overlay hosting does that; tests may supply Identify). Ready is
// closed once every backend has been tried and at least one is connected and listed; until then Handler
// answers 503. A backend that fails is logged once, with why, and retried with backoff; if none connects
// within Config.StartTimeout, Run returns an error naming each backend and its last error.
//
//	g, err := mcpgw.New(mcpgw.Config{
//		Backends: []mcpgw.Backend{{
//			Name:    "files",
//			Trusted: true,
//			Connect: func(ctx context.Context) (mcp.Transport, error) {
//				return &mcp.CommandTransport{Command: exec.Command("mcp-server-filesystem", "/srv")}, nil
//			},
//		}, {
//			Name: "crm", // a dark MCP server: its http.Client dials the overlay
//			Connect: func(ctx context.Context) (mcp.Transport, error) {
//				return &mcp.StreamableClientTransport{Endpoint: "http://mcp.crm/", HTTPClient: overlayClient}, nil
//			},
//		}},
//		Policies:  policyText,
//		Directory: directory, // organisation, workgroups and administrator flag of callers
//		Auditor:   auditor,   // the shared audit stream
//		State:     js,        // pins and approvals in JetStream KV
//	})
//	go g.Run(ctx)
//	<-g.Ready()
//	http.Serve(listener, g.Handler())
//
// # Names
//
// Tools and prompts appear as "<backend>__<name>" (Config.Separator). Backend names are [a-z][a-z0-9-]* and
// may not contain the separator, so two backends can never expose the same name: a clash is a configuration
// error, caught by New. Resources keep their URIs with the backend name prepended to the scheme:
// "file:///etc/motd" of backend "files" is "files+file:///etc/motd", and likewise for URI templates; the
// mapping needs no table, and a backend cannot serve URIs under another's prefix. Tools keep their title,
// description, annotations, and input and output schemas.
//
// # Identity and structural filtering
//
// The caller is who Config.Identify says, by default the SPIFFE ID of the TLS client certificate, never
// anything the client sends. Each identity gets its own MCP server inside the gateway, holding exactly the
// tools, prompts and resources that identity may see: what it may not see is not there, so tools/list omits
// it and tools/call answers "unknown tool" word for word as for a name that never existed. When what an
// identity may see changes (a backend's list changed, a backend failed or came back, a tool was quarantined or
// approved, the policies were replaced), its sessions get notifications/tools/list_changed (and the prompt
// and resource equivalents), filtered for that identity. A session belongs to the identity that opened it.
// A caller whom no policy grants anything gets an explicit JSON-RPC error (CodeNotAuthorized) for every
// listing and call, never a silent empty list. Every call is decided again on its own.
//
// # Policies
//
// Config.Policies is Cedar; package policy documents the model. In short: principal Umbra::Identity (with
// its org, admin flag and workgroups, and as parents Umbra::Org and Umbra::Workgroup), resources
// Umbra::Tool, Umbra::Prompt and Umbra::Resource under Umbra::Backend, actions list_tool/call_tool,
// list_prompt/get_prompt and list_resource/read_resource, context.arguments for calls, and context.intent for a
// tool call whose _meta[MetaIntent] declares one ({purpose, category}; docs/intent.md). For example:
//
//	@id("analysts-read")
//	permit (principal in Umbra::Workgroup::"acme/analysts", action, resource in Umbra::Backend::"files")
//	when { resource.read_only };
//
//	@id("no-etc")
//	forbid (principal, action == Umbra::Action::"call_tool", resource in Umbra::Backend::"files")
//	when { context.arguments has path && context.arguments.path like "/etc/*" };
//
//	@id("payments") @sensitive
//	permit (principal in Umbra::Workgroup::"acme/finance", action, resource == Umbra::Tool::"bank__pay");
//
// Any evaluation error denies. Each decision's diagnostic (effect, policies, reasons, errors, policy version: the
// one shape of every surface, package workgroups/authz) goes into the audit record, and a call, prompt or read
// refused by policy tells the caller the policies and the reason in one line (an item the caller may not see
// stays indistinguishable from one that does not exist). SetPolicies replaces the policies at run time.
//
// # Pinning
//
// The first sight of a tool definition pins its SHA-256 over the canonical JSON of the whole definition
// (package pin). It is approved at once only if the backend is Trusted and the scanner (package scan) finds
// nothing: no hidden instructions, requests for secrets, exfiltration prompts, attempts to steer other tools,
// invisible or bidirectional characters, look-alike letters or encoded blobs. Otherwise it waits for an
// administrator. A definition that changes after approval is quarantined, hidden and refused, until an
// administrator approves the new version; going back to the approved definition restores the tool. Backends
// are listed again on list_changed notifications and every Config.RefreshInterval, which also catches changes
// a backend does not announce. A backend spawned per client is checked on every spawn.
//
// Prompts and resources are pinned the same way, and decided through the same administration API (with
// "kind"): a prompt over its listing and the messages it returns with a placeholder for each argument, a
// static resource over its listing and the hash of its contents, a template over its listing. Messages and
// contents are checked again at every get and read, so a backend that changes them without changing its
// listing is caught at the next request, which is refused. A backend spawned per client has only its tools
// checked per spawn.
//
// # Requests from backends, and completions
//
// A backend's sampling/createMessage and elicitation/create, sent while it serves a tool call, go to the one
// caller whose call caused them: the owner of a per-client backend session, or on a shared session the only
// client session with calls in flight (with several, the request cannot be attributed and is refused). A
// caller whose client did not declare the capability is not asked. Each is an mcp.backend_request record.
// completion/complete is forwarded to the backend of the prompt or resource template it names, when the
// caller's policy lets it get or read that item. A caller may subscribe to a static resource it may read; the
// backend's resources/updated reaches the subscribed sessions of callers that may still see it.
//
// # Approvals
//
// A call is sensitive when a @sensitive permit allowed it or its tool matches Config.Sensitive. It opens an
// approval request bound to {caller, tool, canonical arguments digest, policy version} and waits up to
// Approvals.Timeout; no decision is a denial. An approval is usable once, until Approvals.TTL after the
// decision. A call held longer than Approvals.Hold (if set) is answered "no decision yet" with the request's
// ID; the client then retries with the same arguments (the approval is found), or names the request in
// _meta[MetaApproval]; changed arguments, another caller, replaced policies, a used or an expired approval are
// refused (CodeApproval). A held call that is cancelled (notifications/cancelled, the session ended, or the
// HTTP request that carried it gone) withdraws its request: it is marked cancelled, recorded, and an approval
// given afterwards is refused, so nothing runs on it. Who decides is the gateway's own grant (package
// gatewayadmin): Config.Admins and the platform administrator decide every call; administrators of Self's
// organisation and of Config.AdminOrgs only their own organisation's callers' calls; nobody approves a call of
// their own. Tool versions, backends and metrics are for Config.Admins, the platform administrator and Self's
// organisation's administrators. These grants are Cedar policies (actions approve_call, deny_call, release_tool,
// refuse_tool, read_gateway), and Config.AdminPolicies may add a forbid or a permit. Every decision and every
// refusal (KindAdminRefused) is audited with the administrator's SPIFFE ID and the policies that decided.
//
// # Limits and errors
//
// Per identity: calls per minute, calls in flight (a call waiting for approval counts), per-call timeout,
// request and result size (Limits). What the gateway refuses is a JSON-RPC error with one of the Code*
// constants and ErrorData {code, ref, approval}; ref also appears in the audit record and the logs. What
// fails during the call (the tool's own errors, the backend failing or timing out, a result too large) is a
// tool result with isError set, as the MCP specification asks, so that the model can react.
//
// # Audit, logs and metrics
//
// Every refusal is a KindDenied record. Every request the gateway forwards has two records with the same ref:
//
//   - KindCall, KindPrompt or KindRead, the decision: caller, tool, backend, decision and diagnostic,
//     arguments digest (the arguments themselves, secrets redacted, only with Config.AuditArguments) and the
//     approval used. It is written before the backend sees anything, and the gateway waits until the Auditor
//     has confirmed it (at most Config.AuditTimeout). If it cannot be written the request is refused, never
//     forwarded: a JSON-RPC error with CodeAuditUnavailable ("the call was refused: its audit record could not
//     be written; try again later"), and a KindDenied record is attempted. When the Auditor refuses it with an
//     *audit.BudgetError (the controller's per-identity audit budget is spent), the error is CodeAuditBudget
//     with the controller's reason instead.
//   - KindOutcome, after the backend answered: status, latency, result size and error detail. The request has
//     then happened, so an outcome that cannot be written is counted in audit_failures_total and logged, and
//     the caller still gets the result.
//
// So the trail never lacks a request that reached a backend. A request can lack its outcome: the first record
// says it was allowed and forwarded; no KindOutcome under its ref means the gateway did not finish it (it
// stopped, or crashed, between the two records, or the outcome's write failed). Counting KindCall records
// counts the tool calls forwarded. Refusals, outcomes and the other records (approvals, pins, quarantines and
// policy changes, which have their own kinds) are written in the background, not holding requests up; a
// record that cannot be written is counted and logged, never dropped silently. Nothing logged or recorded carries secrets found in
// arguments or errors (package redact). Logs carry state changes only. Metrics (calls, errors, latency per
// tool and caller, refusals, backend state, tools by pin state) go to Config.Registry, or to a private
// registry served at /metrics to administrators, by MetricsHandler, and by ServeMetrics on
// Config.MetricsListen (loopback unless Config.MetricsAllowRemote).
//
// # Forwarded, and not
//
// Forwarded: initialize, tools, prompts, resources and resource templates, progress notifications (with the
// caller's own token; no other _meta of a request is passed on), cancellation, and the backends' log messages (to the sessions with a call in flight on
// that backend, or to the one client of a per-client backend). Not forwarded: resource subscriptions,
// completions, and requests from backends to clients (sampling, elicitation, roots), which a gateway shared by
// many callers cannot route to the right one.
//
// # Administration
//
// Handler also serves a small JSON API under /admin/ (see admin.go): the tools a caller may see, backend
// states (kind, connected or failed with the last error, tools served, pinned, quarantined and held counts:
// BackendStatus), tool versions awaiting a decision and call approvals, and the decisions on both. The same operations
// are methods: Tools, Backends, PendingTools, DecideTool, PendingCalls, DecideCall.
package mcpgw
