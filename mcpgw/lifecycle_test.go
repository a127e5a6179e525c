package mcpgw

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// failing is a backend whose every connection attempt fails with why; attempts counts them.
func failing(name, why string, attempts *atomic.Int32) Backend {
	return Backend{Name: name, Kind: "http", Connect: func(context.Context) (mcp.Transport, error) {
		attempts.Add(1)
		return nil, errors.New(why)
	}}
}

// running is a gateway's Run in progress.
type running struct {
	done chan struct{} // closed when Run has returned err
	err  error
}

// runGateway runs g until the test ends.
func runGateway(t *testing.T, g *Gateway) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{done: make(chan struct{})}
	go func() {
		r.err = g.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(testDeadline):
			t.Error("Run did not return after its context ended")
		}
	})
	return r
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// The gateway is ready only once a backend serves: while every backend fails it keeps retrying and stays
// unready (its handler answers 503), and it becomes ready when one connects. The backend states then say which
// is connected, which failed and why, and count each backend's tools and pins.
func TestReadyWaitsForABackend(t *testing.T) {
	testlimit.Start(t, 2*time.Minute)
	srv, _ := newTestServer("notes")
	notes, mem := inMemory("notes", srv, true)
	notes.Kind = "stdio"
	mem.setDown(true)
	var memTries, brokenTries atomic.Int32
	connect := notes.Connect
	notes.Connect = func(ctx context.Context) (mcp.Transport, error) {
		memTries.Add(1)
		return connect(ctx)
	}
	g, err := New(Config{Backends: []Backend{notes, failing("broken", "dial tcp 127.0.0.1:9: connection refused", &brokenTries)},
		Policies: allowAcme, Identify: headerIdentity, StartTimeout: time.Minute, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	done := runGateway(t, g)
	// Both have been tried and retried: not ready, and the handler says so.
	eventually(t, "backends retried", func() bool { return memTries.Load() >= 3 && brokenTries.Load() >= 3 })
	if isClosed(g.Ready()) {
		t.Fatal("ready while no backend is connected")
	}
	rw := httptest.NewRecorder()
	g.Handler().ServeHTTP(rw, httptest.NewRequest(http.MethodGet, "/admin/tools", nil))
	if rw.Code != http.StatusServiceUnavailable {
		t.Fatalf("handler before ready answered %d, want 503", rw.Code)
	}

	mem.setDown(false)
	select {
	case <-g.Ready():
	case <-done.done:
		t.Fatalf("Run returned %v", done.err)
	case <-time.After(testDeadline):
		t.Fatal("not ready after a backend came up")
	}
	bs, err := g.Backends(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 2 {
		t.Fatalf("backend states %+v", bs)
	}
	n, b := bs[0], bs[1]
	if n.Name != "notes" || n.Kind != "stdio" || n.State != StateConnected || !n.Up || n.LastError != "" {
		t.Errorf("notes: %+v", n)
	}
	if n.Tools == 0 || n.Pinned != n.Tools || n.Quarantined != 0 || n.Held != 0 {
		t.Errorf("notes counts: %+v", n)
	}
	if b.Name != "broken" || b.Kind != "http" || b.State != StateFailed || b.Up || !strings.Contains(b.LastError, "connection refused") ||
		b.Tools != 0 || b.Pinned != 0 {
		t.Errorf("broken: %+v", b)
	}

	// A changed definition is counted as quarantined: no longer served, still pinned.
	mcp.AddTool(srv, &mcp.Tool{Name: "echo", Description: "Returns the text it is given, now faster."},
		func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
			return nil, echoOut{Text: in.Text}, nil
		})
	eventually(t, "echo quarantined in the backend state", func() bool {
		bs, err := g.Backends(context.Background())
		return err == nil && bs[0].Quarantined == 1 && bs[0].Tools == n.Tools-1 && bs[0].Pinned == n.Pinned
	})
}

// With no backend connected within StartTimeout, Run fails with one line naming each backend and why; the
// gateway is never ready.
func TestRunFailsWhenNoBackendConnects(t *testing.T) {
	testlimit.Start(t, time.Minute)
	var a, b atomic.Int32
	g, err := New(Config{Backends: []Backend{failing("files", "exec: \"mcp-files\": executable file not found in $PATH", &a),
		failing("search", "initialize: 401 Unauthorized", &b)}, Policies: allowAcme, StartTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := runGateway(t, g)
	select {
	case <-done.done:
	case <-time.After(testDeadline):
		t.Fatal("Run did not fail")
	}
	runErr := done.err
	if runErr == nil || isClosed(g.Ready()) {
		t.Fatalf("Run returned %v, ready %v", runErr, isClosed(g.Ready()))
	}
	msg := runErr.Error()
	for _, want := range []string{"no backend available", "files (http): transport: exec: \"mcp-files\": executable file not found",
		"search (http): transport: initialize: 401 Unauthorized"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error %q is not one line", msg)
	}
}

// metrics_listen serves the Prometheus text on loopback over real HTTP; other addresses need
// MetricsAllowRemote, and a registry of one's own cannot be served there.
func TestMetricsListen(t *testing.T) {
	testlimit.Start(t, time.Minute)
	srv, _ := newTestServer("notes")
	notes, _ := inMemory("notes", srv, true)
	for _, tc := range []struct {
		addr   string
		remote bool
		want   string
	}{
		{"0.0.0.0:9465", false, "not a loopback address"},
		{"10.1.2.3:9465", false, "metrics_allow_remote"},
		{"127.0.0.1", false, "want HOST:PORT"},
		{"0.0.0.0:9465", true, ""},
		{"[::1]:9465", false, ""},
		{"localhost:9465", false, ""},
	} {
		_, err := New(Config{Backends: []Backend{notes}, MetricsListen: tc.addr, MetricsAllowRemote: tc.remote})
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s (remote %v): %v, want %q", tc.addr, tc.remote, err, tc.want)
		}
	}

	g, err := New(Config{Backends: []Backend{notes}, Policies: allowAcme, MetricsListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	runGateway(t, g)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := g.ServeMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.Ready():
	case <-time.After(testDeadline):
		t.Fatal("not ready")
	}
	client := &http.Client{Timeout: testDeadline}
	var body string
	eventually(t, "backend_up reported", func() bool {
		resp, err := client.Get("http://" + addr.String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == http.StatusOK && strings.Contains(body, `umbra_mcpgw_backend_up{backend="notes"} 1`)
	})
	if !strings.Contains(body, "umbra_mcpgw_backend_connects_total") {
		t.Errorf("metrics lack the connection counter:\n%s", body)
	}
	resp, err := client.Get("http://" + addr.String() + "/admin/tools")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("/admin/tools on the metrics address answered %d, want 404", resp.StatusCode)
	}
	// A taken address fails at once, naming it.
	g2, err := New(Config{Backends: []Backend{notes}, MetricsListen: addr.String()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g2.ServeMetrics(ctx); err == nil || !strings.Contains(err.Error(), addr.String()) {
		t.Errorf("a taken metrics address: %v", err)
	}
}
