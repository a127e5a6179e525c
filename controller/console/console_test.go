package console

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// memSource is a Source over records held in memory. The console's real Source is the controller's; its
// pages are tested against a real network in cmd/umbra (TestConsoleInBrowser). These tests check the console's
// own rules: who may do what, CSRF, the bridge's Host check, the live stream.
type memSource struct {
	mu        sync.Mutex
	records   []audit.Record
	suspended bool
	reason    string
}

func (m *memSource) add(r audit.Record) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r.Seq = uint64(len(m.records) + 1)
	m.records = append(m.records, r)
}

func (m *memSource) Overview(context.Context, Viewer) (Overview, error) {
	return Overview{Orgs: []Org{{Name: "acme", Admin: "spiffe://umbra.local/acme/admin/admin"}},
		Identities: []Identity{{SPIFFEID: "spiffe://umbra.local/acme/agent/quoter", Org: "acme", Kind: "agent", Name: "quoter", State: "enrolled"}}}, nil
}

func (m *memSource) Sessions(context.Context, Viewer) ([]api.SessionView, error) { return nil, nil }

func (m *memSource) SessionAudit(_ context.Context, _ Viewer, id string) (api.SessionAudit, error) {
	return api.SessionAudit{}, fmt.Errorf("%w: no session %s", ErrNotFound, id)
}

func (m *memSource) Audit(_ context.Context, _ Viewer, q Query) (AuditPage, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := AuditPage{Last: uint64(len(m.records))}
	for _, r := range m.records {
		if r.Seq > q.After && (q.Kind == "" || r.Kind == q.Kind) {
			p.Records = append(p.Records, r)
		}
	}
	return p, nil
}

func (m *memSource) Verify(_ context.Context, v Viewer) (api.AuditReport, error) {
	if !v.Platform {
		return api.AuditReport{}, fmt.Errorf("%w: only the platform administrator verifies the audit chain", ErrForbidden)
	}
	return api.AuditReport{OK: true, Records: len(m.records)}, nil
}

func (m *memSource) Export(_ context.Context, _ Viewer, w io.Writer) error {
	_, err := io.WriteString(w, "{}\n")
	return err
}

func (m *memSource) Posture(context.Context, Viewer) (PostureView, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	state := "enrolled"
	if m.suspended {
		state = "suspended"
	}
	return PostureView{
		Report: api.PostureReport{Scope: "platform", Findings: []api.Finding{{ID: "admin-without-mfa/acme", Check: "admin-without-mfa",
			Severity: "high", Subject: "acme", Summary: "too many administrators", Evidence: "4 administrators", Fix: "revoke one"}}},
		Inventory: api.Inventory{Identities: []api.InventoryIdentity{{SPIFFEID: "spiffe://umbra.local/acme/agent/quoter", State: state, Kind: "agent"}}},
	}, nil
}

func (m *memSource) RecordBaseline(context.Context, Viewer) (api.BaselineResponse, error) {
	return api.BaselineResponse{Scope: "platform", Items: 1}, nil
}

func (m *memSource) Suspend(_ context.Context, v Viewer, id, reason string, suspend bool) (api.SuspendResponse, error) {
	if id == v.ID {
		return api.SuspendResponse{}, fmt.Errorf("%w: an identity cannot suspend itself", ErrInvalid)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.suspended = suspend
	m.reason = reason
	return api.SuspendResponse{SPIFFEID: id, Suspended: suspend, SessionsClosed: 1}, nil
}

var (
	platform = Viewer{ID: "spiffe://umbra.local/umbra/admin/root", Org: "umbra", Platform: true}
	orgAdmin = Viewer{ID: "spiffe://umbra.local/acme/admin/admin", Org: "acme"}
)

// newTestConsole serves a console whose viewer is named by the test header X-Test-Viewer (standing in for the
// SVID the controller verifies).
func newTestConsole(t *testing.T, src Source) *httptest.Server {
	t.Helper()
	c, err := New(Config{Source: src, LivePoll: 20 * time.Millisecond, Viewer: func(r *http.Request) (Viewer, error) {
		switch r.Header.Get("X-Test-Viewer") {
		case "platform":
			return platform, nil
		case "org":
			return orgAdmin, nil
		}
		return Viewer{}, errors.New("spiffe://umbra.local/acme/agent/quoter is not an administrator")
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(srv.Close)
	return srv
}

func do(t *testing.T, ctx context.Context, method, u, viewer string, form url.Values, cookies []*http.Cookie, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if viewer != "" {
		req.Header.Set("X-Test-Viewer", viewer)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

var reCSRF = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func TestConsoleRefusesNonAdministrators(t *testing.T) {
	srv := newTestConsole(t, &memSource{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, body := do(t, ctx, "GET", srv.URL+"/", "", nil, nil, nil)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "is not an administrator") {
		t.Fatalf("non-admin: %d %s", resp.StatusCode, body)
	}
}

func TestConsoleCSRF(t *testing.T) {
	srv := newTestConsole(t, &memSource{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, body := do(t, ctx, "GET", srv.URL+"/audit", "platform", nil, nil, nil)
	// A browser sends a form POST's Origin only when the referrer policy lets it: "no-referrer" makes it "null".
	if rp := resp.Header.Get("Referrer-Policy"); rp != "same-origin" {
		t.Fatalf("Referrer-Policy %q, want same-origin", rp)
	}
	m := reCSRF.FindStringSubmatch(body)
	if resp.StatusCode != 200 || m == nil || len(resp.Cookies()) != 1 {
		t.Fatalf("audit page: %d, token %v, cookies %v", resp.StatusCode, m, resp.Cookies())
	}
	ck := resp.Cookies()[0]
	if ck.SameSite != http.SameSiteStrictMode || !ck.HttpOnly {
		t.Fatalf("cookie %+v: want SameSite=Strict, HttpOnly", ck)
	}
	token := m[1]
	for _, tc := range []struct {
		name    string
		viewer  string
		form    url.Values
		cookies []*http.Cookie
		hdr     map[string]string
		want    int
	}{
		{"no token", "platform", url.Values{}, []*http.Cookie{ck}, nil, http.StatusForbidden},
		{"no cookie", "platform", url.Values{"csrf": {token}}, nil, nil, http.StatusForbidden},
		{"other viewer's token", "org", url.Values{"csrf": {token}}, []*http.Cookie{ck}, nil, http.StatusForbidden},
		{"cross-origin", "platform", url.Values{"csrf": {token}}, []*http.Cookie{ck}, map[string]string{"Origin": "http://evil.example"}, http.StatusForbidden},
		{"opaque origin", "platform", url.Values{"csrf": {token}}, []*http.Cookie{ck}, map[string]string{"Origin": "null"}, http.StatusForbidden},
		{"valid", "platform", url.Values{"csrf": {token}}, []*http.Cookie{ck}, nil, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, ctx, "POST", srv.URL+"/audit/verify", tc.viewer, tc.form, tc.cookies, tc.hdr)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			if tc.want == http.StatusOK && !strings.Contains(body, "Audit chain verified") {
				t.Fatalf("verify page: %s", body)
			}
		})
	}
	// An organisation's administrator with its own valid token is still refused what only the platform may do.
	resp, body = do(t, ctx, "GET", srv.URL+"/audit", "org", nil, []*http.Cookie{ck}, nil)
	orgToken := reCSRF.FindStringSubmatch(body)[1]
	resp, body = do(t, ctx, "POST", srv.URL+"/audit/verify", "org", url.Values{"csrf": {orgToken}}, []*http.Cookie{ck}, nil)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "only the platform administrator") {
		t.Fatalf("org admin verify: %d %s", resp.StatusCode, body)
	}
	resp, _ = do(t, ctx, "GET", srv.URL+"/audit/export", "org", nil, nil, nil)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("org admin export: %d", resp.StatusCode)
	}
}

func TestConsolePages(t *testing.T) {
	src := &memSource{}
	src.add(audit.Record{Time: time.Now(), Kind: "envelope.rejected", Actor: "spiffe://umbra.local/acme/agent/quoter", Decision: "deny", Reason: "type_not_allowed: nope"})
	srv := newTestConsole(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sid, err := workgroups.NewSessionID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path   string
		status int
		want   []string
	}{
		{"/", 200, []string{"<main", `<nav aria-label="Sections">`, `<th scope="col">SPIFFE ID</th>`, "spiffe://umbra.local/acme/agent/quoter"}},
		{"/sessions", 200, []string{"No sessions", `<label for="state">`}},
		{"/audit?kind=envelope.rejected", 200, []string{`class="refused"`, "type_not_allowed: nope"}},
		{"/audit?since=yesterday", 400, []string{"is not a time"}},
		{"/sessions/" + sid.String(), 404, []string{"not yours to see"}},
		{"/sessions/nope", 400, []string{"is not a session ID"}},
		{"/live", 200, []string{`data-cursor="1"`, "type_not_allowed: nope", "/static/live.js"}},
		{"/approvals", 200, []string{"Served by the console bridge", "umbra ui"}},
		{"/posture", 200, []string{"high", "admin-without-mfa", "spiffe://umbra.local/acme/agent/quoter", `action="/posture/suspend"`}},
		{"/static/console.css", 200, []string{"--bg"}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, body := do(t, ctx, "GET", srv.URL+tc.path, "platform", nil, nil, nil)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("%s lacks %q", tc.path, w)
				}
			}
			if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
				t.Errorf("CSP %q", csp)
			}
		})
	}
}

func TestConsoleLiveStream(t *testing.T) {
	src := &memSource{}
	src.add(audit.Record{Time: time.Now(), Kind: "session.transition", Actor: "spiffe://umbra.local/acme/agent/quoter", Decision: "allow"})
	srv := newTestConsole(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/live/events?after=1", nil)
	req.Header.Set("X-Test-Viewer", "platform")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	// Not a live kind: skipped. Then a refused envelope: streamed, marked refused, with its reason.
	src.add(audit.Record{Time: time.Now(), Kind: "org.created", Actor: platform.ID, Decision: "allow"})
	h := workgroups.Header{Type: "quote.request", Size: 12}
	data, _ := json.Marshal(h)
	src.add(audit.Record{Time: time.Now(), Kind: "envelope.rejected", Actor: "spiffe://umbra.local/acme/agent/quoter", Decision: "deny", Reason: "type_not_allowed", Data: data})
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		var ev liveEvent
		if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Seq != 3 || !ev.Refused || ev.Reason != "type_not_allowed" || !strings.Contains(ev.Summary, "quote.request") {
			t.Fatalf("event %+v", ev)
		}
		return
	}
	t.Fatalf("stream ended without the event: %v", sc.Err())
}

func TestBridgeChecksHost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var seenHost string
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenHost = r.Host
		io.WriteString(w, "console")
	}))
	defer upstream.Close()
	// The overlay transport, here: every request goes to upstream whatever its URL names.
	rt := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", upstream.Listener.Addr().String())
	}}
	h, err := NewBridge(BridgeConfig{Transport: rt, Addr: "127.0.0.1:8088"})
	if err != nil {
		t.Fatal(err)
	}
	bridge := httptest.NewServer(h)
	defer bridge.Close()
	for _, tc := range []struct {
		host string
		want int
	}{
		{"127.0.0.1:8088", 200},
		{"localhost:8088", 200},
		{"attacker.example:8088", http.StatusMisdirectedRequest}, // a DNS name rebound to 127.0.0.1
		{"127.0.0.1:9999", http.StatusMisdirectedRequest},
	} {
		req, _ := http.NewRequestWithContext(ctx, "GET", bridge.URL+"/", nil)
		req.Host = tc.host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("Host %s: status %d, want %d", tc.host, resp.StatusCode, tc.want)
		}
		if tc.want == 200 && seenHost != tc.host {
			t.Errorf("the console saw Host %q, want %q", seenHost, tc.host)
		}
	}
}

func TestCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:8088": true, "[::1]:8088": true, "localhost:0": true,
		"0.0.0.0:8088": false, ":8088": false, "192.168.1.4:8088": false, "example.com:80": false, "8088": false} {
		if err := CheckLoopback(addr); (err == nil) != ok {
			t.Errorf("CheckLoopback(%q) = %v, want ok=%v", addr, err, ok)
		}
	}
}
