package mcpgw

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/internal/loadbench"
	"github.com/umbra-mesh/umbra/internal/sampletools"
)

// The cost of the gateway: the same tools/call on the same stdio server, directly and through the gateway
// (streamable HTTP on loopback, identity, policy, pin check, limits, audit, metrics). Compare ns/op.

func benchCall(b *testing.B, cs *mcp.ClientSession, name string) {
	b.Helper()
	ctx := context.Background()
	args := map[string]any{"text": "hello"}
	b.ResetTimer()
	for b.Loop() {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
		if err != nil || res.IsError {
			b.Fatalf("call: %v %v", res, err)
		}
	}
}

func BenchmarkCallDirectStdio(b *testing.B) {
	t, err := stdioBackend("local", true).Connect(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "bench"}, nil).Connect(context.Background(), t, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer cs.Close()
	benchCall(b, cs, "echo")
}

func BenchmarkCallThroughGateway(b *testing.B) {
	e := start(b, Config{Backends: []Backend{stdioBackend("local", true)}, Policies: allowAcme,
		Limits: Limits{CallsPerMinute: -1}, Logger: slog.New(slog.DiscardHandler)})
	benchCall(b, e.connect(b, alice).cs, "local__echo")
}

// calls makes, for each session, a worker that calls the tool name on it.
func calls(sessions []*mcp.ClientSession, name string) []func() error {
	args := map[string]any{"text": "hello"}
	ws := make([]func() error, len(sessions))
	for i, cs := range sessions {
		ws[i] = func() error {
			ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
			defer cancel()
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
			if err != nil || res.IsError {
				return fmt.Errorf("call: %v %v", res, err)
			}
			return nil
		}
	}
	return ws
}

// BenchmarkCallLoad makes tools/call from 32 concurrent client sessions to the sample MCP server (streamable
// HTTP on loopback), directly and through the gateway, with the server holding each call 1 ms (an upstream of
// fixed latency) and with no delay (the gateway's own ceiling): delay=1ms/direct and delay=1ms/gateway side by
// side give the throughput ratio.
func BenchmarkCallLoad(b *testing.B) {
	const clients = 32
	for _, delay := range []time.Duration{time.Millisecond, 0} {
		srv := sampletools.NewServer("sample")
		sampletools.Delay(srv, delay)
		ts := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
		ts.Client().Transport.(*http.Transport).MaxIdleConnsPerHost = 2 * clients
		backend := Backend{Name: "sample", Trusted: true, Connect: func(ctx context.Context) (mcp.Transport, error) {
			return &mcp.StreamableClientTransport{Endpoint: ts.URL, HTTPClient: ts.Client(), MaxRetries: -1}, nil
		}}
		e := start(b, Config{Backends: []Backend{backend}, Policies: allowAcme,
			Limits: Limits{CallsPerMinute: -1, Concurrent: 4 * clients}, Logger: slog.New(slog.DiscardHandler)})
		name := "delay=" + delay.String()
		b.Run(name+"/direct", func(b *testing.B) {
			var sessions []*mcp.ClientSession
			for range clients {
				ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
				cs, err := mcp.NewClient(&mcp.Implementation{Name: "bench"}, nil).Connect(ctx,
					&mcp.StreamableClientTransport{Endpoint: ts.URL, HTTPClient: ts.Client(), MaxRetries: -1}, nil)
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				defer cs.Close()
				sessions = append(sessions, cs)
			}
			loadbench.Run(b, "req", calls(sessions, "echo"))
		})
		b.Run(name+"/gateway", func(b *testing.B) {
			var sessions []*mcp.ClientSession
			for range clients {
				sessions = append(sessions, e.connect(b, alice).cs)
			}
			loadbench.Run(b, "req", calls(sessions, "sample__echo"))
		})
		ts.Close()
	}
}
