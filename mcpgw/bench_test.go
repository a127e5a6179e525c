package mcpgw

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

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

// loadRun makes b.N calls spread over the sessions, one client goroutine per session, and reports throughput and
// latency percentiles.
func loadRun(b *testing.B, sessions []*mcp.ClientSession, name string) {
	b.Helper()
	var (
		mu   sync.Mutex
		lat  = make([]time.Duration, 0, b.N)
		next atomic.Int64
		wg   sync.WaitGroup
		fail atomic.Value
	)
	args := map[string]any{"text": "hello"}
	b.ResetTimer()
	start := time.Now()
	for _, cs := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, b.N/len(sessions)+1)
			for next.Add(1) <= int64(b.N) {
				ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
				t0 := time.Now()
				res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
				cancel()
				if err != nil || res.IsError {
					fail.Store(fmt.Errorf("call: %v %v", res, err))
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err, _ := fail.Load().(error); err != nil {
		b.Fatal(err)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)*50/100].Microseconds()), "p50-us")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()), "p99-us")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
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
			loadRun(b, sessions, "echo")
		})
		b.Run(name+"/gateway", func(b *testing.B) {
			var sessions []*mcp.ClientSession
			for range clients {
				sessions = append(sessions, e.connect(b, alice).cs)
			}
			loadRun(b, sessions, "sample__echo")
		})
		ts.Close()
	}
}
