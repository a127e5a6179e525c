package policy

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const text = `
@id("acme-files")
permit (principal in Umbra::Org::"acme", action, resource in Umbra::Backend::"files");

@id("no-big-reads")
forbid (principal, action == Umbra::Action::"call_tool", resource == Umbra::Tool::"files__read")
when { context.arguments has size && context.arguments.size > 1000 };

@id("no-etc")
forbid (principal, action == Umbra::Action::"call_tool", resource in Umbra::Backend::"files")
when { context.arguments has path && context.arguments.path like "/etc/*" };

@id("finance-pay")
@sensitive
permit (principal in Umbra::Workgroup::"acme/finance", action, resource == Umbra::Tool::"bank__pay");

@id("readonly-web")
permit (principal, action in [Umbra::Action::"list_tool", Umbra::Action::"call_tool"], resource in Umbra::Backend::"web")
when { resource.read_only && principal.trust_domain == "acme.test" };

@id("broken")
permit (principal, action, resource == Umbra::Tool::"web__broken") when { context.nope };
`

func id(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

var (
	alice   = Principal{ID: id("spiffe://acme.test/acme/user/alice"), Org: "acme"}
	bob     = Principal{ID: id("spiffe://acme.test/acme/user/bob"), Org: "acme", Workgroups: []string{"acme/finance"}}
	mallory = Principal{ID: id("spiffe://evil.test/evil/user/mallory"), Org: "evil"}
)

func tool(backend, name string) Item {
	return Item{Kind: Tool, Name: backend + "__" + name, Backend: backend, Original: name}
}

func TestDecide(t *testing.T) {
	e, err := Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	ro := tool("web", "search")
	ro.ReadOnly = true
	configured := tool("files", "delete")
	configured.Sensitive = true
	tests := []struct {
		name          string
		p             Principal
		action        Action
		item          Item
		args          string
		allow, sens   bool
		policy, error string
	}{
		{"org member lists files tool", alice, ListTool, tool("files", "read"), "", true, false, "acme-files", ""},
		{"org member calls with small size", alice, CallTool, tool("files", "read"), `{"size":10,"path":"/tmp/x"}`, true, false, "acme-files", ""},
		{"argument forbids", alice, CallTool, tool("files", "read"), `{"size":5000}`, false, false, "no-big-reads", ""},
		{"argument pattern forbids", alice, CallTool, tool("files", "write"), `{"path":"/etc/passwd"}`, false, false, "no-etc", ""},
		{"list ignores argument forbids", alice, ListTool, tool("files", "read"), "", true, false, "acme-files", ""},
		{"other org sees nothing", mallory, ListTool, tool("files", "read"), "", false, false, "", ""},
		{"workgroup member pays, sensitive", bob, CallTool, tool("bank", "pay"), `{"amount":12.5}`, true, true, "finance-pay", ""},
		{"non-member cannot pay", alice, ListTool, tool("bank", "pay"), "", false, false, "", ""},
		{"read-only hint", alice, CallTool, ro, `{}`, true, false, "readonly-web", ""},
		{"not read-only", alice, ListTool, tool("web", "post"), "", false, false, "", ""},
		{"configured sensitive", alice, CallTool, configured, `{}`, true, true, "acme-files", ""},
		{"evaluation error fails closed", alice, ListTool, tool("web", "broken"), "", false, false, "", "broken"},
		{"prompt", alice, GetPrompt, Item{Kind: Prompt, Name: "files__summarise", Backend: "files"}, `{"style":"short"}`, true, false, "acme-files", ""},
		{"resource", alice, ReadResource, Item{Kind: Resource, Name: "files+file:///a", Backend: "files", Original: "file:///a"}, "", true, false, "acme-files", ""},
		{"action does not fit item", alice, CallTool, Item{Kind: Prompt, Name: "files__x", Backend: "files"}, "", false, false, "", "does not apply"},
		{"arguments not an object", alice, CallTool, tool("files", "read"), `[1]`, false, false, "", "not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := e.Decide(Request{Principal: tt.p, Action: tt.action, Item: tt.item, Arguments: json.RawMessage(tt.args)})
			if d.Allow != tt.allow || d.Sensitive != tt.sens {
				t.Fatalf("allow=%v sensitive=%v, want %v %v; %+v", d.Allow, d.Sensitive, tt.allow, tt.sens, d.Diagnostic)
			}
			if tt.policy != "" && (len(d.Diagnostic.Policies) == 0 || d.Diagnostic.Policies[0] != tt.policy) {
				t.Fatalf("policies %v, want %s", d.Diagnostic.Policies, tt.policy)
			}
			if tt.error != "" && !strings.Contains(strings.Join(d.Diagnostic.Errors, " "), tt.error) {
				t.Fatalf("errors %v, want one mentioning %q", d.Diagnostic.Errors, tt.error)
			}
			if len(d.Diagnostic.Reasons) == 0 || d.Diagnostic.Version != e.Version() {
				t.Fatalf("diagnostic lacks reasons or version: %+v", d.Diagnostic)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for name, bad := range map[string]string{
		"syntax":              `permit (principal, action, resource`,
		"duplicate id":        `@id("a") permit (principal, action, resource); @id("a") forbid (principal, action, resource);`,
		"sensitive on forbid": `@sensitive forbid (principal, action, resource);`,
	} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	a, _ := Parse(`permit (principal, action, resource);`)
	b, _ := Parse(`permit (principal, action, resource) when { true };`)
	if a.Version() == b.Version() {
		t.Error("different texts, same version")
	}
	empty, err := Parse("")
	if err != nil {
		t.Fatal(err)
	}
	if d := empty.Decide(Request{Principal: alice, Action: ListTool, Item: tool("files", "read")}); d.Allow {
		t.Error("empty policy text allowed")
	}
	var none *Engine
	if d := none.Decide(Request{Principal: alice, Action: ListTool, Item: tool("files", "read")}); d.Allow {
		t.Error("nil engine allowed")
	}
}

func FuzzArguments(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":[1,2.5,"x",null,{"b":true}]}`, `{"n":1e400}`, `{"big":123456789012345678901234567890}`, `[]`, `null`} {
		f.Add([]byte(s))
	}
	e, err := Parse(text)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := Arguments(b)
		if err != nil {
			return
		}
		if !json.Valid(b) {
			t.Fatalf("invalid JSON %q accepted", b)
		}
		_ = rec
		// Deciding on any accepted arguments must not panic, and must not allow what the policies forbid.
		d := e.Decide(Request{Principal: mallory, Action: CallTool, Item: tool("files", "read"), Arguments: b})
		if d.Allow {
			t.Fatalf("mallory allowed with %s", b)
		}
	})
}
