// Package mcpbridge joins two MCP transports message by message, so a client that speaks one transport reaches a
// server that speaks another: `umbra mcp connect` joins a desktop client's stdio to a gateway's streamable HTTP
// endpoint on the overlay.
package mcpbridge

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Join connects client (the side an MCP client talks to, e.g. stdio) and server (a transport to an MCP server)
// and copies JSON-RPC messages both ways until either side ends or ctx is cancelled. It returns nil when the
// client side closes cleanly.
func Join(ctx context.Context, client, server mcp.Transport) error {
	cconn, err := client.Connect(ctx)
	if err != nil {
		return fmt.Errorf("mcpbridge: client side: %w", err)
	}
	defer cconn.Close()
	sconn, err := server.Connect(ctx)
	if err != nil {
		return fmt.Errorf("mcpbridge: server side: %w", err)
	}
	defer sconn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	pump := func(from, to mcp.Connection, side string) {
		for {
			msg, err := from.Read(ctx)
			if err != nil {
				if errors.Is(err, io.EOF) || ctx.Err() != nil {
					errc <- nil
				} else {
					errc <- fmt.Errorf("mcpbridge: reading %s: %w", side, err)
				}
				return
			}
			if err := to.Write(ctx, msg); err != nil {
				errc <- fmt.Errorf("mcpbridge: writing to the other side of %s: %w", side, err)
				return
			}
		}
	}
	go pump(cconn, sconn, "client")
	go pump(sconn, cconn, "server")
	err = <-errc
	cancel()
	return err
}
