package mcpgw

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// The tests run real MCP servers from the SDK behind the gateway (in memory, as a stdio child process which is
// this test binary re-executed, and over streamable HTTP), and a real SDK client against the gateway's handler.
// Only the tests identify callers by a header; the gateway itself never trusts anything a client sends.

const (
	stdioEnv     = "MCPGW_TEST_STDIO_SERVER"
	identityHdr  = "X-Test-Identity"
	alice        = "spiffe://acme.test/acme/user/alice"
	bob          = "spiffe://acme.test/acme/user/bob"
	mallory      = "spiffe://evil.test/evil/user/mallory"
	adminID      = "spiffe://acme.test/acme/user/admin"
	allowAcme    = `@id("acme") permit (principal in Umbra::Org::"acme", action, resource);`
	testDeadline = 20 * time.Second
)

func TestMain(m *testing.M) {
	if name := os.Getenv(stdioEnv); name != "" {
		// The stdio backend: serve until stdin closes.
		srv, _ := newTestServer(name)
		if err := srv.Run(context.Background(), &mcp.StdioTransport{}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// events reports what happened inside an in-process test server.
type events struct {
	cancelled chan string  // names of calls cancelled by their caller
	writes    atomic.Int64 // notes written: the side effect of "write"
}

type echoIn struct {
	Text string `json:"text" jsonschema:"the text to echo"`
}

type echoOut struct {
	Text   string `json:"text"`
	Server string `json:"server"`
}

type slowIn struct {
	Steps   int `json:"steps"`
	DelayMS int `json:"delay_ms"`
}

type bigIn struct {
	Bytes int `json:"bytes"`
}

func yes() *bool { b := true; return &b }
func no() *bool  { b := false; return &b }

// newTestServer returns an MCP server with tools, a resource, a resource template and a prompt.
func newTestServer(name string) (*mcp.Server, *events) {
	ev := &events{cancelled: make(chan string, 16)}
	srv := mcp.NewServer(&mcp.Implementation{Name: name, Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "echo", Title: "Echo", Description: "Returns the text it is given.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: no()}},
		func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
			return nil, echoOut{Text: in.Text, Server: name}, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "write", Description: "Writes a note.", Annotations: &mcp.ToolAnnotations{DestructiveHint: yes()}},
		func(ctx context.Context, req *mcp.CallToolRequest, in map[string]any) (*mcp.CallToolResult, any, error) {
			ev.writes.Add(1)
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprint("wrote ", in["text"])}}}, nil, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "fail", Description: "Always fails."},
		func(ctx context.Context, req *mcp.CallToolRequest, in struct{}) (*mcp.CallToolResult, any, error) {
			return nil, nil, errors.New("the disk is full")
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "slow", Description: "Works in steps, reporting progress."},
		func(ctx context.Context, req *mcp.CallToolRequest, in slowIn) (*mcp.CallToolResult, any, error) {
			tok := req.Params.GetProgressToken()
			for i := range in.Steps {
				if tok != nil {
					_ = req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok,
						Progress: float64(i + 1), Total: float64(in.Steps), Message: fmt.Sprintf("step %d", i+1)})
				}
				_ = req.Session.Log(ctx, &mcp.LoggingMessageParams{Level: "info", Logger: "slow", Data: fmt.Sprintf("step %d", i+1)})
				select {
				case <-ctx.Done():
					ev.cancelled <- "slow"
					return nil, nil, ctx.Err()
				case <-time.After(time.Duration(in.DelayMS) * time.Millisecond):
				}
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "done"}}}, nil, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "big", Description: "Returns a large text."},
		func(ctx context.Context, req *mcp.CallToolRequest, in bigIn) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: strings.Repeat("x", in.Bytes)}}}, nil, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "crash", Description: "Ends the server process."},
		func(ctx context.Context, req *mcp.CallToolRequest, in struct{}) (*mcp.CallToolResult, any, error) {
			if os.Getenv(stdioEnv) != "" {
				os.Exit(3)
			}
			return nil, nil, errors.New("not a process of its own")
		})
	srv.AddResource(&mcp.Resource{Name: "readme", URI: "mem://" + name + "/readme", MIMEType: "text/plain"},
		func(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, MIMEType: "text/plain", Text: "readme of " + name}}}, nil
		})
	srv.AddResourceTemplate(&mcp.ResourceTemplate{Name: "item", URITemplate: "mem://" + name + "/items/{id}"},
		func(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			id := strings.TrimPrefix(req.Params.URI, "mem://"+name+"/items/")
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, Text: "item " + id}}}, nil
		})
	srv.AddPrompt(&mcp.Prompt{Name: "greet", Description: "Greets someone.", Arguments: []*mcp.PromptArgument{{Name: "who", Required: true}}},
		func(ctx context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			return &mcp.GetPromptResult{Messages: []*mcp.PromptMessage{{Role: "user",
				Content: &mcp.TextContent{Text: "Say hello to " + req.Params.Arguments["who"] + " from " + name}}}}, nil
		})
	return srv, ev
}

// memBackend serves srv in memory. While down, connections fail and existing sessions are closed.
type memBackend struct {
	srv  *mcp.Server
	mu   sync.Mutex
	down bool
}

func (m *memBackend) connect(ctx context.Context) (mcp.Transport, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return nil, errors.New("connection refused")
	}
	st, ct := mcp.NewInMemoryTransports()
	if _, err := m.srv.Connect(ctx, st, nil); err != nil {
		return nil, err
	}
	return ct, nil
}

func (m *memBackend) setDown(down bool) {
	m.mu.Lock()
	m.down = down
	m.mu.Unlock()
	if down {
		for ss := range m.srv.Sessions() {
			ss.Close()
		}
	}
}

func inMemory(name string, srv *mcp.Server, trusted bool) (Backend, *memBackend) {
	m := &memBackend{srv: srv}
	return Backend{Name: name, Trusted: trusted, Connect: m.connect}, m
}

func stdioBackend(name string, trusted bool) Backend {
	return Backend{Name: name, Trusted: trusted, Connect: func(ctx context.Context) (mcp.Transport, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), stdioEnv+"="+name)
		return &mcp.CommandTransport{Command: cmd, TerminateDuration: time.Second}, nil
	}}
}

func httpBackend(t testing.TB, name string, srv *mcp.Server, trusted bool) Backend {
	ts := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	t.Cleanup(ts.Close)
	return Backend{Name: name, Trusted: trusted, Connect: func(ctx context.Context) (mcp.Transport, error) {
		return &mcp.StreamableClientTransport{Endpoint: ts.URL, HTTPClient: ts.Client(), MaxRetries: -1}, nil
	}}
}

// recorder is an Auditor that keeps records in memory and checks each is one the audit trail accepts. A fault
// set with failWith decides the fate of the records appended after it.
type recorder struct {
	t     testing.TB
	mu    sync.Mutex
	rs    []audit.Record
	fault func(context.Context, audit.Record) error
}

// failWith makes every later Append call f first and fail with its error, if any; nil heals the recorder.
func (r *recorder) failWith(f func(context.Context, audit.Record) error) {
	r.mu.Lock()
	r.fault = f
	r.mu.Unlock()
}

// records returns the records appended so far, in order.
func (r *recorder) records() []audit.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]audit.Record(nil), r.rs...)
}

func (r *recorder) Append(ctx context.Context, rec audit.Record) error {
	if !strings.HasPrefix(rec.Kind, "mcp.") || strings.Trim(rec.Kind, "abcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
		r.t.Errorf("audit kind %q invalid", rec.Kind)
	}
	if _, err := spiffeid.FromString(rec.Actor); err != nil {
		r.t.Errorf("audit actor %q is not a SPIFFE ID", rec.Actor)
	}
	for _, raw := range []json.RawMessage{rec.Data, rec.Diagnostic} {
		if len(raw) > 0 && !json.Valid(raw) {
			r.t.Errorf("audit record %s carries invalid JSON %s", rec.Kind, raw)
		}
	}
	r.mu.Lock()
	fault := r.fault
	r.mu.Unlock()
	if fault != nil {
		if err := fault(ctx, rec); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.rs = append(r.rs, rec)
	r.mu.Unlock()
	return nil
}

// find waits until a record matching f is appended and returns it.
func (r *recorder) find(t *testing.T, what string, f func(audit.Record) bool) audit.Record {
	t.Helper()
	var found audit.Record
	eventually(t, "audit record "+what, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, rec := range r.rs {
			if f(rec) {
				found = rec
				return true
			}
		}
		return false
	})
	return found
}

func dataOf(rec audit.Record) map[string]any {
	var m map[string]any
	_ = json.Unmarshal(rec.Data, &m)
	return m
}

// directory is a test Directory.
type directory map[string]Principal

func (d directory) Lookup(_ context.Context, id spiffeid.ID) (Principal, error) {
	p, ok := d[id.String()]
	if !ok {
		return Principal{ID: id, Org: strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")[0]}, nil
	}
	p.ID = id
	return p, nil
}

func headerIdentity(r *http.Request) (spiffeid.ID, error) {
	return spiffeid.FromString(r.Header.Get(identityHdr))
}

type env struct {
	g   *Gateway
	url string
	rec *recorder
}

// start runs a gateway over cfg (tests fill in identification, audit and logs) until the test ends.
func start(t testing.TB, cfg Config) *env {
	t.Helper()
	testlimit.Start(t, 5*time.Minute)
	rec := &recorder{t: t}
	cfg.Identify = headerIdentity
	cfg.Auditor = rec
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	if len(cfg.Admins) == 0 {
		cfg.Admins = []spiffeid.ID{spiffeid.RequireFromString(adminID)}
	}
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-g.Ready():
	case <-time.After(testDeadline):
		t.Fatal("gateway not ready")
	}
	ts := httptest.NewServer(g.Handler())
	t.Cleanup(ts.Close)
	return &env{g: g, url: ts.URL, rec: rec}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// asIdentity adds the test identity header to every request.
type asIdentity struct {
	id   string
	next http.RoundTripper
}

func (a asIdentity) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(identityHdr, a.id)
	return a.next.RoundTrip(r)
}

func httpClient(id string) *http.Client {
	return &http.Client{Transport: asIdentity{id: id, next: http.DefaultTransport}}
}

// client records what the gateway sends a client session.
type client struct {
	cs              *mcp.ClientSession
	toolsChange     chan struct{}
	promptsChange   chan struct{}
	resourcesChange chan struct{}
	mu              sync.Mutex
	progress        []*mcp.ProgressNotificationParams
	logs            []*mcp.LoggingMessageParams
}

func (e *env) connect(t testing.TB, id string) *client {
	t.Helper()
	c := &client{toolsChange: make(chan struct{}, 16), promptsChange: make(chan struct{}, 16),
		resourcesChange: make(chan struct{}, 16)}
	mc := mcp.NewClient(&mcp.Implementation{Name: "test-client", Version: "1"}, &mcp.ClientOptions{
		ToolListChangedHandler:     func(context.Context, *mcp.ToolListChangedRequest) { signal(c.toolsChange) },
		PromptListChangedHandler:   func(context.Context, *mcp.PromptListChangedRequest) { signal(c.promptsChange) },
		ResourceListChangedHandler: func(context.Context, *mcp.ResourceListChangedRequest) { signal(c.resourcesChange) },
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			c.mu.Lock()
			c.progress = append(c.progress, req.Params)
			c.mu.Unlock()
		},
		LoggingMessageHandler: func(_ context.Context, req *mcp.LoggingMessageRequest) {
			c.mu.Lock()
			c.logs = append(c.logs, req.Params)
			c.mu.Unlock()
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	cs, err := mc.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: e.url, HTTPClient: httpClient(id), MaxRetries: -1}, nil)
	if err != nil {
		t.Fatalf("connect as %s: %v", id, err)
	}
	t.Cleanup(func() { cs.Close() })
	c.cs = cs
	return c
}

// signal notes an event on ch without blocking the client's reader.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// drain forgets the events noted on ch so far.
func drain(ch chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func (c *client) toolNames(t *testing.T) []string {
	t.Helper()
	res, err := c.cs.ListTools(ctxT(t), nil)
	if err != nil {
		t.Fatalf("tools/list: %v", err)
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
	}
	return names
}

func (c *client) call(t *testing.T, name string, args any) (*mcp.CallToolResult, error) {
	t.Helper()
	return c.cs.CallTool(ctxT(t), &mcp.CallToolParams{Name: name, Arguments: args})
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	t.Cleanup(cancel)
	return ctx
}

func text(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// rpcCode returns the JSON-RPC error code in err, or 0.
func rpcCode(err error) int64 {
	var we *jsonrpc.Error
	if errors.As(err, &we) {
		return we.Code
	}
	return 0
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitSignal(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testDeadline):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// adminDo calls the administration API as id and decodes the JSON answer into out.
func (e *env) adminDo(t *testing.T, id, method, path string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctxT(t), method, e.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := httpClient(id).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func mustID(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }
