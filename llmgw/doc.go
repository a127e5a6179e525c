// Package llmgw is the LLM gateway: an OpenAI-compatible API served as a dark overlay service, holding provider
// keys so agents never do, with per-identity models, budgets and rate limits, guardrails, routing and failover,
// usage accounting and audit.
//
// Not built yet; the overlay it runs on is in agentsdk.
package llmgw
