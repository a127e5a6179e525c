package mcpgw

import (
	"context"
	"log/slog"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
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
