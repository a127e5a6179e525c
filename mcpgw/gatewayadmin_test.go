package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/mcpgw/approval"
	"github.com/umbra-mesh/umbra/mcpgw/pin"
)

// Identities of the gateway administration tests: acme runs the gateway, globex is named in its admin_orgs,
// hooli is not named at all, and initech's ops identity is named in its admins.
const (
	gwAcme      = "spiffe://acme.test/acme/gateway/mcpgw"
	acmeAdmin   = "spiffe://acme.test/acme/admin/admin"
	globexAdmin = "spiffe://acme.test/globex/admin/admin"
	gina        = "spiffe://acme.test/globex/agent/gina"
	hooliAdmin  = "spiffe://acme.test/hooli/admin/admin"
	platform    = "spiffe://acme.test/umbra/admin/root"
	initechOps  = "spiffe://acme.test/initech/user/ops"
)

func adminTestDirectory() directory {
	return directory{
		alice:       {Org: "acme"},
		acmeAdmin:   {Org: "acme", Admin: true},
		globexAdmin: {Org: "globex", Admin: true},
		gina:        {Org: "globex"},
		hooliAdmin:  {Org: "hooli", Admin: true},
		platform:    {Org: "umbra", Admin: true},
	}
}

// adminCall calls the administration API as id and returns the status and the error message, if any.
func (e *env) adminCall(t *testing.T, id, method, path string, body, out any) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
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
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error struct{ Message string } }
		_ = json.Unmarshal(b, &e)
		return resp.StatusCode, e.Error.Message
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode, ""
}

// heldCallers lists the callers of the held calls id sees.
func (e *env) heldCallers(t *testing.T, id string) (int, []string, map[string]string) {
	t.Helper()
	var out struct{ Approvals []approval.Request }
	code, _ := e.adminCall(t, id, "GET", "/admin/approvals", nil, &out)
	var callers []string
	ids := map[string]string{}
	for _, r := range out.Approvals {
		callers = append(callers, r.Caller)
		ids[r.Caller] = r.ID
	}
	slices.Sort(callers)
	return code, callers, ids
}

// refusedRecord waits for the record of an administration request refused to actor whose reason contains want.
func (e *env) refusedRecord(t *testing.T, actor, want string) audit.Record {
	t.Helper()
	return e.rec.find(t, "refusal of "+actor, func(r audit.Record) bool {
		return r.Kind == KindAdminRefused && r.Actor == actor && r.Decision == audit.DecisionDeny && strings.Contains(r.Reason, want)
	})
}

// Gateway administration is a grant of its own: scoped to organisations, never self-approving, and audited.
func TestGatewayAdministration(t *testing.T) {
	notes, _ := newTestServer("notes")
	nb, _ := inMemory("notes", notes, true)
	extra, _ := newTestServer("extra")
	xb, _ := inMemory("extra", extra, false) // its tools await an administrator
	e := start(t, Config{Backends: []Backend{nb, xb}, Self: mustID(gwAcme), Directory: adminTestDirectory(),
		Admins: []spiffeid.ID{mustID(initechOps)}, AdminOrgs: []string{"globex"}, Sensitive: []string{"notes__write"},
		Policies:  allowAcme + `@id("globex") permit (principal in Umbra::Org::"globex", action, resource);`,
		Approvals: Approvals{Timeout: time.Minute}})

	// Three calls wait for approval: alice's and the acme administrator's (acme), gina's (globex).
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	results := map[string]chan error{}
	for _, who := range []string{alice, acmeAdmin, gina} {
		c := e.connect(t, who)
		results[who] = make(chan error, 1)
		go func() {
			_, err := c.cs.CallTool(ctx, &mcp.CallToolParams{Name: "notes__write", Arguments: map[string]any{"text": "by " + who}})
			results[who] <- err
		}()
	}
	eventually(t, "three held calls", func() bool {
		rs, err := e.g.PendingCalls(ctxT(t))
		return err == nil && len(rs) == 3
	})
	eventually(t, "extra's tools awaiting a decision", func() bool {
		vs, err := e.g.PendingTools(ctxT(t))
		return err == nil && len(vs) > 0
	})
	_, all, ids := e.heldCallers(t, platform)
	if want := []string{acmeAdmin, alice, gina}; !slices.Equal(all, want) {
		t.Fatalf("the platform administrator sees %v, want %v", all, want)
	}
	var versions struct{ Versions []ToolVersion }
	if code, msg := e.adminCall(t, acmeAdmin, "GET", "/admin/tool-versions", nil, &versions); code != http.StatusOK || len(versions.Versions) == 0 {
		t.Fatalf("the gateway's organisation's administrator lists tool versions: %d %s", code, msg)
	}
	v := versions.Versions[0]
	for _, tv := range versions.Versions {
		if tv.Kind == pin.Tool {
			v = tv
			break
		}
	}
	toolBody := map[string]string{"kind": string(v.Kind), "backend": v.Backend, "tool": v.Tool, "digest": v.Digest}

	t.Run("another organisation's administrator is refused everything", func(t *testing.T) {
		for _, req := range []struct {
			method, path string
			body         any
		}{
			{"GET", "/admin/approvals", nil},
			{"POST", "/admin/approvals/" + ids[alice] + "/approve", nil},
			{"POST", "/admin/approvals/" + ids[alice] + "/deny", nil},
			{"GET", "/admin/tool-versions", nil},
			{"POST", "/admin/tool-versions/approve", toolBody},
			{"GET", "/admin/backends", nil},
			{"GET", "/metrics", nil},
		} {
			code, msg := e.adminCall(t, hooliAdmin, req.method, req.path, req.body, nil)
			if code != http.StatusForbidden || !strings.Contains(msg, "organisation hooli does not administer this gateway") || strings.Contains(msg, "\n") {
				t.Errorf("%s %s as hooli's administrator: %d %q", req.method, req.path, code, msg)
			}
		}
		e.refusedRecord(t, hooliAdmin, "does not administer this gateway")
		if code, _ := e.adminCall(t, gina, "GET", "/admin/approvals", nil, nil); code != http.StatusForbidden {
			t.Errorf("a caller who is no administrator listed held calls: %d", code)
		}
	})

	t.Run("a named organisation's administrator decides only its own organisation's calls", func(t *testing.T) {
		code, mine, _ := e.heldCallers(t, globexAdmin)
		if code != http.StatusOK || !slices.Equal(mine, []string{gina}) {
			t.Fatalf("globex's administrator sees %d %v, want only gina's call", code, mine)
		}
		if code, msg := e.adminCall(t, globexAdmin, "POST", "/admin/approvals/"+ids[alice]+"/approve", nil, nil); code != http.StatusForbidden || !strings.Contains(msg, "outside the organisation you administer") {
			t.Fatalf("globex's administrator approved acme's call: %d %q", code, msg)
		}
		rec := e.refusedRecord(t, globexAdmin, "outside the organisation")
		if d := dataOf(rec); d["approval"] != ids[alice] || d["caller"] != alice {
			t.Errorf("refusal record data %s", rec.Data)
		}
		for _, req := range []struct{ method, path string }{{"GET", "/admin/tool-versions"}, {"POST", "/admin/tool-versions/approve"}, {"GET", "/admin/backends"}} {
			if code, msg := e.adminCall(t, globexAdmin, req.method, req.path, toolBody, nil); code != http.StatusForbidden || !strings.Contains(msg, "gateway's own organisation") {
				t.Errorf("%s %s as globex's administrator: %d %q", req.method, req.path, code, msg)
			}
		}
		if code, msg := e.adminCall(t, globexAdmin, "POST", "/admin/approvals/"+ids[gina]+"/approve", nil, nil); code != http.StatusOK {
			t.Fatalf("globex's administrator approving gina's call: %d %s", code, msg)
		}
		if err := <-results[gina]; err != nil {
			t.Fatalf("gina's approved call: %v", err)
		}
		e.rec.find(t, "globex's approval", func(r audit.Record) bool {
			d := dataOf(r)
			return r.Kind == KindApproval && r.Actor == globexAdmin && r.Decision == audit.DecisionAllow &&
				d["caller"] == gina && strings.Contains(d["admin_basis"].(string), "admin_orgs")
		})
	})

	t.Run("the gateway's organisation's administrator sees its own organisation and cannot approve itself", func(t *testing.T) {
		_, mine, _ := e.heldCallers(t, acmeAdmin)
		if !slices.Equal(mine, []string{acmeAdmin, alice}) {
			t.Fatalf("acme's administrator sees %v, want acme's calls only", mine)
		}
		code, msg := e.adminCall(t, acmeAdmin, "POST", "/admin/approvals/"+ids[acmeAdmin]+"/approve", nil, nil)
		if code != http.StatusForbidden || !strings.Contains(msg, "cannot approve your own held call") {
			t.Fatalf("self-approval: %d %q", code, msg)
		}
		e.refusedRecord(t, acmeAdmin, "your own held call")
		if _, err := e.g.DecideCall(ctxT(t), mustID(acmeAdmin), ids[acmeAdmin], true, ""); !errors.Is(err, ErrNotAuthorized) {
			t.Fatalf("self-approval through the Go API: %v", err)
		}
		if code, msg := e.adminCall(t, acmeAdmin, "POST", "/admin/approvals/"+ids[alice]+"/approve", nil, nil); code != http.StatusOK {
			t.Fatalf("acme's administrator approving alice's call: %d %s", code, msg)
		}
		if err := <-results[alice]; err != nil {
			t.Fatalf("alice's approved call: %v", err)
		}
		if code, msg := e.adminCall(t, acmeAdmin, "POST", "/admin/tool-versions/approve", toolBody, nil); code != http.StatusOK {
			t.Fatalf("acme's administrator approving a tool version: %d %s", code, msg)
		}
		e.rec.find(t, "acme's tool decision", func(r audit.Record) bool {
			return r.Kind == KindToolDecided && r.Actor == acmeAdmin && r.Decision == audit.DecisionAllow && dataOf(r)["digest"] == v.Digest
		})
		if code, _ := e.adminCall(t, acmeAdmin, "GET", "/admin/backends", nil, nil); code != http.StatusOK {
			t.Errorf("acme's administrator reading backends: %d", code)
		}
	})

	t.Run("another administrator approves the administrator's call", func(t *testing.T) {
		code, msg := e.adminCall(t, initechOps, "POST", "/admin/approvals/"+ids[acmeAdmin]+"/approve", nil, nil)
		if code != http.StatusOK {
			t.Fatalf("an identity named in admins approving acme's administrator's call: %d %s", code, msg)
		}
		if err := <-results[acmeAdmin]; err != nil {
			t.Fatalf("the administrator's approved call: %v", err)
		}
		e.rec.find(t, "the named admin's approval", func(r audit.Record) bool {
			return r.Kind == KindApproval && r.Actor == initechOps && dataOf(r)["caller"] == acmeAdmin
		})
		if code, _ := e.adminCall(t, initechOps, "GET", "/metrics", nil, nil); code != http.StatusOK {
			t.Errorf("an identity named in admins reading metrics: %d", code)
		}
	})
}

// Without an identity of its own the gateway has no organisation whose administrators administer it by default.
func TestGatewayAdministrationWithoutSelf(t *testing.T) {
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme, Directory: adminTestDirectory()})
	if code, msg := e.adminCall(t, acmeAdmin, "GET", "/admin/approvals", nil, nil); code != http.StatusForbidden || msg == "" {
		t.Errorf("acme's administrator at a gateway of no organisation: %d %q", code, msg)
	}
	for _, id := range []string{platform, adminID} {
		if code, _ := e.adminCall(t, id, "GET", "/admin/tool-versions", nil, nil); code != http.StatusOK {
			t.Errorf("%s: %d", id, code)
		}
	}
}

func TestAdminOrgsChecked(t *testing.T) {
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	if _, err := New(Config{Backends: []Backend{b}, AdminOrgs: []string{"Globex Corp"}}); err == nil || !strings.Contains(err.Error(), "admin_orgs") {
		t.Fatalf("a malformed organisation name: %v", err)
	}
}
