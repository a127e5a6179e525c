package main

import (
	"context"
	"io"
	"net/http"
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
	enroll := func(org, kind, name string) string { return c.enroll(admin, org, kind, name) }
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

	// 5. The gateway reported what it holds: the inventory lists its servers and pinned tools, and the posture
	// finds the dark server reachable without the gateway once an agent may dial it directly.
	inv := c.must("", "inventory", "--as", admin, "--json")
	for _, want := range []string{`"kind": "mcp"`, `"service": "mcp-files"`, `"name": "dark__catalogue_lookup"`, `"state": "approved"`, `"digest": "`} {
		if !strings.Contains(inv, want) {
			t.Fatalf("the inventory lacks %s:\n%s", want, inv)
		}
	}
	if out, _, err := c.run("", "posture", "--as", admin, "--json"); strings.Contains(out, "reachable-without-gateway") {
		t.Fatalf("posture (err %v) finds the dark server reachable while only the gateway may dial it:\n%s", err, out)
	}
	c.must("", "service", "grant", "--as", admin, "--service", "mcp-files", "--dial", intern)
	out, _, err := c.run("", "posture", "--as", admin)
	if err == nil || !strings.Contains(out, "reachable-without-gateway") || !strings.Contains(out, intern) {
		t.Fatalf("posture after the intern may dial the dark server: err=%v\n%s", err, out)
	}
}

// TestMCPGatewayLifecycle: the gateway refuses an identity that is not a gateway, says why when it cannot host
// its service or reach any backend, prints ready only once hosted with a backend serving (naming those it could
// not reach), holds its data directory against a second gateway (until it ends, however it ends), reports each
// backend to an administrator with `umbra mcp backends`, and serves Prometheus metrics on metrics_listen.
func TestMCPGatewayLifecycle(t *testing.T) {
	c := newCLI(t, 8*time.Minute)
	args, _ := devArgs(t, "data")
	c.start("umbra dev ready", args...)
	admin := "data/admin.json"
	enroll := func(org, kind, name string) string { return c.enroll(admin, org, kind, name) }
	gw := enroll("acme", "gateway", "mcpgw")
	ops := enroll("acme", "agent", "ops")
	analyst := enroll("acme", "agent", "analyst")
	metricsAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	writeConfig := func(name, startTimeout string, backends string) {
		config := "service: mcpgw\ndata: mcpgw-data\nstart_timeout: " + startTimeout + "\nmetrics_listen: " + metricsAddr +
			"\nadmins: [\"" + ops + "\"]\npolicies: |\n  @id(\"analyst-all\") permit (principal == Umbra::Identity::\"" + analyst +
			"\", action, resource);\nbackends:\n" + backends
		if err := os.WriteFile(filepath.Join(c.dir, name), []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	local := "  - name: local\n    trusted: true\n    stdio:\n      command: [\"" + c.bin + "\", \"mcp\", \"sample-server\", \"--name\", \"local\"]\n"
	broken := "  - name: broken\n    stdio:\n      command: [\"" + filepath.Join(c.dir, "no-such-mcp-server") + "\"]\n"
	writeConfig("mcpgw.yaml", "30s", local+broken)
	writeConfig("dead.yaml", "1s", broken)

	// fails runs a gateway that must fail without ever printing ready, and returns its error: the last line on
	// stderr, and the only one unless logs are expected before it.
	fails := func(as, config string, logs bool) string {
		t.Helper()
		out, errs, err := c.run("", "mcpgw", "--as", as, "--config", config)
		if err == nil || strings.Contains(out, "ready") {
			t.Fatalf("umbra mcpgw --as %s --config %s: err %v\nstdout: %s\nstderr: %s", as, config, err, out, errs)
		}
		lines := strings.Split(strings.TrimSpace(errs), "\n")
		if len(lines) != 1 && !logs {
			t.Fatalf("umbra mcpgw --as %s --config %s: want one line on stderr, got:\n%s", as, config, errs)
		}
		return lines[len(lines)-1]
	}

	// 1. An identity that is not of kind gateway is refused before anything starts.
	if msg := fails("analyst.json", "mcpgw.yaml", false); !strings.Contains(msg, `is not of kind "gateway"`) || !strings.Contains(msg, analyst) {
		t.Fatalf("non-gateway identity: %q", msg)
	}
	// 2. Without a Bind grant the gateway cannot host its service: it says so instead of printing ready.
	if msg := fails("mcpgw.json", "mcpgw.yaml", false); !strings.Contains(msg, "mcpgw") || !strings.Contains(msg, "host overlay service") {
		t.Fatalf("gateway without its service: %q", msg)
	}
	c.must("", "service", "grant", "--as", admin, "--service", "mcpgw", "--bind", gw, "--dial", analyst, "--dial", ops)
	// 3. No backend reachable: the failure is logged when it happens, then the error names each backend and why.
	if msg := fails("mcpgw.json", "dead.yaml", true); !strings.Contains(msg, "no backend available") ||
		!strings.Contains(msg, "broken (stdio)") || !strings.Contains(msg, "no such file or directory") {
		t.Fatalf("gateway without backends: %q", msg)
	}

	// 4. One backend serves, one does not: ready, naming the one missing.
	gateway := c.start("umbra mcpgw ready: serving 1 of 2 backends", "mcpgw", "--as", "mcpgw.json", "--config", "mcpgw.yaml")
	// stderr is copied to the test by another goroutine than stdout: give it a moment.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(gateway.errb.String(), "warning: backend broken (stdio) is not available"); {
		if time.Now().After(deadline) {
			t.Fatalf("the unavailable backend is not named on stderr:\n%s", gateway.errb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// 5. A second gateway on the same data directory fails at once, naming the directory and the holder.
	msg := fails("mcpgw.json", "mcpgw.yaml", false)
	if !strings.Contains(msg, "data directory mcpgw-data is in use") || !strings.Contains(msg, "pid "+strconv.Itoa(gateway.cmd.Process.Pid)) {
		t.Fatalf("second gateway on one data directory: %q", msg)
	}

	// 6. The administrator's view of the backends; others are refused it.
	out := c.must("", "mcp", "backends", "--as", "ops.json")
	rows := map[string][]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		rows[f[0]] = f
	}
	// NAME KIND STATE TOOLS PINNED QUARANTINED HELD LAST ERROR
	if r := rows["local"]; len(r) != 7 || r[1] != "stdio" || r[2] != "connected" || r[3] == "0" || r[4] != r[3] || r[5] != "0" || r[6] != "0" {
		t.Fatalf("local backend row %q in:\n%s", r, out)
	}
	if r := rows["broken"]; len(r) < 8 || r[1] != "stdio" || r[2] != "failed" || r[3] != "0" || !strings.Contains(out, "no such file or directory") {
		t.Fatalf("broken backend row %q in:\n%s", r, out)
	}
	if _, errs, err := c.run("", "mcp", "backends", "--as", "analyst.json"); err == nil || !strings.Contains(errs, "403") {
		t.Fatalf("a non-administrator read the backend states: %v %s", err, errs)
	}

	// 7. Prometheus metrics on metrics_listen, over plain HTTP on loopback.
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`umbra_mcpgw_backend_up{backend="local"} 1`, `umbra_mcpgw_backend_up{backend="broken"} 0`} {
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Fatalf("metrics %d lack %s:\n%s", resp.StatusCode, want, body)
		}
	}

	// 8. A gateway killed outright leaves no stale lock: the next one starts on the same directory.
	gateway.kill()
	c.start("umbra mcpgw ready: serving 1 of 2 backends", "mcpgw", "--as", "mcpgw.json", "--config", "mcpgw.yaml")
}
