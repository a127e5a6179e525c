// Package mcpgw is the MCP gateway: it aggregates MCP servers (stdio, streamable HTTP, and dark MCP servers on
// the overlay) behind one dark MCP endpoint, with per-caller tool visibility decided by policy on the caller's
// verified SPIFFE ID, pinned tool definitions, approvals and audit.
//
// Not built yet; the overlay it runs on is in agentsdk.
package mcpgw
