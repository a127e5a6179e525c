package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// bankBackend is a streamable HTTP MCP server on loopback, in the test process, so that the test sees what the
// gateway makes it do: transfer has a side effect the test counts, slow reports progress and stops when its call
// is cancelled.
type bankBackend struct {
	srv       *mcp.Server
	url       string
	transfers atomic.Int64
	cancelled chan struct{}
}

func newBankBackend(t *testing.T) *bankBackend {
	t.Helper()
	b := &bankBackend{srv: mcp.NewServer(&mcp.Implementation{Name: "bank", Version: "1"}, nil), cancelled: make(chan struct{}, 4)}
	type amount struct {
		EUR int `json:"eur"`
	}
	type out struct {
		Done string `json:"done"`
	}
	mcp.AddTool(b.srv, &mcp.Tool{Name: "transfer", Description: "Transfers money."}, func(ctx context.Context, _ *mcp.CallToolRequest, in amount) (*mcp.CallToolResult, out, error) {
		b.transfers.Add(1)
		return nil, out{Done: "transferred"}, nil
	})
	mcp.AddTool(b.srv, &mcp.Tool{Name: "balance", Description: "Tells the balance."}, func(ctx context.Context, _ *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, out, error) {
		return nil, out{Done: "100 EUR"}, nil
	})
	mcp.AddTool(b.srv, &mcp.Tool{Name: "reconcile", Description: "Reconciles the accounts in steps, reporting progress."}, func(ctx context.Context, req *mcp.CallToolRequest, in struct {
		Steps int `json:"steps"`
	}) (*mcp.CallToolResult, out, error) {
		for i := range in.Steps {
			if tok := req.Params.GetProgressToken(); tok != nil {
				_ = req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok, Progress: float64(i + 1), Total: float64(in.Steps)})
			}
			select {
			case <-ctx.Done():
				b.cancelled <- struct{}{}
				return nil, out{}, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		return nil, out{Done: "reconciled"}, nil
	})
	hs := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return b.srv }, nil))
	t.Cleanup(hs.Close)
	b.url = hs.URL
	return b
}

// TestMCPConnectConcurrentCancelNotify: an official MCP client through `umbra mcp connect` and the gateway gets
// answers while a call waits for approval, cancels a held call end to end (a later approval is refused and the
// backend never runs it; the audit says cancelled), cancels a running call at the backend, and receives the
// gateway's progress and tools/list_changed notifications.
func TestMCPConnectConcurrentCancelNotify(t *testing.T) {
	c := newCLI(t, 6*time.Minute)
	args, _ := devArgs(t, "data")
	c.start("umbra dev ready", args...)
	admin := "data/admin.json"
	enroll := func(org, kind, name string) string { return c.enroll(admin, org, kind, name) }
	gw := enroll("acme", "gateway", "mcpgw")
	ops := enroll("acme", "agent", "ops")
	analyst := enroll("acme", "agent", "analyst")
	c.must("", "service", "grant", "--as", admin, "--service", "mcpgw", "--bind", gw, "--dial", analyst, "--dial", ops)
	bank := newBankBackend(t)
	config := `service: mcpgw
data: mcpgw-data
admins: ["` + ops + `"]
sensitive: ["bank__transfer"]
policies: |
  @id("analyst-all") permit (principal == Umbra::Identity::"` + analyst + `", action, resource);
backends:
  - name: bank
    trusted: true
    http:
      url: "` + bank.url + `"
`
	if err := os.WriteFile(filepath.Join(c.dir, "mcpgw.yaml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	c.start("umbra mcpgw ready", "mcpgw", "--as", "mcpgw.json", "--config", "mcpgw.yaml")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	listChanged := make(chan struct{}, 16)
	var mu sync.Mutex
	var progress []float64
	connect := exec.Command(c.bin, "mcp", "connect", "--as", "analyst.json")
	connect.Dir = c.dir
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "1"}, &mcp.ClientOptions{
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {
			select {
			case listChanged <- struct{}{}:
			default:
			}
		},
		ProgressNotificationHandler: func(_ context.Context, r *mcp.ProgressNotificationClientRequest) {
			mu.Lock()
			progress = append(progress, r.Params.Progress)
			mu.Unlock()
		},
	}).Connect(ctx, &mcp.CommandTransport{Command: connect}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	defer func() { _ = connect.Process.Kill() }()
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(tools.Tools, func(tl *mcp.Tool) bool { return tl.Name == "bank__transfer" }) {
		t.Fatalf("tools %+v lack bank__transfer", tools.Tools)
	}

	// 1. A sensitive call waits for approval; meanwhile ping and another call are answered.
	held, cancelHeld := context.WithCancel(ctx)
	heldErr := make(chan error, 1)
	go func() {
		_, err := cs.CallTool(held, &mcp.CallToolParams{Name: "bank__transfer", Arguments: map[string]any{"eur": 10}})
		heldErr <- err
	}()
	id := pendingApproval(t, c)
	pctx, pcancel := context.WithTimeout(ctx, 20*time.Second)
	if err := cs.Ping(pctx, nil); err != nil {
		t.Fatalf("ping while a call waits for approval: %v", err)
	}
	res, err := cs.CallTool(pctx, &mcp.CallToolParams{Name: "bank__balance"})
	pcancel()
	if err != nil || res.IsError {
		t.Fatalf("a call while another waits for approval: %+v %v", res, err)
	}

	// 2. The held call is cancelled: its request is withdrawn, a later approval is refused, nothing runs.
	cancelHeld()
	if err := <-heldErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
	approveWithdrawn(t, c, id)
	time.Sleep(500 * time.Millisecond)
	if n := bank.transfers.Load(); n != 0 {
		t.Fatalf("the backend ran %d transfers for a cancelled call", n)
	}

	// 3. Progress of a long call reaches the client; a running call that is cancelled stops at the backend.
	params := &mcp.CallToolParams{Name: "bank__reconcile", Arguments: map[string]any{"steps": 3}}
	params.SetProgressToken("rec-1")
	if res, err := cs.CallTool(ctx, params); err != nil || res.IsError {
		t.Fatalf("reconcile: %+v %v", res, err)
	}
	mu.Lock()
	got := slices.Clone(progress)
	mu.Unlock()
	if !slices.Equal(got, []float64{1, 2, 3}) {
		t.Fatalf("progress %v, want 1 2 3", got)
	}
	running, cancelRunning := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		_, err := cs.CallTool(running, &mcp.CallToolParams{Name: "bank__reconcile", Arguments: map[string]any{"steps": 600}})
		runErr <- err
	}()
	time.Sleep(time.Second)
	cancelRunning()
	<-runErr
	select {
	case <-bank.cancelled:
	case <-time.After(30 * time.Second):
		t.Fatal("the backend's call was not cancelled")
	}

	// 4. A tool added at the backend is announced to the client.
	bank.srv.AddTool(&mcp.Tool{Name: "statement", Description: "Prints a statement.", InputSchema: map[string]any{"type": "object"}},
		func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "statement"}}}, nil
		})
	select {
	case <-listChanged:
	case <-time.After(60 * time.Second):
		t.Fatal("no notifications/tools/list_changed reached the client")
	}
	tools, err = cs.ListTools(ctx, nil)
	if err != nil || !slices.ContainsFunc(tools.Tools, func(tl *mcp.Tool) bool { return tl.Name == "bank__statement" }) {
		t.Fatalf("tools after the change: %v", err)
	}

	// 5. A held call whose client goes away (the bridge killed outright) is withdrawn too.
	go func() {
		_, _ = cs.CallTool(ctx, &mcp.CallToolParams{Name: "bank__transfer", Arguments: map[string]any{"eur": 20}})
	}()
	id2 := pendingApproval(t, c)
	if err := connect.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	approveWithdrawn(t, c, id2)
	time.Sleep(500 * time.Millisecond)
	if n := bank.transfers.Load(); n != 0 {
		t.Fatalf("the backend ran %d transfers for calls whose client went away", n)
	}

	// 6. The audit trail says both calls were cancelled.
	export := c.must("", "audit", "export", "--as", admin)
	for _, want := range []string{id, id2} {
		found := false
		for _, line := range strings.Split(export, "\n") {
			if strings.Contains(line, want) && strings.Contains(line, "cancelled") {
				found = true
			}
		}
		if !found {
			t.Fatalf("no audit record says approval %s was cancelled", want)
		}
	}
}

// approveWithdrawn tries to approve request id, which must be refused as withdrawn (once the cancellation has
// reached the gateway).
func approveWithdrawn(t *testing.T, c *cli, id string) {
	t.Helper()
	var errs string
	for deadline := time.Now().Add(30 * time.Second); ; {
		var err error
		_, errs, err = c.run("", "mcp", "approvals", "approve", id, "--as", "ops.json")
		if err == nil {
			t.Fatalf("the approval request %s of a cancelled call was approved", id)
		}
		if strings.Contains(errs, "withdrawn") || time.Now().After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond) // the cancellation may still be on its way
	}
	if !strings.Contains(errs, "withdrawn") {
		t.Fatalf("approving the cancelled call: %s", errs)
	}
}

// pendingApproval waits for exactly one pending approval request and returns its ID.
func pendingApproval(t *testing.T, c *cli) string {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		var out struct {
			Approvals []struct {
				ID     string `json:"id"`
				Status string `json:"status"`
			} `json:"approvals"`
		}
		if err := json.Unmarshal([]byte(c.must("", "mcp", "approvals", "list", "--as", "ops.json")), &out); err != nil {
			t.Fatal(err)
		}
		if len(out.Approvals) == 1 {
			return out.Approvals[0].ID
		}
	}
	t.Fatal("no pending approval request")
	return ""
}
