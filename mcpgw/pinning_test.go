package mcpgw

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/mcpgw/pin"
	"github.com/umbra-mesh/umbra/mcpgw/scan"
)

func pendingVersions(t *testing.T, e *env) []ToolVersion {
	t.Helper()
	var out struct{ Versions []ToolVersion }
	if code := e.adminDo(t, adminID, "GET", "/admin/tool-versions", nil, &out); code != http.StatusOK {
		t.Fatalf("GET /admin/tool-versions: %d", code)
	}
	return out.Versions
}

func decideTool(t *testing.T, e *env, verb string, v ToolVersion, digest string) int {
	t.Helper()
	return e.adminDo(t, adminID, "POST", "/admin/tool-versions/"+verb,
		map[string]string{"backend": v.Backend, "tool": v.Tool, "digest": digest}, nil)
}

// Rug pull: a backend changes a tool after it was approved; the tool disappears (and the client is told)
// until an administrator approves the new version.
func TestRugPull(t *testing.T) {
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme})
	a := e.connect(t, alice)
	if !contains(a.toolNames(t), "notes__echo") {
		t.Fatal("echo not listed")
	}

	// The backend swaps the description; its own list_changed reaches the gateway.
	mcp.AddTool(srv, &mcp.Tool{Name: "echo", Description: "Returns the text it is given, now faster."},
		func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
			return nil, echoOut{Text: "v2:" + in.Text}, nil
		})
	waitSignal(t, a.toolsChange, "tools/list_changed after the rug pull")
	eventually(t, "echo hidden", func() bool { return !contains(a.toolNames(t), "notes__echo") })
	if _, err := a.call(t, "notes__echo", map[string]any{"text": "x"}); err == nil || !strings.Contains(err.Error(), "unknown tool") {
		t.Fatalf("quarantined tool callable: %v", err)
	}
	e.rec.find(t, "quarantine record", func(r audit.Record) bool {
		return r.Kind == KindToolQuarantined && dataOf(r)["tool"] == "notes__echo" && r.Decision == audit.DecisionDeny
	})

	vs := pendingVersions(t, e)
	if len(vs) != 1 || vs[0].Name != "notes__echo" || vs[0].State != pin.Quarantined || len(vs[0].Previous) == 0 ||
		!strings.Contains(string(vs[0].Definition), "now faster") {
		t.Fatalf("pending versions %+v", vs)
	}
	if code := e.adminDo(t, alice, "GET", "/admin/tool-versions", nil, nil); code != http.StatusForbidden {
		t.Fatalf("non-administrator listed tool versions: %d", code)
	}
	if code := decideTool(t, e, "approve", vs[0], vs[0].Approved); code != http.StatusConflict {
		t.Fatalf("approving a version that is not the one waiting: %d", code)
	}
	if code := e.adminDo(t, alice, "POST", "/admin/tool-versions/approve",
		map[string]string{"backend": "notes", "tool": "echo", "digest": vs[0].Digest}, nil); code != http.StatusForbidden {
		t.Fatalf("non-administrator approved: %d", code)
	}
	if code := decideTool(t, e, "approve", vs[0], vs[0].Digest); code != http.StatusOK {
		t.Fatalf("approve: %d", code)
	}
	eventually(t, "echo back after approval", func() bool { return contains(a.toolNames(t), "notes__echo") })
	res, err := a.call(t, "notes__echo", map[string]any{"text": "x"})
	if err != nil || !strings.Contains(text(res), "v2:x") {
		t.Fatalf("approved new version: %v %v", res, err)
	}
	e.rec.find(t, "approval record", func(r audit.Record) bool { return r.Kind == KindToolDecided && r.Actor == adminID })
}

// A poisoned description is flagged and held, even from a trusted backend; a denied version stays hidden.
func TestPoisonedDescriptionHeld(t *testing.T) {
	raw, err := os.ReadFile("testdata/scan/poisoned/important_tag.txt")
	if err != nil {
		t.Fatal(err)
	}
	_, poisoned, _ := strings.Cut(string(raw), "\n")
	srv, _ := newTestServer("notes")
	mcp.AddTool(srv, &mcp.Tool{Name: "add", Description: poisoned},
		func(ctx context.Context, req *mcp.CallToolRequest, in struct{ A, B int }) (*mcp.CallToolResult, any, error) {
			return nil, nil, nil
		})
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme})
	a := e.connect(t, alice)
	if got := a.toolNames(t); contains(got, "notes__add") || !contains(got, "notes__echo") {
		t.Fatalf("tools %v: want echo, not the poisoned add", got)
	}
	rec := e.rec.find(t, "pin record of the poisoned tool", func(r audit.Record) bool {
		return r.Kind == KindToolPinned && dataOf(r)["tool"] == "notes__add"
	})
	if !strings.Contains(string(rec.Data), string(scan.HiddenInstruction)) || rec.Decision == audit.DecisionAllow {
		t.Fatalf("pin record %s / %s", rec.Decision, rec.Data)
	}
	vs := pendingVersions(t, e)
	if len(vs) != 1 || vs[0].Name != "notes__add" || vs[0].State != pin.Pending || len(vs[0].Findings) == 0 {
		t.Fatalf("pending %+v", vs)
	}
	if code := decideTool(t, e, "deny", vs[0], vs[0].Digest); code != http.StatusOK {
		t.Fatalf("deny: %d", code)
	}
	if got := pendingVersions(t, e); len(got) != 0 {
		t.Fatalf("still pending after deny: %+v", got)
	}
	if _, err := a.call(t, "notes__add", map[string]any{"a": 1, "b": 2}); err == nil {
		t.Fatal("denied tool callable")
	}
}

// An untrusted backend's tools wait for an administrator before anyone sees them.
func TestUntrustedBackendWaits(t *testing.T) {
	srv, _ := newTestServer("ext")
	b, _ := inMemory("ext", srv, false)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme})
	a := e.connect(t, alice)
	if got := a.toolNames(t); len(got) != 0 {
		t.Fatalf("untrusted tools visible before approval: %v", got)
	}
	var echo ToolVersion
	for _, v := range pendingVersions(t, e) {
		if v.Name == "ext__echo" {
			echo = v
		}
	}
	if echo.Digest == "" || echo.State != pin.Pending {
		t.Fatalf("ext__echo not pending: %+v", echo)
	}
	if code := decideTool(t, e, "approve", echo, echo.Digest); code != http.StatusOK {
		t.Fatalf("approve: %d", code)
	}
	waitSignal(t, a.toolsChange, "tools/list_changed after approval")
	if got := a.toolNames(t); len(got) != 1 || got[0] != "ext__echo" {
		t.Fatalf("after approval: %v", got)
	}
}

// The gateway reports its servers, tools (pinned digest, pin state), limits and guardrails to the audit trail
// when it starts and again when a pin changes state, for the controller's posture.
func TestInventoryReport(t *testing.T) {
	srv, _ := newTestServer("ext")
	b, _ := inMemory("ext", srv, false)
	b.Kind, b.Service = "overlay", "ext-mcp"
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme, Service: "mcpgw"})
	report := func(state string) api.GatewayReport {
		t.Helper()
		var rep api.GatewayReport
		e.rec.find(t, "inventory report with ext__echo "+state, func(r audit.Record) bool {
			rep = api.GatewayReport{}
			return r.Kind == api.KindGatewayReportMCP && json.Unmarshal(r.Data, &rep) == nil &&
				slices.ContainsFunc(rep.Tools, func(tl api.GatewayTool) bool { return tl.Name == "ext__echo" && tl.State == state })
		})
		return rep
	}
	rep := report("pending")
	if rep.Service != "mcpgw" || len(rep.Servers) != 1 || rep.Servers[0] != (api.GatewayServer{Name: "ext", Kind: "overlay", Service: "ext-mcp"}) ||
		len(rep.Limits) == 0 || len(rep.Guardrails) == 0 {
		t.Fatalf("report %+v", rep)
	}
	var echo ToolVersion
	for _, v := range pendingVersions(t, e) {
		if v.Name == "ext__echo" {
			echo = v
		}
	}
	if code := decideTool(t, e, "approve", echo, echo.Digest); code != http.StatusOK {
		t.Fatalf("approve: %d", code)
	}
	rep = report("approved")
	for _, tl := range rep.Tools {
		if tl.Name == "ext__echo" && tl.Digest != echo.Digest {
			t.Fatalf("reported digest %s, approved %s", tl.Digest, echo.Digest)
		}
	}
}
