package llmgw_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/llmgw"
)

// Administrators of the gateway administration tests: the gateway is acme's, beta is named in its admin_orgs,
// gamma is not named at all, and delta's ops identity (no administrator) is named in its admins.
const (
	betaAdmin  = "spiffe://beta.test/beta/admin/admin"
	gammaAdmin = "spiffe://gamma.test/gamma/admin/admin"
	platform   = "spiffe://acme.test/umbra/admin/root"
	deltaOps   = "spiffe://delta.test/delta/user/ops"
)

// usageSubjects reads /v1/usage as id (with query q) and returns the status, the subjects and the error message.
func (h *harness) usageSubjects(id, q string) (int, []string, string) {
	h.t.Helper()
	status, body, _ := h.do(id, http.MethodGet, "/v1/usage?since=48h"+q, "")
	var resp struct {
		Data []struct {
			Subject string `json:"subject"`
		} `json:"data"`
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &resp); err != nil {
		h.t.Fatalf("usage as %s: %v: %s", id, err, body)
	}
	var subjects []string
	for _, d := range resp.Data {
		subjects = append(subjects, d.Subject)
	}
	slices.Sort(subjects)
	return status, subjects, resp.Error.Message
}

// Usage and metrics are for this gateway's administrators, each within the organisations its grant covers.
func TestGatewayAdministration(t *testing.T) {
	up := newUpstream(t, "openai")
	dir := testDirectory()
	dir[betaAdmin] = llmgw.Principal{Org: "beta", Admin: true}
	dir[gammaAdmin] = llmgw.Principal{Org: "gamma", Admin: true}
	dir[platform] = llmgw.Principal{Org: "umbra", Admin: true}
	dir[deltaOps] = llmgw.Principal{Org: "delta"}
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}, Directory: dir,
		Admins: []spiffeid.ID{spiffeid.RequireFromString(deltaOps)}, AdminOrgs: []string{"beta"}})
	ctx := testCtx(t)
	for _, id := range []string{alice, bob, carol} {
		if _, err := h.client(id).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: "gpt-test", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		}); err != nil {
			t.Fatalf("call as %s: %v", id, err)
		}
	}
	everyone := []string{"id:" + alice, "id:" + bob, "id:" + carol}
	slices.Sort(everyone)
	acme := []string{"id:" + alice, "id:" + bob}
	slices.Sort(acme)

	for _, tc := range []struct {
		name, as, query string
		status          int
		subjects        []string
		refusal         string
	}{
		{"the gateway's organisation's administrator reads its organisation's usage", admin, "", 200, acme, ""},
		{"... and one identity of it", admin, "&identity=" + url.QueryEscape(alice), 200, []string{"id:" + alice}, ""},
		{"... but not another organisation's identity", admin, "&identity=" + url.QueryEscape(carol), 403, nil, "outside the organisation you administer"},
		{"a named organisation's administrator reads its own organisation's usage", betaAdmin, "", 200, []string{"id:" + carol}, ""},
		{"... but not the gateway's organisation's", betaAdmin, "&identity=" + url.QueryEscape(alice), 403, nil, "outside the organisation you administer"},
		{"another organisation's administrator is refused", gammaAdmin, "&identity=" + url.QueryEscape(alice), 403, nil, "organisation gamma does not administer this gateway"},
		{"... also for everyone's usage", gammaAdmin, "", 403, nil, "organisation gamma does not administer this gateway"},
		{"... and reads its own", gammaAdmin, "&identity=" + url.QueryEscape(gammaAdmin), 200, nil, ""},
		{"the platform administrator reads everyone's", platform, "", 200, everyone, ""},
		{"an identity named in admins reads everyone's", deltaOps, "", 200, everyone, ""},
		{"a caller reads its own", bob, "", 200, []string{"id:" + bob}, ""},
		{"a caller does not read another's", bob, "&identity=" + url.QueryEscape(alice), 403, nil, "only administrators"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, subjects, msg := h.usageSubjects(tc.as, tc.query)
			if status != tc.status || !slices.Equal(subjects, tc.subjects) || !strings.Contains(msg, tc.refusal) || strings.Contains(msg, "\n") {
				t.Fatalf("got %d %v %q, want %d %v %q", status, subjects, msg, tc.status, tc.subjects, tc.refusal)
			}
		})
	}

	t.Run("reads and refusals are audited with the administrator's ID", func(t *testing.T) {
		rec := h.auditor.wait(t, func(r audit.Record) bool { return r.Kind == llmgw.KindUsageRead && r.Actor == betaAdmin })
		var d map[string]any
		_ = json.Unmarshal(rec.Data, &d)
		if rec.Decision != audit.DecisionAllow || d["scope"] != "beta" || !strings.Contains(d["admin_basis"].(string), "admin_orgs") {
			t.Errorf("usage read record %+v data %s", rec, rec.Data)
		}
		h.auditor.wait(t, func(r audit.Record) bool {
			return r.Kind == llmgw.KindUsageRead && r.Actor == admin && strings.Contains(string(r.Data), `"identity":"`+alice+`"`)
		})
		rec = h.auditor.wait(t, func(r audit.Record) bool { return r.Kind == llmgw.KindAdminRefused && r.Actor == gammaAdmin })
		if rec.Decision != audit.DecisionDeny || !strings.Contains(rec.Reason, "does not administer this gateway") {
			t.Errorf("refusal record %+v", rec)
		}
		for _, r := range h.auditor.records() {
			if r.Kind == llmgw.KindUsageRead && (r.Actor == bob || r.Actor == gammaAdmin) {
				t.Errorf("a read of one's own usage recorded as an administrator's: %+v", r)
			}
		}
	})

	t.Run("metrics are for the gateway's own administrators", func(t *testing.T) {
		for id, want := range map[string]int{admin: 200, platform: 200, deltaOps: 200, betaAdmin: 403, gammaAdmin: 403, bob: 403} {
			if status, body, _ := h.do(id, http.MethodGet, "/metrics", ""); status != want {
				t.Errorf("metrics as %s: %d, want %d: %.200s", id, status, want, body)
			}
		}
		h.auditor.wait(t, func(r audit.Record) bool {
			return r.Kind == llmgw.KindAdminRefused && r.Actor == betaAdmin && strings.Contains(string(r.Data), "read metrics")
		})
	})
}

func TestAdminOrgsChecked(t *testing.T) {
	up := newUpstream(t, "openai")
	if _, err := llmgw.New(llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}, AdminOrgs: []string{"Beta Inc"}}); err == nil ||
		!strings.Contains(err.Error(), "admin_orgs") {
		t.Fatalf("a malformed organisation name: %v", err)
	}
}
