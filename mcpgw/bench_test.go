package mcpgw

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
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

// BenchmarkCallLoad makes tools/call to the sample MCP server (streamable HTTP on loopback) directly and through
// a plain HTTP reverse proxy and the gateway, side by side, in three cases: 32 concurrent client sessions with the server holding each call
// 1 ms (an upstream of fixed latency: the throughput ratio), 32 sessions with no delay (the ceiling of the whole
// process) and one session with no delay (the latency the gateway adds to one call). The overlay is not in the
// path: the gateway's handler is served on loopback HTTP, so what the gateway adds is measured apart from the
// overlay hop. The reverse proxy (net/http/httputil, no MCP awareness) is the floor for anything that terminates
// HTTP in front of the server: a second hop's worth of HTTP work on the same cores.
func BenchmarkCallLoad(b *testing.B) {
	for _, c := range loadCases {
		srv := sampletools.NewServer("sample")
		sampletools.Delay(srv, c.delay)
		ts := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
		ts.Client().Transport.(*http.Transport).MaxIdleConnsPerHost = 2 * c.clients
		backend := Backend{Name: "sample", Trusted: true, Connect: func(ctx context.Context) (mcp.Transport, error) {
			return &mcp.StreamableClientTransport{Endpoint: ts.URL, HTTPClient: ts.Client(), MaxRetries: -1}, nil
		}}
		e := start(b, Config{Backends: []Backend{backend}, Policies: allowAcme,
			Limits: Limits{CallsPerMinute: -1, Concurrent: 4 * c.clients}, Logger: slog.New(slog.DiscardHandler)})
		target, _ := url.Parse(ts.URL)
		rp := httputil.NewSingleHostReverseProxy(target)
		rp.Transport = &http.Transport{MaxIdleConnsPerHost: 2 * c.clients}
		proxy := httptest.NewServer(rp)
		for _, via := range []struct{ name, url string }{{"direct", ts.URL}, {"proxy", proxy.URL}} {
			b.Run(c.name()+"/"+via.name, func(b *testing.B) {
				var sessions []*mcp.ClientSession
				for range c.clients {
					ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
					cs, err := mcp.NewClient(&mcp.Implementation{Name: "bench"}, nil).Connect(ctx,
						&mcp.StreamableClientTransport{Endpoint: via.url, HTTPClient: ts.Client(), MaxRetries: -1}, nil)
					cancel()
					if err != nil {
						b.Fatal(err)
					}
					defer cs.Close()
					sessions = append(sessions, cs)
				}
				loadbench.Run(b, "req", calls(sessions, "echo"))
			})
		}
		b.Run(c.name()+"/gateway", func(b *testing.B) {
			var sessions []*mcp.ClientSession
			for range c.clients {
				sessions = append(sessions, e.connect(b, alice).cs)
			}
			loadbench.Run(b, "req", calls(sessions, "sample__echo"))
		})
		proxy.Close()
		ts.Close()
	}
}

// loadCases are the cases of BenchmarkCallLoad.
var loadCases = []loadCase{{time.Millisecond, 32}, {0, 32}, {0, 1}}

type loadCase struct {
	delay   time.Duration
	clients int
}

func (c loadCase) name() string { return fmt.Sprintf("delay=%s/clients=%d", c.delay, c.clients) }
