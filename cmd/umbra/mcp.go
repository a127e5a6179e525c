package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/mcpbridge"
	"github.com/umbra-mesh/umbra/internal/sampletools"
	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// cmdMCPServe makes a local stdio MCP server dark: it hosts a service on the overlay and runs the command once
// per incoming connection, its stdin and stdout joined to the connection (newline-delimited JSON-RPC, the MCP
// stdio transport). The caller's verified SPIFFE ID is passed to the command in UMBRA_PEER_ID.
func cmdMCPServe(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var command []string
	for i, a := range args {
		if a == "--" {
			args, command = args[:i], args[i+1:]
			break
		}
	}
	var service string
	return withAgent(ctx, "mcp serve", args, stderr, func(f *flags) {
		f.StringVar(&service, "service", "", "overlay service to host")
		f.require("service")
		f.args(0, "")
		f.check(func([]string) error {
			if len(command) == 0 {
				return errors.New("give the MCP server command after --, e.g. -- umbra mcp sample-server")
			}
			return nil
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		ln, err := listenHosted(ctx, a, service)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "serving MCP server %q as %s on %s (no listening socket)\n", command[0], a.ID(), service)
		return serveConns(ctx, ln, func(conn net.Conn, peer spiffeid.ID) {
			cmd := exec.CommandContext(ctx, command[0], command[1:]...)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = conn, conn, stderr
			cmd.Env = append(os.Environ(), "UMBRA_PEER_ID="+peer.String())
			if err := cmd.Run(); err != nil && ctx.Err() == nil {
				fmt.Fprintf(stderr, "mcp server for %s ended: %v\n", peer, err)
			}
		})
	})
}

// cmdMCPConnect is a stdio MCP server for desktop clients that forwards everything to the MCP gateway on the
// overlay: the client needs no network access and no key but the identity file. Requests are forwarded
// concurrently, cancellations end to end, and the gateway's own notifications reach the client.
func cmdMCPConnect(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var service, path, purpose, category string
	return withAgent(ctx, "mcp connect", args, stderr, func(f *flags) {
		f.StringVar(&service, "service", "mcpgw", "the gateway's overlay service")
		f.StringVar(&path, "path", "/mcp", "the gateway's MCP endpoint path")
		f.StringVar(&purpose, "intent", os.Getenv("UMBRA_INTENT"), "declare this purpose on every tool call that has none (default $UMBRA_INTENT)")
		f.StringVar(&category, "intent-category", os.Getenv("UMBRA_INTENT_CATEGORY"), "and this intent category (default $UMBRA_INTENT_CATEGORY)")
		f.args(0, "")
		f.check(func([]string) error { return checkIntentFlags(purpose, category) })
	}, func(a *agentsdk.Agent, _ []string) error {
		server := &mcp.StreamableClientTransport{Endpoint: "http://" + service + path, HTTPClient: a.HTTPClient()}
		client := &mcp.IOTransport{Reader: io.NopCloser(stdin), Writer: nopWriteCloser{stdout}}
		// stdout carries the protocol: what the bridge has to say goes to stderr.
		log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		if purpose == "" && category == "" {
			return mcpbridge.Join(ctx, client, server, log)
		}
		return mcpbridge.JoinDeclaring(ctx, client, server, log, authz.Intent{Purpose: purpose, Category: category})
	})
}

// cmdMCPSampleServer serves a small deterministic MCP server on stdio (for the demo and for trying things out).
func cmdMCPSampleServer(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	f := newFlags("mcp sample-server", stderr)
	var name string
	var delay time.Duration
	f.StringVar(&name, "name", "umbra-sample", "server name")
	f.DurationVar(&delay, "delay", 0, "hold every tool call this long first, as an upstream of fixed latency (for benchmarks)")
	f.args(0, "")
	if _, err := f.parse(args); err != nil {
		return err
	}
	return sampletools.ServeStdio(ctx, name, delay)
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
