package mcpgw

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/internal/audit"
)

const identityPolicies = `
@id("read-only-for-acme")
permit (principal in Umbra::Org::"acme", action in [Umbra::Action::"list_tool", Umbra::Action::"call_tool"], resource in Umbra::Backend::"notes")
when { resource.read_only };

@id("writers")
permit (principal in Umbra::Workgroup::"acme/writers", action, resource in Umbra::Backend::"notes");

@id("no-secrets")
forbid (principal, action == Umbra::Action::"call_tool", resource == Umbra::Tool::"notes__echo")
when { context.arguments has text && context.arguments.text like "*secret*" };
`

// Two identities with different policies see different tools; what one may not use does not exist for it; a
// caller with no grant at all is refused explicitly; every refusal is recorded with the policy diagnostic.
func TestIdentityFiltering(t *testing.T) {
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{
		Backends:  []Backend{b},
		Policies:  identityPolicies,
		Directory: directory{bob: {Org: "acme", Workgroups: []string{"acme/writers"}}},
	})
	a := e.connect(t, alice)
	bb := e.connect(t, bob)

	aliceTools, bobTools := a.toolNames(t), bb.toolNames(t)
	if len(aliceTools) != 1 || aliceTools[0] != "notes__echo" {
		t.Fatalf("alice sees %v, want only the read-only tool", aliceTools)
	}
	if !contains(bobTools, "notes__write") || !contains(bobTools, "notes__echo") || len(bobTools) != 6 {
		t.Fatalf("bob sees %v, want every tool", bobTools)
	}

	// alice is refused the write tool exactly as a tool that does not exist.
	_, errHidden := a.call(t, "notes__write", map[string]any{"text": "x"})
	_, errMissing := a.call(t, "notes__nosuchtool", map[string]any{"text": "x"})
	if rpcCode(errHidden) != jsonrpc.CodeInvalidParams || rpcCode(errMissing) != jsonrpc.CodeInvalidParams {
		t.Fatalf("hidden: %v; missing: %v", errHidden, errMissing)
	}
	if got, want := strings.ReplaceAll(errHidden.Error(), "notes__write", "X"), strings.ReplaceAll(errMissing.Error(), "notes__nosuchtool", "X"); got != want {
		t.Fatalf("a hidden tool can be told from a missing one:\n%s\n%s", got, want)
	}
	if res, err := bb.call(t, "notes__write", map[string]any{"text": "x"}); err != nil || text(res) != "wrote x" {
		t.Fatalf("bob write: %v %v", res, err)
	}
	rec := e.rec.find(t, "alice's refusal", func(r audit.Record) bool {
		return r.Kind == KindDenied && r.Actor == alice && dataOf(r)["tool"] == "notes__write"
	})
	if r := string(rec.Diagnostic); !strings.Contains(r, "no policy permits call_tool") && !strings.Contains(r, "no policy permits list_tool") {
		t.Errorf("refusal lacks the policy diagnostic: %s", r)
	}
	if rec.PolicyVersion == "" || rec.Decision != audit.DecisionDeny {
		t.Errorf("refusal record %+v", rec)
	}

	// Policies look at arguments.
	if _, err := a.call(t, "notes__echo", map[string]any{"text": "top secret plan"}); rpcCode(err) != CodeNotAuthorized {
		t.Fatalf("argument forbid: %v", err)
	}
	rec = e.rec.find(t, "argument refusal", func(r audit.Record) bool {
		return r.Kind == KindDenied && strings.Contains(string(r.Diagnostic), "no-secrets")
	})
	if dataOf(rec)["args_digest"] == nil || dataOf(rec)["args"] != nil {
		t.Errorf("refusal should carry the argument digest only: %s", rec.Data)
	}
	if res, err := a.call(t, "notes__echo", map[string]any{"text": "harmless"}); err != nil || res.IsError {
		t.Fatalf("alice echo: %v %v", res, err)
	}

	// No grant at all: an explicit refusal, not an empty list.
	m := e.connect(t, mallory)
	for name, f := range map[string]func() error{
		"tools/list":     func() error { _, err := m.cs.ListTools(ctxT(t), nil); return err },
		"tools/call":     func() error { _, err := m.call(t, "notes__echo", map[string]any{"text": "x"}); return err },
		"resources/list": func() error { _, err := m.cs.ListResources(ctxT(t), nil); return err },
		"prompts/get": func() error {
			_, err := m.cs.GetPrompt(ctxT(t), &mcp.GetPromptParams{Name: "notes__greet"})
			return err
		},
	} {
		if err := f(); rpcCode(err) != CodeNotAuthorized || !strings.Contains(err.Error(), "not authorised") {
			t.Errorf("%s for a caller without grant: %v", name, err)
		}
	}
	e.rec.find(t, "no-grant refusal", func(r audit.Record) bool { return r.Kind == KindDenied && r.Actor == mallory })
	if code := e.adminDo(t, mallory, "GET", "/admin/tools", nil, nil); code != http.StatusForbidden {
		t.Errorf("GET /admin/tools without grant: %d", code)
	}
	var seen struct{ Tools []*mcp.Tool }
	if code := e.adminDo(t, alice, "GET", "/admin/tools", nil, &seen); code != http.StatusOK || len(seen.Tools) != 1 {
		t.Errorf("GET /admin/tools as alice: %d %v", code, seen.Tools)
	}
}

// A session belongs to the identity that opened it.
func TestSessionBoundToIdentity(t *testing.T) {
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme})
	a := e.connect(t, alice)
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
	for _, id := range []string{bob, mallory} {
		req, _ := http.NewRequestWithContext(context.Background(), "POST", e.url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Mcp-Session-Id", a.cs.ID())
		resp, err := httpClient(id).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s used alice's session: status %d", id, resp.StatusCode)
		}
	}
	req, _ := http.NewRequestWithContext(context.Background(), "POST", e.url, bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req) // no identity at all
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("request without identity: %d", resp.StatusCode)
	}
}

// Policies can be replaced at run time; callers' views follow, and they are told.
func TestSetPolicies(t *testing.T) {
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme})
	a := e.connect(t, alice)
	if n := len(a.toolNames(t)); n != 6 {
		t.Fatalf("alice sees %d tools", n)
	}
	if err := e.g.SetPolicies(context.Background(), `permit (principal, action, resource == Umbra::Tool::"notes__echo");`, mustID(adminID)); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, a.toolsChange, "tools/list_changed after a policy change")
	if got := a.toolNames(t); len(got) != 1 || got[0] != "notes__echo" {
		t.Fatalf("after the change alice sees %v", got)
	}
	e.rec.find(t, "policy change", func(r audit.Record) bool { return r.Kind == KindPolicyChanged && r.Actor == adminID })
	if err := e.g.SetPolicies(context.Background(), `permit (`, mustID(adminID)); err == nil {
		t.Fatal("invalid policies accepted")
	}
}
