package mcpgw

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
)

func TestConfigValidation(t *testing.T) {
	connect := func(context.Context) (mcp.Transport, error) { return nil, errors.New("unused") }
	ok := Backend{Name: "files", Connect: connect}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no backends", Config{}, "no backends"},
		{"bad name", Config{Backends: []Backend{{Name: "Files", Connect: connect}}}, "name must be"},
		{"name starting with a digit", Config{Backends: []Backend{{Name: "1x", Connect: connect}}}, "name must be"},
		{"duplicate", Config{Backends: []Backend{ok, ok}}, "collide"},
		{"separator in name", Config{Separator: "-", Backends: []Backend{{Name: "my-files", Connect: connect}}}, "separator"},
		{"separator with plus", Config{Separator: "+", Backends: []Backend{ok}}, "separator"},
		{"no connect", Config{Backends: []Backend{{Name: "files"}}}, "no Connect"},
		{"bad spawn", Config{Backends: []Backend{{Name: "files", Connect: connect, Spawn: "always"}}}, "spawn"},
		{"bad sensitive pattern", Config{Backends: []Backend{ok}, Sensitive: []string{"["}}, "sensitive"},
		{"bad policy", Config{Backends: []Backend{ok}, Policies: "permit ("}, "policy"},
		{"valid", Config{Backends: []Backend{ok}, Policies: allowAcme}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("New: %v, want error containing %q", err, tt.want)
			}
		})
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{Backends: []Backend{ok}, Registry: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Backends: []Backend{ok}, Registry: reg}); err == nil {
		t.Fatal("two gateways registered the same metrics")
	}
}

func TestPeerID(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert := func(uris ...string) *x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
		for _, u := range uris {
			pu, _ := url.Parse(u)
			tmpl.URIs = append(tmpl.URIs, pu)
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	tests := []struct {
		name  string
		state *tls.ConnectionState
		want  string
	}{
		{"svid", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert(alice)}}, alice},
		{"no tls", nil, ""},
		{"no client certificate", &tls.ConnectionState{}, ""},
		{"not a SPIFFE ID", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert("https://example.com")}}, ""},
		{"two URIs", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert(alice, bob)}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest("POST", "https://gw/", nil)
			r.TLS = tt.state
			r.Header.Set(identityHdr, bob) // headers are never trusted
			id, err := PeerID(r)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("PeerID = %s, want an error", id)
				}
				return
			}
			if err != nil || id.String() != tt.want {
				t.Fatalf("PeerID = %s, %v; want %s", id, err, tt.want)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme})
	c := e.connect(t, alice)
	if _, err := c.call(t, "notes__echo", map[string]any{"text": "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.call(t, "notes__fail", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	get := func(id string) (int, string) {
		req, _ := http.NewRequestWithContext(ctxT(t), "GET", e.url+"/metrics", nil)
		resp, err := httpClient(id).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(alice); code != http.StatusForbidden {
		t.Fatalf("metrics to a non-administrator: %d", code)
	}
	code, body := get(adminID)
	for _, want := range []string{
		`umbra_mcpgw_calls_total{backend="notes",caller="` + alice + `",kind="tool",status="ok",tool="notes__echo"} 1`,
		`umbra_mcpgw_call_errors_total{backend="notes",caller="` + alice + `",kind="tool",status="tool_error",tool="notes__fail"} 1`,
		`umbra_mcpgw_call_duration_seconds_count{backend="notes",caller="` + alice + `",kind="tool",tool="notes__echo"} 1`,
		`umbra_mcpgw_backend_up{backend="notes"} 1`,
		`umbra_mcpgw_tools{state="approved"} 6`,
	} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("metrics (%d) lack %s", code, want)
		}
	}
	if e.g.MetricsHandler() == nil {
		t.Error("no MetricsHandler for the private registry")
	}
}

type failingDirectory struct{}

func (failingDirectory) Lookup(context.Context, spiffeid.ID) (Principal, error) {
	return Principal{}, errors.New("controller unreachable")
}

type liarDirectory struct{}

func (liarDirectory) Lookup(context.Context, spiffeid.ID) (Principal, error) {
	return Principal{ID: mustID(adminID), Org: "acme", Admin: true}, nil
}

// Without a trustworthy answer about the caller, nothing is decided in its favour.
func TestDirectoryFailsClosed(t *testing.T) {
	for name, dir := range map[string]Directory{"unreachable": failingDirectory{}, "answers for someone else": liarDirectory{}} {
		t.Run(name, func(t *testing.T) {
			srv, _ := newTestServer("notes")
			b, _ := inMemory("notes", srv, true)
			e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme, Directory: dir})
			c := e.connect(t, alice)
			if _, err := c.cs.ListTools(ctxT(t), nil); rpcCode(err) != CodeUnavailable {
				t.Fatalf("tools/list: %v", err)
			}
			if _, err := c.call(t, "notes__echo", map[string]any{"text": "x"}); err == nil {
				t.Fatal("call succeeded without a directory answer")
			}
		})
	}
	t.Run("revoked", func(t *testing.T) {
		srv, _ := newTestServer("notes")
		b, _ := inMemory("notes", srv, true)
		e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme,
			Directory: directory{alice: {Org: "acme", Revoked: true, Admin: true}}})
		c := e.connect(t, alice)
		if _, err := c.cs.ListTools(ctxT(t), nil); rpcCode(err) != CodeNotAuthorized {
			t.Fatalf("tools/list for a revoked identity: %v", err)
		}
		if code := e.adminDo(t, alice, "GET", "/admin/tool-versions", nil, nil); code != http.StatusForbidden {
			t.Fatalf("a revoked administrator used the admin API: %d", code)
		}
	})
}

// Pins and approvals live in JetStream KV when the gateway has it: a second gateway on the same state (a
// replica, or the same after a restart) knows what the first approved.
func TestStateInJetStream(t *testing.T) {
	js := natsdtest.Connect(t, natsdtest.Start(t), "mcpgw-test")
	srv, _ := newTestServer("ext")
	cfg := func() Config {
		b, _ := inMemory("ext", srv, false)
		return Config{Backends: []Backend{b}, Policies: allowAcme, State: js, BucketPrefix: "test_mcpgw_",
			Registry: prometheus.NewRegistry()}
	}
	e1 := start(t, cfg())
	var echo ToolVersion
	for _, v := range pendingVersions(t, e1) {
		if v.Name == "ext__echo" {
			echo = v
		}
	}
	if code := decideTool(t, e1, "approve", echo, echo.Digest); code != http.StatusOK {
		t.Fatalf("approve: %d", code)
	}
	e2 := start(t, cfg())
	if got := e2.connect(t, alice).toolNames(t); len(got) != 1 || got[0] != "ext__echo" {
		t.Fatalf("the second gateway sees %v", got)
	}
	// Five tools, one prompt, one resource and one resource template still wait.
	if n := len(pendingVersions(t, e2)); n != 8 {
		t.Fatalf("%d versions pending on the second gateway, want 8", n)
	}
}
