package zitictrl

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/freeport"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// TestManagementAPIsOffThePublicPort starts the embedded controller and probes its public API port as a
// workload would: only the edge client API answers there; the management and fabric APIs answer only on the
// loopback management port the controller uses itself.
func TestManagementAPIsOffThePublicPort(t *testing.T) {
	limit := testlimit.Start(t, 3*time.Minute)
	ports, err := freeport.Loopback(2)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	limit.Step("start the embedded controller")
	c, err := Start(ctx, Config{Dir: t.TempDir(), CtrlPort: ports[0], APIPort: ports[1]},
		slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	if c.cfg.MgmtPort == 0 || c.cfg.MgmtPort == c.cfg.APIPort {
		t.Fatalf("management port %d, public API port %d: want a port of its own", c.cfg.MgmtPort, c.cfg.APIPort)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: c.pool, MinVersion: tls.VersionTLS12}}}
	defer client.CloseIdleConnections()
	status := func(url string) int {
		t.Helper()
		limit.Step("GET %s", url)
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		io.Copy(io.Discard, resp.Body) // read to the end, so that the connection is kept for the next request
		resp.Body.Close()
		return resp.StatusCode
	}
	public, mgmt := c.APIURL(), c.mgmtURL()
	if got := status(public + "/edge/client/v1/version"); got != http.StatusOK {
		t.Errorf("client API on the public port: %d, want 200", got)
	}
	for _, path := range []string{"/edge/management/v1/version", "/edge/management/v1/identities", "/fabric/v1/circuits",
		"/edge/management/v1/authenticate?method=cert"} {
		if got := status(public + path); got != http.StatusNotFound {
			t.Errorf("%s on the public port: %d, want 404 (no such API there)", path, got)
		}
	}
	if got := status(mgmt + "/edge/management/v1/version"); got != http.StatusOK {
		t.Errorf("management API on the loopback management port: %d, want 200", got)
	}
	if !strings.HasPrefix(mgmt, "https://127.0.0.1:") {
		t.Errorf("management API at %s, want loopback", mgmt)
	}
	// OpenZiti's management client (edge-api's rest_util, which Mgmt uses) keeps an idle connection for 10 s. The
	// server must keep it longer: with its default of 5 s it closed such connections first, and a request sent on
	// one just then found it closed (EOF).
	limit.Step("reuse a management connection left idle for 6 s")
	time.Sleep(6 * time.Second)
	reused := false
	trace := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
	req, err := http.NewRequestWithContext(trace, http.MethodGet, mgmt+"/edge/management/v1/version", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET after 6 s idle: %v", err)
	}
	resp.Body.Close()
	if !reused {
		t.Error("the management API closed a connection idle for 6 s; its clients keep them for 10 s")
	}
	limit.Step("look up an identity through the management client")
	if _, found, err := c.Mgmt().FindIdentity("spiffe://example.org/nobody"); err != nil || found {
		t.Errorf("management client: found=%v err=%v", found, err)
	}
}
