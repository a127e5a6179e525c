package mcpbridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

type echoIn struct {
	Text string `json:"text"`
}

type echoOut struct {
	Echo string `json:"echo"`
}

// A real MCP client on one side of a pipe, the bridge in the middle, a real streamable HTTP MCP server behind.
func TestJoinStdioToStreamableHTTP(t *testing.T) {
	srv := mcp.NewServer(&mcp.Implementation{Name: "echo", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "echo", Description: "echoes"}, func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
		return nil, echoOut{Echo: in.Text}, nil
	})
	hs := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	defer hs.Close()

	// The client writes into c2b and reads from b2c; the bridge reads c2b and writes b2c.
	c2bR, c2bW := io.Pipe()
	b2cR, b2cW := io.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Join(ctx, &mcp.IOTransport{Reader: c2bR, Writer: b2cW}, &mcp.StreamableClientTransport{Endpoint: hs.URL}, nil)
	}()
	client := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.IOTransport{Reader: b2cR, Writer: c2bW}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tools, err := cs.ListTools(ctx, nil)
	if err != nil || len(tools.Tools) != 1 || tools.Tools[0].Name != "echo" {
		t.Fatalf("tools: %+v %v", tools, err)
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": "through the bridge"}})
	if err != nil || res.IsError {
		t.Fatalf("call: %+v %v", res, err)
	}
	if got := res.StructuredContent.(map[string]any)["echo"]; got != "through the bridge" {
		t.Fatalf("echo = %v", got)
	}
	cs.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("join: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("bridge did not end when the client closed")
	}
}

// bridged runs a streamable HTTP server for srv, the bridge in front of it, and an official client on the
// bridge's stdio side.
func bridged(t *testing.T, srv *mcp.Server, opts *mcp.ClientOptions) (*mcp.ClientSession, context.Context) {
	t.Helper()
	hs := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	t.Cleanup(hs.Close)
	c2bR, c2bW := io.Pipe()
	b2cR, b2cW := io.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() {
		done <- Join(ctx, &mcp.IOTransport{Reader: c2bR, Writer: b2cW}, &mcp.StreamableClientTransport{Endpoint: hs.URL}, nil)
	}()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, opts).Connect(ctx, &mcp.IOTransport{Reader: b2cR, Writer: c2bW}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("join: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("bridge did not end when the client closed")
		}
	})
	return cs, ctx
}

// holdServer has a tool "hold" that waits until release is closed or its call is cancelled, and reports both.
type holdServer struct {
	srv       *mcp.Server
	entered   chan struct{} // a hold call started
	release   chan struct{}
	cancelled chan struct{} // a hold call's context ended before release
}

func newHoldServer() *holdServer {
	h := &holdServer{srv: mcp.NewServer(&mcp.Implementation{Name: "hold", Version: "1"}, nil),
		entered: make(chan struct{}, 8), release: make(chan struct{}), cancelled: make(chan struct{}, 8)}
	mcp.AddTool(h.srv, &mcp.Tool{Name: "hold", Description: "waits"}, func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, echoOut, error) {
		h.entered <- struct{}{}
		select {
		case <-h.release:
			return nil, echoOut{Echo: "released"}, nil
		case <-ctx.Done():
			h.cancelled <- struct{}{}
			return nil, echoOut{}, ctx.Err()
		}
	})
	mcp.AddTool(h.srv, &mcp.Tool{Name: "echo", Description: "echoes"}, func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
		return nil, echoOut{Echo: in.Text}, nil
	})
	return h
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// While one call waits, ping and other calls are answered: the bridge forwards requests concurrently.
func TestJoinConcurrentRequests(t *testing.T) {
	h := newHoldServer()
	cs, ctx := bridged(t, h.srv, nil)
	held := make(chan error, 1)
	go func() {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "hold"})
		if err == nil && res.IsError {
			err = errors.New("hold failed")
		}
		held <- err
	}()
	wait(t, h.entered, "the held call")
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := cs.Ping(pctx, nil); err != nil {
		t.Fatalf("ping while a call is held: %v", err)
	}
	res, err := cs.CallTool(pctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": "meanwhile"}})
	if err != nil || res.IsError {
		t.Fatalf("call while a call is held: %+v %v", res, err)
	}
	select {
	case err := <-held:
		t.Fatalf("the held call ended before its release: %v", err)
	default:
	}
	close(h.release)
	select {
	case err := <-held:
		if err != nil {
			t.Fatalf("held call: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the released call did not answer")
	}
}

// A call the client cancels is cancelled at the server, and the session goes on.
func TestJoinCancel(t *testing.T) {
	h := newHoldServer()
	cs, ctx := bridged(t, h.srv, nil)
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := cs.CallTool(cctx, &mcp.CallToolParams{Name: "hold"})
		errc <- err
	}()
	wait(t, h.entered, "the held call")
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
	wait(t, h.cancelled, "the server-side cancellation of the call")
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	defer pcancel()
	if err := cs.Ping(pctx, nil); err != nil {
		t.Fatalf("ping after a cancellation: %v", err)
	}
}

// What the server sends on its own (list_changed, logging) and during a call (progress) reaches the client.
func TestJoinServerNotifications(t *testing.T) {
	srv := mcp.NewServer(&mcp.Implementation{Name: "notifier", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "slow", Description: "reports progress"}, func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, echoOut, error) {
		tok := req.Params.GetProgressToken()
		for i := 1; i <= 3; i++ {
			if err := req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok, Progress: float64(i), Total: 3}); err != nil {
				return nil, echoOut{}, err
			}
		}
		return nil, echoOut{Echo: "done"}, nil
	})
	listChanged := make(chan struct{}, 100)
	logged := make(chan string, 100)
	var mu sync.Mutex
	var progress []float64
	cs, ctx := bridged(t, srv, &mcp.ClientOptions{
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) { listChanged <- struct{}{} },
		LoggingMessageHandler: func(_ context.Context, r *mcp.LoggingMessageRequest) {
			if s, ok := r.Params.Data.(string); ok {
				logged <- s
			}
		},
		ProgressNotificationHandler: func(_ context.Context, r *mcp.ProgressNotificationClientRequest) {
			mu.Lock()
			progress = append(progress, r.Params.Progress)
			mu.Unlock()
		},
	})

	params := &mcp.CallToolParams{Name: "slow"}
	params.SetProgressToken("p-1")
	if res, err := cs.CallTool(ctx, params); err != nil || res.IsError {
		t.Fatalf("slow: %+v %v", res, err)
	}
	// The client SDK hands notifications to their handlers apart from the responses, so the last progress may be
	// handled just after the call returns: wait for all three, in order.
	var got []float64
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		got = slices.Clone(progress)
		mu.Unlock()
		if len(got) >= 3 || time.Now().After(end) {
			break
		}
	}
	if !slices.Equal(got, []float64{1, 2, 3}) {
		t.Fatalf("progress %v, want 1 2 3", got)
	}

	// The standalone stream opens in the background once the session is initialised: a change made before it
	// is open is lost (the server has nowhere to send it), so change the tools until one change arrives.
	deadline := time.After(10 * time.Second)
	for i := 0; ; i++ {
		srv.AddTool(&mcp.Tool{Name: fmt.Sprintf("new-%d", i), InputSchema: map[string]any{"type": "object"}},
			func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
				return &mcp.CallToolResult{}, nil
			})
		select {
		case <-listChanged:
		case <-time.After(200 * time.Millisecond):
			continue
		case <-deadline:
			t.Fatal("no notifications/tools/list_changed reached the client")
		}
		break
	}
	tools, err := cs.ListTools(ctx, nil)
	if err != nil || len(tools.Tools) < 2 {
		t.Fatalf("tools after the change: %+v %v", tools, err)
	}

	if err := cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "info"}); err != nil {
		t.Fatal(err)
	}
	for ss := range srv.Sessions() {
		if err := ss.Log(context.Background(), &mcp.LoggingMessageParams{Level: "warning", Data: "disk almost full"}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case s := <-logged:
		if s != "disk almost full" {
			t.Fatalf("log message %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no logging message reached the client")
	}
}

func TestReadEvents(t *testing.T) {
	in := ": ok\n\nid: 1\ndata: {\"a\":\ndata: 1}\n\nevent: other\ndata: skipped\n\r\ndata: last\r\n\r\n"
	var got []string
	if err := readEvents(strings.NewReader(in), func(b []byte) error { got = append(got, string(b)); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"{\"a\":\n1}", "last"}; !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
}
