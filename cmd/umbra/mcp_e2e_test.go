package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// childPIDs lists the direct children of pid (each thread keeps its own list).
func childPIDs(t *testing.T, pid int) []int {
	t.Helper()
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
	var out []int
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			out = append(out, n)
		}
	}
	return out
}

// TestMCPOverOverlay: an official MCP SDK client, through `umbra mcp connect` and through agentsdk, lists and
// calls tools of a stdio backend and of a dark MCP server on the overlay, behind the MCP gateway; two identities
// see different tools; no MCP process involved listens on any socket.
func TestMCPOverOverlay(t *testing.T) {
	c := newCLI(t, 5*time.Minute)
	args, _ := devArgs(t, "data")
	c.start("umbra dev ready", args...)
	admin := "data/admin.json"
	td := "spiffe://umbra.local/"
	enroll := func(org, kind, name string) string {
		tok := c.must("", "identity", "create", "--as", admin, "--org", org, "--kind", kind, "--name", name)
		if err := os.WriteFile(filepath.Join(c.dir, name+".token"), []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		c.must("", "enroll", "--token", name+".token", "--out", name+".json")
		return td + org + "/" + kind + "/" + name
	}
	gw := enroll("acme", "gateway", "mcpgw")
	files := enroll("acme", "mcp", "files")
	analyst := enroll("acme", "agent", "analyst")
	intern := enroll("acme", "agent", "intern")
	c.must("", "service", "grant", "--as", admin, "--service", "mcpgw", "--bind", gw, "--dial", analyst, "--dial", intern)
	c.must("", "service", "grant", "--as", admin, "--service", "mcp-files", "--bind", files, "--dial", gw)

	serve := c.start("serving MCP server", "mcp", "serve", "--as", "files.json", "--service", "mcp-files", "--",
		c.bin, "mcp", "sample-server", "--name", "dark-files")
	config := `service: mcpgw
data: mcpgw-data
policies: |
  @id("analyst-all") permit (principal == Umbra::Identity::"` + analyst + `", action, resource);
  @id("intern-local-echo") permit (principal == Umbra::Identity::"` + intern + `",
    action in [Umbra::Action::"list_tool", Umbra::Action::"call_tool"], resource == Umbra::Tool::"local__echo");
backends:
  - name: local
    trusted: true
    stdio:
      command: ["` + c.bin + `", "mcp", "sample-server", "--name", "local"]
  - name: dark
    trusted: true
    overlay:
      service: mcp-files
`
	if err := os.WriteFile(filepath.Join(c.dir, "mcpgw.yaml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	gateway := c.start("umbra mcpgw ready", "mcpgw", "--as", "mcpgw.json", "--config", "mcpgw.yaml")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	impl := &mcp.Implementation{Name: "e2e", Version: "1"}

	// 1. Through `umbra mcp connect`, as a desktop client would run it.
	connect := exec.Command(c.bin, "mcp", "connect", "--as", "analyst.json")
	connect.Dir = c.dir
	cs, err := mcp.NewClient(impl, nil).Connect(ctx, &mcp.CommandTransport{Command: connect}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		tools, err := cs.ListTools(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		names = names[:0]
		for _, tl := range tools.Tools {
			names = append(names, tl.Name)
		}
		// The dark backend is reached through the overlay; give it a moment to connect.
		if slices.Contains(names, "dark__catalogue_lookup") || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, want := range []string{"local__echo", "local__word_count", "dark__catalogue_lookup", "dark__echo"} {
		if !slices.Contains(names, want) {
			t.Fatalf("analyst's tools %v lack %s", names, want)
		}
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "dark__catalogue_lookup", Arguments: map[string]any{"sku": "w-1"}})
	if err != nil || res.IsError {
		t.Fatalf("dark call: %+v %v", res, err)
	}
	if got := res.StructuredContent.(map[string]any)["name"]; got != "widget" {
		t.Fatalf("dark call returned %v", res.StructuredContent)
	}
	res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "local__word_count", Arguments: map[string]any{"text": "one two three"}})
	if err != nil || res.IsError || res.StructuredContent.(map[string]any)["words"] != float64(3) {
		t.Fatalf("stdio call: %+v %v", res, err)
	}

	// 2. Through agentsdk, from this process: the intern sees only what its policy grants.
	intAgent := connectFile(t, filepath.Join(c.dir, "intern.json"))
	is, err := intAgent.MCPSession(ctx, "mcpgw")
	if err != nil {
		t.Fatal(err)
	}
	defer is.Close()
	tools, err := is.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(tools.Tools) != 1 || tools.Tools[0].Name != "local__echo" {
		t.Fatalf("intern's tools: %d, want only local__echo", len(tools.Tools))
	}
	if res, err := is.CallTool(ctx, &mcp.CallToolParams{Name: "local__echo", Arguments: map[string]any{"text": "hi"}}); err != nil || res.IsError {
		t.Fatalf("intern echo: %+v %v", res, err)
	}
	if _, err := is.CallTool(ctx, &mcp.CallToolParams{Name: "dark__catalogue_lookup", Arguments: map[string]any{"sku": "w-1"}}); err == nil {
		t.Fatal("the intern called a tool it may not see")
	}
	if out := c.must("", "mcp", "tools", "--as", "intern.json"); strings.TrimSpace(out) == "" || strings.Contains(out, "dark__") {
		t.Fatalf("mcp tools for the intern: %q", out)
	}

	// 3. Every MCP process involved is dark: the gateway, the dark server host, and their MCP children.
	procs := []int{gateway.cmd.Process.Pid, serve.cmd.Process.Pid}
	procs = append(procs, childPIDs(t, gateway.cmd.Process.Pid)...)
	procs = append(procs, childPIDs(t, serve.cmd.Process.Pid)...)
	procs = append(procs, connect.Process.Pid)
	if len(procs) < 4 {
		t.Fatalf("expected the MCP child processes too, found %v", procs)
	}
	for _, pid := range procs {
		if n := listeningSockets(t, pid); n != 0 {
			t.Fatalf("process %d owns %d listening sockets", pid, n)
		}
	}
	cs.Close()

	// 4. The calls are in the shared audit trail.
	export := c.must("", "audit", "export", "--as", admin)
	if !strings.Contains(export, `"kind":"mcp.call"`) || !strings.Contains(export, analyst) {
		t.Fatal("MCP calls are missing from the audit export")
	}
	if out := c.must("", "audit", "verify", "--as", admin); !strings.Contains(out, "verified") {
		t.Fatal(out)
	}
}
