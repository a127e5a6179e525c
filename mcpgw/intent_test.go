package mcpgw

import (
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/internal/audit"
)

// A policy on the declared intent of a tool call (_meta["umbra/intent"]): writes must say why, one category is
// refused; the mcp.call record keeps the intent.
func TestIntentPolicyAndAudit(t *testing.T) {
	srv, ev := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme + `
@id("say-why") forbid (principal, action == Umbra::Action::"call_tool", resource)
when { !resource.read_only } unless { context has intent };
@id("no-exfiltration") forbid (principal, action, resource)
when { context has intent && context.intent.category == "exfiltration" };
`})
	c := e.connect(t, alice)
	call := func(name string, meta mcp.Meta) (*mcp.CallToolResult, error) {
		return c.cs.CallTool(ctxT(t), &mcp.CallToolParams{Name: name, Arguments: map[string]any{"text": "x"}, Meta: meta})
	}
	// A read needs no intent; a write without one is refused by say-why and never reaches the backend.
	if res, err := call("notes__echo", nil); err != nil || res.IsError {
		t.Fatalf("echo without intent: %v %v", res, err)
	}
	if _, err := call("notes__write", nil); rpcCode(err) != CodeNotAuthorized || !strings.Contains(err.Error(), "say-why") {
		t.Fatalf("write without intent: %v", err)
	}
	if ev.writes.Load() != 0 {
		t.Fatal("a refused write reached the backend")
	}
	intent := map[string]any{"purpose": "note the meeting's decisions", "category": "notes.meeting"}
	if res, err := call("notes__write", mcp.Meta{MetaIntent: intent}); err != nil || res.IsError {
		t.Fatalf("write with intent: %v %v", res, err)
	}
	rec := e.rec.find(t, "mcp.call with intent", func(r audit.Record) bool {
		return r.Kind == KindCall && dataOf(r)["tool"] == "notes__write"
	})
	if got, _ := dataOf(rec)["intent"].(map[string]any); got["purpose"] != intent["purpose"] || got["category"] != intent["category"] {
		t.Fatalf("mcp.call record intent %v, want %v", got, intent)
	}
	// The refused category, on a read as on a write, is refused and recorded with the intent and the policy.
	_, err := call("notes__echo", mcp.Meta{MetaIntent: map[string]any{"purpose": "copy everything", "category": "exfiltration"}})
	if rpcCode(err) != CodeNotAuthorized {
		t.Fatalf("exfiltration call: %v", err)
	}
	rec = e.rec.find(t, "mcp.denied with intent", func(r audit.Record) bool {
		got, _ := dataOf(r)["intent"].(map[string]any)
		return r.Kind == KindDenied && got["category"] == "exfiltration"
	})
	if !strings.Contains(string(rec.Diagnostic), "no-exfiltration") {
		t.Fatalf("denial diagnostic %s", rec.Diagnostic)
	}
	// A malformed declaration is invalid params, named as such.
	for _, bad := range []any{"just a string", map[string]any{"purpose": "a\nb"}, map[string]any{"purpose": "x", "category": "Bad"},
		map[string]any{"purpose": "x", "extra": 1}} {
		if _, err := call("notes__echo", mcp.Meta{MetaIntent: bad}); rpcCode(err) != jsonrpc.CodeInvalidParams || !strings.Contains(err.Error(), MetaIntent) {
			t.Errorf("intent %v: %v", bad, err)
		}
	}
	if n := ev.writes.Load(); n != 1 {
		t.Fatalf("%d writes reached the backend, want 1", n)
	}
}
