// Package router runs an Umbra edge router: the real OpenZiti edge router, in-process, enrolled with a one-time
// token from the controller. Workloads connect out to routers; routers carry their end-to-end encrypted traffic.
// Deployments run several (one per site or organisation) and workloads fail over between them.
//
// OpenZiti keeps process-wide registries, so run at most one Router per process.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"text/template"

	"github.com/openziti/sdk-golang/ziti"
	"github.com/openziti/ziti/common/version"
	zrouter "github.com/openziti/ziti/router"
	"github.com/openziti/ziti/router/enroll"
	"github.com/openziti/ziti/router/env"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// Config configures a Router.
type Config struct {
	// DataDir holds the router's configuration and its enrolled identity. Required.
	DataDir string
	// Token is the enrollment token from the controller. Required on first start only.
	Token string
	// EdgeAddr is where the router listens for workloads (host:port). Default 127.0.0.1:3022.
	EdgeAddr string
	// AdvertiseAddr is how workloads reach EdgeAddr. Default EdgeAddr (127.0.0.1 for a wildcard host).
	AdvertiseAddr string
	// LinkAddr, if set (host:port), accepts links from other routers, so traffic entering at one router can
	// reach services hosted through another. Every router dials links to the routers that listen; at least one
	// router of a multi-router network must listen. Default: none.
	LinkAddr string
	// LinkAdvertise is how other routers reach LinkAddr. Default LinkAddr (127.0.0.1 for a wildcard host).
	LinkAdvertise string
	// CtrlEndpoint, if set, is the controller's control-plane address (tls:HOST:PORT) and replaces the one the
	// router was enrolled with: for a controller that moved to another host or port. Default: the address in the
	// enrollment token, remembered in DataDir (or the last one set here).
	CtrlEndpoint string
	// Logger receives state changes. Default: discard.
	Logger *slog.Logger
}

// Router is an edge router of the overlay.
type Router struct {
	cfg   Config
	log   *slog.Logger
	ready chan struct{}
	once  sync.Once
}

// New checks cfg.
func New(cfg Config) (*Router, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("router: DataDir is required")
	}
	if cfg.EdgeAddr == "" {
		cfg.EdgeAddr = "127.0.0.1:3022"
	}
	host, port, err := net.SplitHostPort(cfg.EdgeAddr)
	if err != nil {
		return nil, fmt.Errorf("router: edge address %q: %w", cfg.EdgeAddr, err)
	}
	if cfg.AdvertiseAddr == "" {
		if host == "0.0.0.0" || host == "::" || host == "" {
			host = "127.0.0.1"
		}
		cfg.AdvertiseAddr = net.JoinHostPort(host, port)
	}
	if cfg.LinkAddr != "" && cfg.LinkAdvertise == "" {
		lh, lp, err := net.SplitHostPort(cfg.LinkAddr)
		if err != nil {
			return nil, fmt.Errorf("router: link address %q: %w", cfg.LinkAddr, err)
		}
		if lh == "0.0.0.0" || lh == "::" || lh == "" {
			lh = "127.0.0.1"
		}
		cfg.LinkAdvertise = net.JoinHostPort(lh, lp)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Router{cfg: cfg, log: cfg.Logger, ready: make(chan struct{})}, nil
}

// Ready is closed once the router has started and connected to the controller.
func (r *Router) Ready() <-chan struct{} { return r.ready }

// Run enrolls the router on first start, runs it, and shuts it down when ctx is cancelled.
func (r *Router) Run(ctx context.Context) error {
	err := errors.New("router: Run called twice")
	r.once.Do(func() { err = r.run(ctx) })
	return err
}

func (r *Router) run(ctx context.Context) error {
	if err := os.MkdirAll(r.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	dir, err := filepath.Abs(r.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	path := filepath.Join(dir, "router.yaml")
	if _, err := os.Stat(filepath.Join(dir, "cert.pem")); err != nil {
		if err := r.enroll(dir, path); err != nil {
			return err
		}
	} else if err := r.repoint(dir); err != nil {
		return err
	} else if err := r.writeConfig(dir, path, ""); err != nil {
		return err
	}
	cfg, err := env.LoadConfig(path)
	if err != nil {
		return fmt.Errorf("router: load config: %w", err)
	}
	zr := zrouter.Create(cfg, version.GetCmdBuildInfo())
	if err := zr.Start(); err != nil {
		return fmt.Errorf("router: start: %w", err)
	}
	close(r.ready)
	r.log.Info("router running", "edge", r.cfg.AdvertiseAddr)
	<-ctx.Done()
	if err := zr.Shutdown(); err != nil {
		r.log.Warn("router shutdown", "err", err)
	}
	return nil
}

func (r *Router) enroll(dir, path string) error {
	if r.cfg.Token == "" {
		return errors.New("router: not enrolled yet and no enrollment token given")
	}
	tok, err := api.DecodeRouterToken(r.cfg.Token)
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ctrl"), []byte(tok.CtrlEndpoint), 0o600); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	if err := r.writeConfig(dir, path, tok.CtrlEndpoint); err != nil {
		return err
	}
	cfg, err := env.LoadConfigWithOptions(path, false)
	if err != nil {
		return fmt.Errorf("router: load config: %w", err)
	}
	if err := enroll.NewRestEnroller(cfg).Enroll([]byte(tok.JWT), true, "", ziti.KeyAlgVar("EC")); err != nil {
		return fmt.Errorf("router: enroll: %w", err)
	}
	r.log.Info("router enrolled", "name", tok.Name)
	return nil
}

// repoint makes an enrolled router use Config.CtrlEndpoint from now on, if it names another controller address
// than the one remembered: it replaces the remembered one and drops OpenZiti's own list of the controller's
// addresses (endpoints.yml), which names the old one too.
func (r *Router) repoint(dir string) error {
	if r.cfg.CtrlEndpoint == "" {
		return nil
	}
	file := filepath.Join(dir, "ctrl")
	if old, err := os.ReadFile(file); err == nil && string(old) == r.cfg.CtrlEndpoint {
		return nil
	}
	if err := os.Remove(filepath.Join(dir, "endpoints.yml")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("router: %w", err)
	}
	if err := os.WriteFile(file, []byte(r.cfg.CtrlEndpoint), 0o600); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	r.log.Info("router uses a new controller address", "ctrl", r.cfg.CtrlEndpoint)
	return nil
}

var configTemplate = template.Must(template.New("router").Parse(`v: 3
identity:
  cert: "{{.Dir}}/cert.pem"
  server_cert: "{{.Dir}}/server_cert.pem"
  key: "{{.Dir}}/key.pem"
  ca: "{{.Dir}}/ca.pem"
ctrl:
  endpoint: {{.Ctrl}}
link:
  dialers:
    - binding: transport
{{- if .Link}}
  listeners:
    - binding: transport
      bind: tls:{{.Link}}
      advertise: tls:{{.LinkAdvertise}}
{{- end}}
listeners:
  - binding: edge
    address: tls:{{.Edge}}
    options:
      advertise: {{.Advertise}}
edge:
  heartbeatIntervalSeconds: 60
  csr:
    sans:
      dns:
        - localhost
{{- range .DNS}}
        - {{.}}
{{- end}}
      ip:
        - "127.0.0.1"
{{- range .IPs}}
        - "{{.}}"
{{- end}}
`))

func (r *Router) writeConfig(dir, path, ctrl string) error {
	if ctrl == "" {
		b, err := os.ReadFile(filepath.Join(dir, "ctrl"))
		if err != nil {
			return fmt.Errorf("router: enrolled router has no controller endpoint: %w", err)
		}
		ctrl = string(b)
	}
	host, _, _ := net.SplitHostPort(r.cfg.AdvertiseAddr)
	var dns, ips []string
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			ips = append(ips, host)
		}
	} else if host != "localhost" {
		dns = append(dns, host)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	err = configTemplate.Execute(f, map[string]any{"Dir": dir, "Ctrl": ctrl, "Edge": r.cfg.EdgeAddr,
		"Advertise": r.cfg.AdvertiseAddr, "DNS": dns, "IPs": ips, "Link": r.cfg.LinkAddr, "LinkAdvertise": r.cfg.LinkAdvertise})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("router: write config: %w", err)
	}
	return nil
}
