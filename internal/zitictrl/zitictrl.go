// Package zitictrl runs the OpenZiti controller inside the process: its PKI, its configuration, first-run
// initialisation, and a management client through which the rest of Umbra maps SPIFFE identities, services and
// policies onto the overlay.
package zitictrl

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/openziti/storage/boltz"
	"github.com/openziti/ziti/common/version"
	zcontroller "github.com/openziti/ziti/controller"
	"github.com/openziti/ziti/controller/config"
	"github.com/openziti/ziti/controller/server"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/freeport"
	"github.com/umbra-mesh/umbra/internal/pki"
)

// Config says where the embedded controller keeps its state and which addresses it uses.
type Config struct {
	// Dir holds the PKI, configuration and bbolt database. Required.
	Dir string
	// BindHost is the interface to listen on. Default 127.0.0.1.
	BindHost string
	// AdvertiseHost is the host name or address routers and SDKs use to reach this controller. Default BindHost.
	AdvertiseHost string
	// CtrlPort is the control-plane port routers connect to. Required.
	CtrlPort int
	// APIPort serves the OpenZiti edge client API, which workloads authenticate against. Required.
	APIPort int
	// MgmtPort serves the OpenZiti management and fabric APIs, on 127.0.0.1 only: only this process uses them,
	// and workloads must not even reach a login page for them. Default: a free port picked at start.
	MgmtPort int
	// TrustDomain names the overlay's own trust domain (distinct from the workloads' SPIFFE trust domain).
	TrustDomain spiffeid.TrustDomain
	// Cluster, when set, makes this controller a member of an OpenZiti controller cluster (raft) instead of a
	// lone controller on its own bbolt database. docs/cluster.md explains the topology.
	Cluster *Cluster
}

// Controller is a running embedded OpenZiti controller.
type Controller struct {
	cfg    Config
	log    *slog.Logger
	edge   *server.Controller
	fabric *zcontroller.Controller
	ca     *pki.CA
	pool   *x509.CertPool
	mgmt   *Mgmt
	// revoking serialises revokeTokens (revokeTokensOnce).
	revoking sync.Mutex
}

const adminUser = "umbra-admin"

// Start writes PKI and configuration on first run, starts the controller and waits until its API answers.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Controller, error) {
	if cfg.Dir == "" || cfg.CtrlPort == 0 || cfg.APIPort == 0 {
		return nil, errors.New("zitictrl: Dir, CtrlPort and APIPort are required")
	}
	if cfg.BindHost == "" {
		cfg.BindHost = "127.0.0.1"
	}
	if cfg.AdvertiseHost == "" {
		cfg.AdvertiseHost = cfg.BindHost
		if cfg.BindHost == "0.0.0.0" || cfg.BindHost == "::" {
			cfg.AdvertiseHost = "127.0.0.1"
		}
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("zitictrl: %w", err)
	}
	if cfg.MgmtPort == 0 {
		port, err := freeLoopbackPort()
		if err != nil {
			return nil, fmt.Errorf("zitictrl: management port: %w", err)
		}
		cfg.MgmtPort = port
	}
	if err := checkJoinable(cfg); err != nil {
		return nil, err
	}
	ca, err := ensurePKI(cfg)
	if err != nil {
		return nil, err
	}
	password, err := ensureSecret(filepath.Join(cfg.Dir, "admin.secret"))
	if err != nil {
		return nil, err
	}
	if err := checkAPIAddress(cfg); err != nil {
		return nil, err
	}
	path, err := writeConfig(cfg)
	if err != nil {
		return nil, err
	}
	zcfg, err := config.LoadConfig(path)
	if err != nil {
		return nil, fmt.Errorf("zitictrl: load config: %w", err)
	}
	if zcfg.Raft != nil && zcfg.Raft.Logger == nil {
		zcfg.Raft.Logger = raftLogger(log)
	}
	fabric, err := zcontroller.NewController(zcfg, version.GetCmdBuildInfo())
	if err != nil {
		return nil, fmt.Errorf("zitictrl: new controller: %w", err)
	}
	if err := detachFromBbolt(fabric.GetNetwork().GetStores()); err != nil {
		fabric.Shutdown()
		return nil, err
	}
	if err := fixAPIAddresses(fabric, zcfg); err != nil {
		fabric.Shutdown()
		return nil, err
	}
	edge, err := server.NewController(fabric)
	if err != nil {
		return nil, fmt.Errorf("zitictrl: new edge controller: %w", err)
	}
	edge.Initialize()
	admin, err := edge.AppEnv.Managers.Identity.ReadDefaultAdmin()
	if err != nil && !boltz.IsErrNotFoundErr(err) {
		edge.Shutdown()
		return nil, fmt.Errorf("zitictrl: read default admin: %w", err)
	}
	joining := cfg.Cluster != nil && cfg.Cluster.Join != ""
	// A member that joins gets the administrator (and everything else) from the cluster; initialising one here
	// would bootstrap a cluster of its own.
	if admin == nil && !joining {
		// In a cluster this also bootstraps raft with this controller as its only voter
		// (IdentityManager.InitializeDefaultAdmin calls the dispatcher's Bootstrap).
		if err := edge.AppEnv.Managers.Identity.InitializeDefaultAdmin(adminUser, password, "Umbra controller"); err != nil {
			edge.Shutdown()
			return nil, fmt.Errorf("zitictrl: initialise admin: %w", err)
		}
	}
	edge.Run()
	go func() {
		if err := fabric.Run(); err != nil {
			log.Error("overlay controller stopped", "err", err)
		}
	}()
	c := &Controller{cfg: cfg, log: log, edge: edge, fabric: fabric, ca: ca, pool: x509.NewCertPool()}
	c.pool.AddCert(ca.Cert)
	if joining {
		if err := c.join(ctx, cfg.Cluster.Join); err != nil {
			c.Stop()
			return nil, err
		}
	}
	if err := c.waitReady(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	c.mgmt = newMgmt(c.mgmtURL(), adminUser, password, c.pool)
	if err := c.loginMgmt(ctx, joining); err != nil {
		c.Stop()
		return nil, err
	}
	if c.Clustered() {
		go c.keepListed()
		c.guardDisabled()
	}
	return c, nil
}

// loginMgmt logs the management client in. A member of a cluster that joined may hold the administrator's record
// before its password authenticator is found ("authenticator lookup returned nil", INVALID_AUTH: seen at the
// first start of three members on loopback): it tries again for up to 30 s.
func (c *Controller) loginMgmt(ctx context.Context, joined bool) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := c.mgmt.login()
		if err == nil || !joined || time.Now().After(deadline) {
			return err
		}
		c.log.Info("the management client could not log in yet; the administrator's authenticator has not arrived", "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Stop shuts the controller down.
func (c *Controller) Stop() {
	c.edge.Shutdown()
}

// Mgmt returns the management client, logged in as the controller's own administrator.
func (c *Controller) Mgmt() *Mgmt { return c.mgmt }

// Fabric returns the in-process fabric controller (circuits, routers).
func (c *Controller) Fabric() *zcontroller.Controller { return c.fabric }

// APIURL is the base URL of the edge APIs, e.g. https://127.0.0.1:1280.
func (c *Controller) APIURL() string {
	return "https://" + net.JoinHostPort(c.cfg.AdvertiseHost, fmt.Sprint(c.cfg.APIPort))
}

// mgmtURL is the base URL of the management and fabric APIs, reachable from this host only.
func (c *Controller) mgmtURL() string {
	return "https://" + net.JoinHostPort("127.0.0.1", fmt.Sprint(c.cfg.MgmtPort))
}

// freeLoopbackPort picks the management listener's port, below the kernel's ephemeral range (freeport).
func freeLoopbackPort() (int, error) {
	ports, err := freeport.Loopback(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// ClientAPIURL is the edge client API that SDKs authenticate against.
func (c *Controller) ClientAPIURL() string { return c.APIURL() + "/edge/client/v1" }

// fixAPIAddresses makes the overlay controller know its own API addresses before anything asks for them.
//
// OpenZiti computes the addresses it tells its peers (in the raft mesh hello) and SDKs (GET /controllers, which
// sdk-golang reads after authenticating to learn the other members) once, on first use, from the web
// configuration that fabric.Run loads (controller.GetApiAddresses, a sync.Once, in v1.7.2). A mesh hello before
// Run has loaded it (a joining member asks to join as soon as Run starts; a restarted member dials its peers)
// caches an empty list for the life of the process: every member was then listed with no API address, and SDKs
// learned no other member. So the configuration is loaded here, the addresses computed, and the parsed servers
// dropped again for Run to load them (loading appends, and two servers would bind the same port).
func fixAPIAddresses(fabric *zcontroller.Controller, zcfg *config.Config) error {
	xw := fabric.GetXWebInstance()
	if err := zcfg.Configure(xw); err != nil {
		return fmt.Errorf("zitictrl: web configuration: %w", err)
	}
	apis, _ := fabric.GetApiAddresses()
	xw.GetConfig().ServerConfigs = nil
	if len(apis["edge-client"]) == 0 {
		return errors.New("zitictrl: the overlay controller reports no edge client API address; check the web section of ctrl.yaml")
	}
	return nil
}

// ClientAPIURLs lists the edge client API of every member of the controller's cluster that the overlay knows,
// this controller's first and the others sorted; a lone controller's list is its own API alone. A member whose
// addresses have not reached the replicated controllers store yet (just after it joined) is missing.
func (c *Controller) ClientAPIURLs() []string {
	own := c.ClientAPIURL()
	out := []string{own}
	if !c.Clustered() {
		return out
	}
	res, err := c.edge.AppEnv.Managers.Controller.BaseList("true limit none")
	if err != nil {
		c.log.Debug("listing the overlay cluster's controllers failed", "err", err)
		return out
	}
	var others []string
	for _, m := range res.Entities {
		for _, a := range m.ApiAddresses["edge-client"] {
			if a.Url != own && !slices.Contains(others, a.Url) {
				others = append(others, a.Url)
			}
		}
	}
	slices.Sort(others)
	return append(out, others...)
}

// CtrlEndpoint is the control-plane address routers are configured with.
func (c *Controller) CtrlEndpoint() string {
	return "tls:" + net.JoinHostPort(c.cfg.AdvertiseHost, fmt.Sprint(c.cfg.CtrlPort))
}

// CACertPEM is the overlay's root certificate: SDKs and routers trust the controller and routers through it.
func (c *Controller) CACertPEM() []byte { return c.ca.CertPEM() }

func (c *Controller) waitReady(ctx context.Context) error {
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool, MinVersion: tls.VersionTLS12}},
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(60 * time.Second)
	for _, url := range []string{c.APIURL() + "/edge/client/v1/version", c.mgmtURL() + "/edge/management/v1/version"} {
		for {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return fmt.Errorf("zitictrl: %w", err)
			}
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
				err = fmt.Errorf("status %s", resp.Status)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("zitictrl: controller API at %s did not come up: %v", url, err)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("zitictrl: %w", ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

func ensurePKI(cfg Config) (*pki.CA, error) {
	dir := filepath.Join(cfg.Dir, "pki")
	caCert, caKey := filepath.Join(dir, "ca.cert"), filepath.Join(dir, "ca.key")
	if _, err := os.Stat(caCert); err == nil {
		ca, err := pki.LoadCA(caCert, caKey)
		if err != nil {
			return nil, fmt.Errorf("zitictrl: %w", err)
		}
		if cfg.Cluster != nil {
			if err := ensureMemberCert(cfg, ca); err != nil {
				return nil, err
			}
		} else if _, err := os.Stat(filepath.Join(dir, "ctrl.chain.pem")); errors.Is(err, os.ErrNotExist) {
			// The CA was made ahead of the first start (EnsureClusterSecrets): the controller's own certificate
			// is still to issue.
			if err := issueControllerCert(cfg, ca, randomHex(6), ""); err != nil {
				return nil, err
			}
		}
		return ca, nil
	}
	if cfg.Cluster != nil && cfg.Cluster.Join != "" {
		return nil, fmt.Errorf("zitictrl: %s has no overlay CA; a controller joins a cluster with the cluster's CA and "+
			"admin secret: copy them from a member's overlay directory first (zitictrl.CopyClusterSecrets)", cfg.Dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("zitictrl: %w", err)
	}
	now := time.Now()
	ca, err := pki.NewCA("Umbra overlay root", spiffeid.TrustDomain{}, 10*365*24*time.Hour, now)
	if err != nil {
		return nil, fmt.Errorf("zitictrl: %w", err)
	}
	id := randomHex(6)
	cn := "" // a lone controller keeps IssueServer's CN; a cluster member's CN is its member id
	if cfg.Cluster != nil {
		cn = id
	}
	if err := issueControllerCert(cfg, ca, id, cn); err != nil {
		return nil, err
	}
	// The CA files go last: their presence marks the PKI as complete.
	if err := ca.Save(caCert, caKey); err != nil {
		return nil, fmt.Errorf("zitictrl: %w", err)
	}
	return ca, nil
}

// issueControllerCert writes a new key and certificate for the controller, with spiffe://TD/controller/ID as
// its URI SAN and cn as its subject CN (IssueServer's default when empty).
func issueControllerCert(cfg Config, ca *pki.CA, id, cn string) error {
	dir := filepath.Join(cfg.Dir, "pki")
	now := time.Now()
	key, err := pki.NewKey()
	if err != nil {
		return fmt.Errorf("zitictrl: %w", err)
	}
	dns := []string{"localhost"}
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	for _, h := range []string{cfg.AdvertiseHost, cfg.BindHost} {
		if ip := net.ParseIP(h); ip != nil {
			if !ip.IsUnspecified() {
				ips = append(ips, ip)
			}
		} else if h != "" && h != "localhost" {
			dns = append(dns, h)
		}
	}
	td := cfg.TrustDomain
	if td.IsZero() {
		td = spiffeid.RequireTrustDomainFromString("overlay.umbra")
	}
	uri, err := url.Parse(fmt.Sprintf("spiffe://%s/controller/%s", td.Name(), id))
	if err != nil {
		return fmt.Errorf("zitictrl: %w", err)
	}
	var leaf *x509.Certificate
	if cn == "" {
		leaf, err = ca.IssueServer(key.Public(), dns, ips, []*url.URL{uri}, 10*365*24*time.Hour, now)
	} else {
		leaf, err = ca.IssueServerCN(key.Public(), cn, dns, ips, []*url.URL{uri}, 10*365*24*time.Hour, now)
	}
	if err != nil {
		return fmt.Errorf("zitictrl: %w", err)
	}
	keyPEM, err := pki.EncodeECKeyPEM(key)
	if err != nil {
		return fmt.Errorf("zitictrl: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ctrl.key"), keyPEM, 0o600); err != nil {
		return fmt.Errorf("zitictrl: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ctrl.chain.pem"), pki.EncodeCertsPEM(leaf, ca.Cert), 0o644); err != nil {
		return fmt.Errorf("zitictrl: %w", err)
	}
	return nil
}

func ensureSecret(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	s := randomHex(24)
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("zitictrl: %w", err)
	}
	return s, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return hex.EncodeToString(b)
}

var configTemplate = template.Must(template.New("ctrl").Parse(`v: 3
{{if .DB}}db: "{{.Dir}}/ctrl.db"
{{end}}{{if .Cluster}}cluster:
  dataDir: "{{.Dir}}/raft"
  heartbeatTimeout: 2s
  electionTimeout: 2s
  leaderLeaseTimeout: 2s
{{end}}identity:
  cert: "{{.Dir}}/pki/ctrl.chain.pem"
  server_cert: "{{.Dir}}/pki/ctrl.chain.pem"
  key: "{{.Dir}}/pki/ctrl.key"
  ca: "{{.Dir}}/pki/ca.cert"
ctrl:
  listener: tls:{{.Bind}}:{{.CtrlPort}}
{{- if .Cluster}}
  options:
    advertiseAddress: tls:{{.Advertise}}:{{.CtrlPort}}
{{- end}}
healthChecks:
  boltCheck:
    interval: 30s
    timeout: 20s
    initialDelay: 30s
edge:
  api:
    sessionTimeout: 30m
    address: {{.Advertise}}:{{.APIPort}}
  enrollment:
    signingCert:
      cert: "{{.Dir}}/pki/ca.cert"
      key: "{{.Dir}}/pki/ca.key"
    edgeIdentity:
      duration: 180m
    edgeRouter:
      duration: 180m
web:
  - name: overlay-api
    bindPoints:
      - interface: {{.Bind}}:{{.APIPort}}
        address: {{.Advertise}}:{{.APIPort}}
    options:
      minTLSVersion: TLS1.2
    apis:
      - binding: edge-client
{{- if .Cluster}}
      - binding: edge-oidc
{{- end}}
  - name: overlay-management
    bindPoints:
      - interface: 127.0.0.1:{{.MgmtPort}}
        address: 127.0.0.1:{{.MgmtPort}}
    options:
      minTLSVersion: TLS1.2
      # Longer than the 10 s its client (edge-api rest_util) keeps an idle connection, so that the client closes
      # it first: with the default 5 s a request sent on one as the server closed it found it closed (EOF).
      idleTimeout: 30s
    apis:
      - binding: edge-management
      - binding: fabric
`))

// APIMovedError says that the overlay API would move from where the data directory's identities reach it: each
// identity enrolled there names the address it was enrolled at, and would no longer reach the overlay.
type APIMovedError struct {
	// Stored is the address the identities name, Given the one the controller was started with (HOST:PORT).
	Stored, Given string
}

func (e *APIMovedError) Error() string {
	return fmt.Sprintf("zitictrl: the identities of this data directory reach the overlay API at %s, not at %s", e.Stored, e.Given)
}

// apiAddressLine finds the edge API address in a configuration configTemplate wrote.
var apiAddressLine = regexp.MustCompile(`(?m)^edge:\n  api:\n(?:    .*\n)*?    address: (\S+)$`)

// checkAPIAddress refuses to start the overlay API at another address than the one of the last start.
func checkAPIAddress(cfg Config) error {
	b, err := os.ReadFile(filepath.Join(cfg.Dir, "ctrl.yaml"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("zitictrl: %w", err)
	}
	m := apiAddressLine.FindSubmatch(b)
	if m == nil {
		return nil
	}
	given := fmt.Sprintf("%s:%d", cfg.AdvertiseHost, cfg.APIPort) // as configTemplate writes it
	if stored := string(m[1]); stored != given {
		return &APIMovedError{Stored: stored, Given: given}
	}
	return nil
}

func writeConfig(cfg Config) (string, error) {
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return "", fmt.Errorf("zitictrl: %w", err)
	}
	path := filepath.Join(dir, "ctrl.yaml")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("zitictrl: %w", err)
	}
	err = configTemplate.Execute(f, map[string]any{
		"Dir": dir, "Bind": cfg.BindHost, "Advertise": cfg.AdvertiseHost,
		"CtrlPort": cfg.CtrlPort, "APIPort": cfg.APIPort, "MgmtPort": cfg.MgmtPort,
		"Cluster": cfg.Cluster != nil, "DB": cfg.Cluster == nil || migrateIntoCluster(cfg, dir),
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("zitictrl: write config: %w", err)
	}
	return path, nil
}
