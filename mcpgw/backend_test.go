package mcpgw

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// A failing backend takes only its own tools away, and they come back when it does: for an in-memory backend
// whose connections are refused for a while, and for a stdio backend whose process dies.
func TestBackendFailureAndReconnect(t *testing.T) {
	srv, _ := newTestServer("a")
	ba, mem := inMemory("a", srv, true)
	e := start(t, Config{Backends: []Backend{ba, stdioBackend("b", true)}, Policies: allowAcme})
	c := e.connect(t, alice)
	names := c.toolNames(t)
	if !contains(names, "a__echo") || !contains(names, "b__echo") {
		t.Fatalf("tools %v", names)
	}
	echo := func(tool string) error {
		res, err := c.call(t, tool, map[string]any{"text": "x"})
		if err == nil && res.IsError {
			err = fmt.Errorf("%s", text(res))
		}
		return err
	}

	mem.setDown(true)
	waitSignal(t, c.toolsChange, "tools/list_changed when a goes down")
	eventually(t, "a's tools gone", func() bool { return !contains(c.toolNames(t), "a__echo") })
	if err := echo("a__echo"); err == nil || !strings.Contains(err.Error(), "unknown tool") {
		t.Fatalf("a__echo while a is down: %v", err)
	}
	if err := echo("b__echo"); err != nil {
		t.Fatalf("b__echo while a is down: %v", err)
	}
	var st struct{ Backends []BackendStatus }
	e.adminDo(t, adminID, "GET", "/admin/backends", nil, &st)
	if len(st.Backends) != 2 || st.Backends[0].Up || st.Backends[0].LastError == "" || !st.Backends[1].Up {
		t.Fatalf("backend status %+v", st.Backends)
	}

	mem.setDown(false)
	eventually(t, "a's tools back", func() bool { return contains(c.toolNames(t), "a__echo") })
	if err := echo("a__echo"); err != nil {
		t.Fatalf("a__echo after reconnect: %v", err)
	}

	// The stdio server's process ends in the middle of a call.
	res, err := c.call(t, "b__crash", map[string]any{})
	if err == nil && !res.IsError {
		t.Fatalf("crash call succeeded: %+v", res)
	}
	eventually(t, "b's process restarted and its tools back", func() bool { return echo("b__echo") == nil })
	if err := echo("a__echo"); err != nil {
		t.Fatalf("a__echo after b crashed: %v", err)
	}
}

// A backend spawned per client keeps one session per client session; a shared one is shared.
func TestSpawnPerClient(t *testing.T) {
	var servers atomic.Int32
	newCounter := func(ctx context.Context) (mcp.Transport, error) {
		servers.Add(1)
		srv := mcp.NewServer(&mcp.Implementation{Name: "counter"}, nil)
		var n atomic.Int32
		mcp.AddTool(srv, &mcp.Tool{Name: "incr", Description: "Counts calls in this session."},
			func(ctx context.Context, req *mcp.CallToolRequest, in struct{}) (*mcp.CallToolResult, any, error) {
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprint(n.Add(1))}}}, nil, nil
			})
		st, ct := mcp.NewInMemoryTransports()
		if _, err := srv.Connect(ctx, st, nil); err != nil {
			return nil, err
		}
		return ct, nil
	}
	e := start(t, Config{Backends: []Backend{
		{Name: "perclient", Trusted: true, Spawn: SpawnPerClient, Connect: newCounter},
		{Name: "shared", Trusted: true, Connect: newCounter},
	}, Policies: allowAcme})
	c1, c2 := e.connect(t, alice), e.connect(t, bob)
	count := func(c *client, tool string) string {
		res, err := c.call(t, tool, map[string]any{})
		if err != nil {
			t.Fatal(err)
		}
		return text(res)
	}
	got := []string{count(c1, "perclient__incr"), count(c1, "perclient__incr"), count(c2, "perclient__incr"), count(c2, "perclient__incr")}
	if strings.Join(got, ",") != "1,2,1,2" {
		t.Fatalf("per-client counts %v, want 1,2,1,2", got)
	}
	got = []string{count(c1, "shared__incr"), count(c2, "shared__incr")}
	if strings.Join(got, ",") != "1,2" {
		t.Fatalf("shared counts %v, want 1,2", got)
	}
	var st struct{ Backends []BackendStatus }
	if code := e.adminDo(t, adminID, "GET", "/admin/backends", nil, &st); code != http.StatusOK || st.Backends[0].ClientSessions != 2 {
		t.Fatalf("backend status %d %+v", code, st.Backends)
	}
	if n := servers.Load(); n != 4 { // two listing sessions, two per-client sessions
		t.Fatalf("%d backend sessions opened, want 4", n)
	}
	c1.cs.Close()
	eventually(t, "the closed client's backend session closed", func() bool {
		bs, err := e.g.Backends(context.Background())
		return err == nil && bs[0].ClientSessions == 1
	})
}
