// Package llmgw is the LLM gateway: an OpenAI-compatible API, meant to be served as a dark overlay service,
// that holds the model providers' API keys so that agents never do. A caller's verified SPIFFE ID is its key;
// the gateway decides per identity which models it may use, how much, and what may pass in and out, routes
// each call to a healthy endpoint, and writes every call to the audit trail.
//
// # Embedding
//
// The gateway is a value. It knows nothing of the overlay: whoever hosts it serves Handler on a listener of
// their choice and tells it how to identify callers.
//
//	gw, err := llmgw.New(llmgw.Config{
//		Models: []llmgw.Model{{
//			Name: "gpt-small",
//			Endpoints: []llmgw.Endpoint{
//				{Provider: "openai", APIKey: key, Model: "gpt-4o-mini", Weight: 3, InputPrice: 0.15, OutputPrice: 0.6},
//				{Provider: "openai-compatible", BaseURL: "http://10.0.0.7:8000/v1", Model: "qwen2.5-7b", Weight: 1},
//			},
//		}, {
//			Name:      "claude",
//			Endpoints: []llmgw.Endpoint{{Provider: "anthropic", APIKey: akey, Model: "claude-sonnet-4-5"}},
//		}},
//		Policies:  policies,         // Cedar, see below
//		Budgets:   budgets,          // see below
//		Directory: directory,        // organisation, workgroups and admin flag of a SPIFFE ID
//		Auditor:   auditor,          // the shared, hash-chained audit stream
//		State:     js,               // JetStream: usage survives restarts
//		Logger:    logger,
//	})
//	go gw.Run(ctx)                // active health checks, until ctx ends
//	http.Serve(listener, gw.Handler())
//
// The gateway is ready as soon as New returns. By default a caller is identified by the SPIFFE ID in the
// client certificate of a mutual-TLS connection (Config.Identify replaces that, e.g. to read the overlay's
// verified peer identity).
//
// # API
//
//	POST /v1/chat/completions  OpenAI chat completions, streamed (server-sent events) or not
//	POST /v1/embeddings        OpenAI embeddings
//	GET  /v1/models            the models the caller may use; GET /v1/models/{id} for one
//	POST /v1/messages          Anthropic Messages, answered by any model, streamed or not (natively by Anthropic ones)
//	GET  /v1/usage             daily usage: the caller's own, or, for administrators, anyone's
//	                           (?identity=<SPIFFE ID>&since=<24h | 2006-01-02>)
//	GET  /metrics              Prometheus metrics, for administrators
//
// Request bodies are read as JSON objects, not into structs: members the gateway does not know (new OpenAI
// parameters, vendor extensions of an OpenAI-compatible server) pass through to the upstream unchanged. Tools
// and function calling, response_format, and multimodal content parts pass through the same way. The gateway
// replaces only "model" (with the endpoint's upstream name) and, when streaming, asks for
// stream_options.include_usage so that it can count tokens; the usage chunk reaches the caller only if the
// caller asked for it too. Responses carry the public model name, and the headers X-Request-Id,
// X-Umbra-Model and X-Umbra-Route.
//
// Errors have the OpenAI shape, {"error":{"message","type","code","param"}}, with a stable code
// (model_not_permitted, budget_exceeded, rate_limit_exceeded, guardrail_blocked, upstream_error,
// audit_unavailable, ...) and the
// request ID in the message, which is also in the audit record. The /v1/messages endpoint answers errors in
// the Anthropic shape instead. Upstream messages are passed on only for 400 and 422 (they explain what is wrong
// with the request); other upstream failures are summarised, since they may describe the gateway's own keys.
//
// # Providers and failover
//
// An endpoint speaks "openai", "anthropic" (the Messages API) or "openai-compatible" (vLLM, Ollama,
// llama.cpp, ...). Anthropic endpoints are reached through a translation both ways: system and developer
// messages become the system prompt, tool calls become tool_use blocks and tool messages tool_result blocks
// (merged into one user turn), images become image blocks, response_format becomes an instruction, and
// streamed events (text and tool-argument deltas, stop reasons, usage from message_start and message_delta)
// become OpenAI chunks. Members with no Messages API counterpart are left out for Anthropic endpoints. A
// /v1/messages request for a model served only by Anthropic endpoints is not translated: it goes upstream as
// the caller wrote it and its answer (whole or its event stream) comes back as sent, under the same policy,
// guardrails, budgets and audit. For any other model the /v1/messages ingress translates the other way, so
// Anthropic clients can use any model.
//
// A call's first attempt goes to an endpoint drawn at random in proportion to the weights, among those that
// are up. A network error, a broken stream, 408, 409, 429 or a 5xx moves the call to the next endpoint at once
// and makes the failed one go last for HealthInterval; when every endpoint has been tried, the next round waits
// Backoff (doubling, with jitter, or the upstream's Retry-After if longer), up to Retries more attempts. A
// streamed call is retried only until its first chunk has arrived, so the caller never sees two answers.
// Run probes every endpoint (GET {base}/models) each HealthInterval; an endpoint that fails is tried last until
// a probe passes again.
//
// # Policy
//
// Cedar decides, with the caller as principal. The entities:
//
//	Umbra::Identity::"<SPIFFE ID>"   attributes org, admin, workgroups, trust_domain; member of
//	                                 Umbra::Org::"<org>" and Umbra::Workgroup::"<org>/<name>"
//	Umbra::Action::"use"
//	Umbra::Model::"<name>"           attribute name; the routing model ("auto") is a model too
//	context.operation                "chat" or "embeddings"
//	context.intent                   {purpose, category} when the call declares one in the Umbra-Intent and
//	                                 Umbra-Intent-Category headers (docs/intent.md); test it with `context has intent`
//
// For example:
//
//	@id("research-big")
//	permit (principal in Umbra::Workgroup::"acme/research", action == Umbra::Action::"use",
//	        resource == Umbra::Model::"gpt-big");
//	@id("acme-small")
//	permit (principal in Umbra::Org::"acme", action == Umbra::Action::"use", resource)
//	when { ["gpt-small", "auto"].contains(resource.name) };
//
// Nothing is permitted without a policy. /v1/models lists only what the caller may use; a refused call gets
// 403 model_not_permitted and an llm.denied audit record with Cedar's diagnostic (which policies, why).
//
// # Budgets
//
// A Budget limits one identity, an organisation's identities together, or (with neither set) each identity
// without a budget of its own: requests and tokens per minute, tokens and cost (from the endpoints' prices)
// per day and per month, and concurrent calls. Windows are fixed UTC minutes, days and months. A call reserves
// before it goes upstream and settles its actual usage afterwards, streamed calls included. Its reservation is
// its prompt (at about three bytes a token) plus its output: max_completion_tokens or max_tokens (else
// OutputReserve) per choice, times n, clamped to the room every token and cost budget has left. Under a token or
// cost budget that cap is written into the request sent upstream (the caller's max_completion_tokens and
// max_tokens lowered to it, or, when it set neither, max_completion_tokens for a model served only by OpenAI
// and max_tokens otherwise), so a call cannot use more than it reserved; a call the budgets cannot grant one
// output token per choice is refused. A call is admitted while settled usage plus outstanding reservations is
// below every limit, so concurrent callers cannot overrun a budget by more than one call's cap (50 concurrent
// callers without max_tokens against a 5,000-token budget were billed 4,885). Rate and concurrency limits
// answer 429 rate_limit_exceeded with Retry-After; day and month budgets answer 402 budget_exceeded. Day and
// month totals are kept per identity, organisation and model in the JetStream key-value bucket UsageBucket and
// survive restarts; minute windows and reservations live in memory. Several gateways may share the bucket
// (writes are compare-and-set); the one-call bound then holds per gateway. The routing model's embedding and
// classifier calls are the caller's: a caller over a budget or rate limit is refused before they run, and each
// of them is reserved against and billed to the caller (under the embedding or classifier model's name).
//
// # Guardrails
//
// Three categories, each off, log, redact or block: personal data (emails, phone numbers, card numbers with a
// Luhn check, US SSNs, UK National Insurance numbers, IBANs with the mod-97 check), secrets (API keys of common
// providers, private keys, JWTs, bearer tokens, credentials in assignments) and prompt-injection phrases (in
// user and tool messages only). Every string of a body is scanned, and every member name: message content and
// its parts, tool calls' names and arguments, refusals, tools' and functions' descriptions and parameter
// schemas, response_format, log probabilities (tokens, their bytes and alternatives, and the text they spell
// joined), and members the gateway does not know; only "model" and inline base64 data are left alone. Requests
// are scanned before anything else happens to them; a block answers 400 guardrail_blocked and writes an
// llm.guardrail record. With Responses set, answers are scanned too: a choice with a blocking finding is emptied
// and finishes with "content_filter"; a choice with a finding that redacts or blocks loses its log
// probabilities; outside the choices a blocking finding is replaced by its placeholder; a member name with a
// finding is removed. Streamed answers are scanned per choice and channel (content, refusal, each tool call's
// arguments, other text members) with a sliding window: the last Window bytes of each channel, and any finding
// that reaches into them, are held back until the text after them arrives, so a finding split across chunks is
// redacted or blocked before any of it is sent. Log-probability entries are held until the text their tokens
// spell has been judged the same way, and dropped when a finding touches them. Audit records and the metric
// umbra_llmgw_guardrail_findings_total count findings by direction, field (content, tool_calls.name,
// tool_calls.arguments, tools, refusal, logprobs, input, other), detector and mode; they never contain the text
// found.
//
// # Routing
//
// The routing model (Router.Name, "auto" by default) picks a model per request in a cascade: ordered
// heuristic rules (words or a pattern in the last user message, prompt length, tools, images); then the cosine
// similarity of the prompt's embedding to each route's examples (embeddings from EmbeddingModel, cached); then
// a classifier model asked to name a route; then Default. Only models the caller may use are chosen. The
// decision (layer, route, score, reason, and why earlier layers did not decide) is in the audit record and the
// X-Umbra-Route header.
//
// # Audit and metrics
//
// A call that is refused gives one record: llm.denied, llm.rate_limited, llm.budget_exceeded, llm.guardrail,
// llm.invalid or llm.unavailable (usage accounting or the audit trail could not be reached), with the caller
// as actor, the Cedar diagnostic and policy version, the reason and the error code. A call that is allowed
// gives two, linked by request_id:
//
//   - llm.call, the decision: caller, Cedar diagnostic and policy version, model requested and chosen, route
//     decision, guardrail findings in the request and, with LogPrompts, the messages as sent upstream (after
//     redaction). It is written before anything goes upstream, and the gateway waits until the Auditor has
//     confirmed it (at most Config.AuditTimeout). If it cannot be written the call is refused, never sent:
//     503 audit_unavailable with Retry-After ("the call was refused: its audit record could not be written;
//     try again later"), and an llm.unavailable record is attempted. When the Auditor refuses it with an
//     *audit.BudgetError (the controller's per-identity audit budget is spent), the answer is 429
//     audit_budget_exhausted with the controller's reason and Retry-After, and an llm.denied record.
//   - llm.outcome, after the answer: status and error code, provider, upstream model and endpoint, attempts,
//     tokens, cost, latency, time to first token, all guardrail findings, the upstream status of a failed
//     attempt and, with LogPrompts, the answer. The call has then happened, so an outcome that cannot be
//     written is counted in _audit_failures_total and logged, and the caller still gets the answer.
//
// So the trail never lacks a call that happened. A call can lack its outcome: llm.call says it was allowed and
// forwarded; no llm.outcome under its request_id means the gateway did not finish it (it stopped, or crashed,
// between the two records, or the outcome's write failed). Counting llm.call records counts the calls that
// reached a model. A call to the routing model that needs an embedding or classifier call to choose its model
// is begun before that call: its llm.call record says "routing": true and has no model or route yet; the
// model and route chosen, and what the routing model's calls used (router_usage), are in its llm.outcome. Administrators reading others' usage
// give llm.usage_read, written before the answer; refused administration requests give llm.admin_refused. Who
// administers the gateway, and over whose usage, is its own grant (Config.Self, Admins, AdminOrgs; package
// gatewayadmin), decided by Cedar (action read_usage on Umbra::Usage, one decision per subject read) with
// Config.AdminPolicies added to the built-in grants. Unidentified callers are only
// counted in metrics.
//
// Metrics follow the OpenTelemetry GenAI conventions: gen_ai_client_token_usage (by gen_ai_token_type),
// gen_ai_server_time_to_first_token_seconds and gen_ai_server_request_duration_seconds (with error_type),
// labelled by operation, provider, requested and response model, and caller; plus umbra_llmgw_requests_total
// (by outcome), _errors_total, _cost_usd_total, _guardrail_findings_total, _budget_refusals_total (by limit),
// _upstream_attempts_total, _endpoint_up, _route_decisions_total and _audit_failures_total. The gateway's own
// administrators read them at /metrics; with Config.MetricsListen, ServeMetrics also serves them in the Prometheus text format on a
// loopback address (another address only with MetricsAllowRemote).
//
// Sub-packages: chat (lossless OpenAI bodies), anthropic (translation), provider (upstream calls), guard
// (scanners), budget (limits and usage), route (the cascade), sse (event streams).
package llmgw
