package agentsdk

import (
	"context"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// MCPTransport returns an MCP client transport to an MCP endpoint hosted on the overlay (the MCP gateway by
// default: service "mcpgw"). It speaks MCP's streamable HTTP inside the agent's overlay connections, so the agent
// needs no local socket:
//
//	session, err := mcp.NewClient(impl, nil).Connect(ctx, agent.MCPTransport("mcpgw"), nil)
func (a *Agent) MCPTransport(service string) mcp.Transport {
	if service == "" {
		service = "mcpgw"
	}
	return &mcp.StreamableClientTransport{Endpoint: "http://" + service + "/", HTTPClient: a.HTTPClient()}
}

// MCPSession connects an MCP client to the MCP endpoint hosted as service on the overlay.
func (a *Agent) MCPSession(ctx context.Context, service string) (*mcp.ClientSession, error) {
	client := mcp.NewClient(&mcp.Implementation{Name: "umbra-agent", Version: "1"}, nil)
	return client.Connect(ctx, a.MCPTransport(service), nil)
}
