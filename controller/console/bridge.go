package console

import (
	"fmt"
	"html"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
)

// BridgeConfig configures the loopback side of `umbra ui`.
type BridgeConfig struct {
	// Transport carries requests over the overlay as the viewer (agentsdk.Agent.HTTPClient().Transport).
	Transport http.RoundTripper
	// Addr is the loopback address the bridge listens on, as bound (HOST:PORT): the only Host a request may name.
	Addr string
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Gateways, when set, serves the approvals and LLM usage pages in the bridge itself: they read and decide at
	// the gateways as Viewer, the bridge's own identity (the controller's console never speaks for a viewer).
	Gateways Gateways
	// Viewer is the bridge's identity, as the pages it serves name it.
	Viewer Viewer
}

// CheckLoopback refuses a listen address that is not loopback: the console must never be served to a network.
func CheckLoopback(listen string) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("%q: want HOST:PORT, e.g. 127.0.0.1:8088", listen)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%q: only loopback addresses are allowed (127.0.0.1, ::1 or localhost): the console is reached from this machine only", listen)
	}
	return nil
}

// NewBridge returns the handler of the loopback bridge: it forwards each request to the console over the overlay,
// after checking that the request names the bridge's own address as its Host, so that a page of another site
// cannot reach it through a DNS name rebound to 127.0.0.1.
func NewBridge(cfg BridgeConfig) (http.Handler, error) {
	if cfg.Transport == nil {
		return nil, fmt.Errorf("console: BridgeConfig needs a Transport")
	}
	host, port, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("console: bridge address %q: %w", cfg.Addr, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	allowed := []string{net.JoinHostPort(host, port)}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() || host == "localhost" {
		// The names a browser on this machine may use for the same socket.
		if ip == nil || ip.To4() != nil {
			allowed = append(allowed, "localhost:"+port, "127.0.0.1:"+port)
		} else {
			allowed = append(allowed, "[::1]:"+port, "localhost:"+port)
		}
	}
	target := &url.URL{Scheme: "http", Host: ServiceName}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host // the console checks a POST's Origin against it
		},
		Transport:     cfg.Transport,
		FlushInterval: -1, // the live view's events as they come
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			cfg.Logger.Warn("console unreachable over the overlay", "path", r.URL.Path, "err", err)
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "<!doctype html><title>Umbra console unreachable</title><h1>Console unreachable</h1><p>The overlay did not connect this identity to the console: %s.</p><p>Only administrators may dial it; check the identity given to <code>umbra ui --as</code>, and that the controller is running.</p>", html.EscapeString(err.Error()))
		},
	}
	var local http.Handler = proxy
	if cfg.Gateways != nil {
		viewer := cfg.Viewer
		pages, err := New(Config{Gateways: cfg.Gateways, Logger: cfg.Logger,
			Viewer: func(*http.Request) (Viewer, error) { return viewer, nil }})
		if err != nil {
			return nil, err
		}
		mux := http.NewServeMux()
		mux.Handle("/", proxy)
		h := pages.Handler()
		for _, p := range []string{"/approvals", "/approvals/", "/usage"} {
			mux.Handle(p, h)
		}
		local = mux
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !slices.Contains(allowed, r.Host) {
			http.Error(w, fmt.Sprintf("Host %q is not this console bridge's address (%s): open http://%s/", r.Host, allowed[0], allowed[0]), http.StatusMisdirectedRequest)
			return
		}
		local.ServeHTTP(w, r)
	}), nil
}
