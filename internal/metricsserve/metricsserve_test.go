package metricsserve

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestCheckAddr(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		remote bool
		want   string // "" for accepted
	}{
		{"", false, ""},
		{"127.0.0.1:9465", false, ""},
		{"[::1]:9465", false, ""},
		{"localhost:0", false, ""},
		{"0.0.0.0:9465", false, "not a loopback address"},
		{"10.1.2.3:9465", false, "--allow-it"},
		{"0.0.0.0:9465", true, ""},
		{"127.0.0.1", false, "want HOST:PORT"},
		{"127.0.0.1:", true, "want HOST:PORT"},
	} {
		err := CheckAddr(tc.addr, tc.remote, "--allow-it")
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("CheckAddr(%q, %v): %v", tc.addr, tc.remote, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("CheckAddr(%q, %v) = %v, want an error containing %q", tc.addr, tc.remote, err, tc.want)
		case err != nil && strings.Contains(err.Error(), "\n"):
			t.Errorf("CheckAddr(%q): error spans lines: %q", tc.addr, err)
		}
	}
}

func TestStartServesUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "up 1\n") })
	addr, done, err := Start(ctx, "127.0.0.1:0", h, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "up 1\n" {
		t.Fatalf("GET /metrics: %d %q", resp.StatusCode, b)
	}
	resp, err = c.Post("http://"+addr.String()+"/metrics", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /metrics: %d, want 405", resp.StatusCode)
	}
	if _, _, err := Start(ctx, addr.String(), h, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), addr.String()) {
		t.Fatalf("second Start on a bound address: %v, want an error naming it", err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server still running 5 s after its context ended")
	}
	if _, err := c.Get("http://" + addr.String() + "/metrics"); err == nil {
		t.Fatal("address still served after stop")
	}
}
