package controller

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/console"
	"github.com/umbra-mesh/umbra/internal/enrolltoken"
	"github.com/umbra-mesh/umbra/internal/natsd"
	"github.com/umbra-mesh/umbra/internal/pki"
	"github.com/umbra-mesh/umbra/internal/zitictrl"
	"github.com/umbra-mesh/umbra/workgroups"
)

// storeOpenTimeout bounds opening (and at the first start, creating) the JetStream stores.
const storeOpenTimeout = 3 * time.Minute

// Server is the Umbra controller. Create it with New, start it with Run.
type Server struct {
	cfg   Config
	log   *slog.Logger
	td    spiffeid.TrustDomain
	ready chan struct{}
	// hosted is closed once the API is served on the overlay.
	hosted chan struct{}

	ca           *pki.CA
	tokens       *enrolltoken.Signer
	auditKey     ed25519.PrivateKey // signs audit checkpoints
	controllerID spiffeid.ID
	adminID      spiffeid.ID

	ns        *natsd.Server
	nc        *nats.Conn
	ids       *identityStore
	revoked   *revocationFeed
	cuts      *overlayCuts // revoked or suspended identities the overlay still admits (overlaycuts.go)
	gov       *governance
	events    *sessionEvents // the session event feed (events.go)
	alerts    *alerter       // the anomaly detector's follower (alerts.go); nil when it is off
	zc        *zitictrl.Controller
	grantUse  *grantUses    // when identities last dialed or bound their services (grantuse.go)
	findOnce  sync.Mutex    // one search of the trail for a gateway's record at a time (findGatewayRecord)
	findAfter time.Duration // api.AuditFindAfter, unless a test set it
	// clusterMembers maps the cluster's overlay members to their NATS servers (clusterops.go); unset on a lone
	// controller.
	clusterMembers table[clusterMemberRecord]
	authPolicy     string
	self           *agentsdk.Agent
	// adPolicies holds the names of the shared advertisement policies this process has created or checked.
	adPolicies sync.Map
	// adsSettled is closed when the start-up reconciliation of advertisement services and policies, then of
	// advertisements and overlay attributes with the workgroups (reconcileMembers), has ended.
	adsSettled chan struct{}
	// raceStep, set only by tests, runs at the named steps of advertisement writes where another controller's
	// change would race them: "ad read" in settleAdService between its read of an advertisement and its write of
	// the service, "ad checked" in advertise between its check of the provider's workgroups and its create.
	raceStep func(step string, ad workgroups.AdvertisementID)

	platform platformAdmin

	metrics     *metrics            // nil: none kept
	gatherer    prometheus.Gatherer // what /metrics serves
	metricsAddr net.Addr

	runOnce sync.Once
	tasks   tasks      // every goroutine Run started; Run waits for them before it returns
	mu      sync.Mutex // guards self, set once a router is online
}

// New checks cfg and returns a Server that Run will start.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	var m *metrics
	var gatherer prometheus.Gatherer
	if reg := cfg.MetricsRegistry; reg != nil || cfg.MetricsListen != "" {
		if reg == nil {
			own := prometheus.NewRegistry()
			reg, gatherer = own, own
		} else if g, ok := reg.(prometheus.Gatherer); ok {
			gatherer = g
		} else if cfg.MetricsListen != "" {
			return nil, errors.New("controller: MetricsListen is set, but MetricsRegistry cannot be read (it is not a prometheus.Gatherer): give a *prometheus.Registry or leave it unset")
		}
		if m, err = newMetrics(reg); err != nil {
			return nil, err
		}
	}
	return &Server{
		metrics:      m,
		gatherer:     gatherer,
		cfg:          cfg,
		log:          cfg.Logger,
		td:           td,
		ready:        make(chan struct{}),
		hosted:       make(chan struct{}),
		adsSettled:   make(chan struct{}),
		revoked:      newRevocationFeed(),
		cuts:         newOverlayCuts(),
		controllerID: spiffeid.RequireFromSegments(td, api.ControllerAPIOrg, api.ControllerAPIKind, api.ControllerAPIName),
		adminID:      spiffeid.RequireFromSegments(td, api.PlatformAdminOrg, api.PlatformAdminKind, api.PlatformAdminName),
	}, nil
}

// Ready is closed once the controller serves enrollment and its overlay API.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// TrustDomain is the trust domain of the SVIDs this controller issues.
func (s *Server) TrustDomain() spiffeid.TrustDomain { return s.td }

// AdminIdentityPath is the identity file of the platform administrator, written on first start and on a
// break-glass reset, and kept fresh while it holds the current administrator.
func (s *Server) AdminIdentityPath() string { return filepath.Join(s.cfg.DataDir, "admin.json") }

// AdminID is the SPIFFE ID of the current platform administrator, as this controller last read it.
func (s *Server) AdminID() spiffeid.ID {
	if id := s.platform.current.Load(); id != nil {
		return *id
	}
	return s.adminID
}

// EnrollURL is where workloads redeem enrollment tokens.
func (s *Server) EnrollURL() string { return s.enrollURL() }

// CtrlEndpoint is the overlay control-plane address routers connect to (tls:HOST:PORT), once Ready.
func (s *Server) CtrlEndpoint() string { return s.zc.CtrlEndpoint() }

// Hosted is closed once the governance API and the relay are served on the overlay, which needs a router online.
func (s *Server) Hosted() <-chan struct{} { return s.hosted }

func (s *Server) enrollURL() string {
	return "https://" + net.JoinHostPort(s.cfg.AdvertiseHost, strconv.Itoa(s.cfg.EnrollPort))
}

// Run starts the controller, signals Ready, and serves until ctx is cancelled; then it shuts down. It returns
// only once every goroutine it started has ended, and NATS and the overlay controller are stopped.
func (s *Server) Run(ctx context.Context) error {
	err := errors.New("controller: Run called twice")
	s.runOnce.Do(func() {
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		err = s.start(rctx)
		if err == nil {
			close(s.ready)
			s.log.Info("controller ready", "trust_domain", s.td.Name(), "enroll", s.enrollURL(), "overlay_api", s.zc.APIURL())
			<-rctx.Done()
		}
		cancel()
		// Everything started ends with rctx: the servers shut down, the relay closes its connections, the
		// recorder and the refusal summariser (which writes its last summaries first, within 2 s) finish. NATS
		// must still be up for that.
		s.tasks.wg.Wait()
		s.stop()
	})
	return err
}

func (s *Server) start(ctx context.Context) error {
	dir := s.cfg.DataDir
	if err := os.MkdirAll(filepath.Join(dir, "spiffe"), 0o700); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if err := s.loadAuthority(); err != nil {
		return err
	}
	ncfg := natsd.Config{StoreDir: filepath.Join(dir, "jetstream"), ListenAddr: s.cfg.NATSListen, SyncAlways: !s.cfg.NATSLazySync,
		Log: s.log.With("source", "nats")}
	if s.cfg.NATSListen != "" {
		host, _, _ := net.SplitHostPort(s.cfg.NATSListen)
		var err error
		if ncfg.TLS, err = natsTLS(s.ca, s.controllerID, host, s.cfg.AdvertiseHost); err != nil {
			return err
		}
	}
	var err error
	if ncfg.ServerName, err = natsServerName(s.cfg); err != nil {
		return err
	}
	if ncfg.Cluster, err = s.natsCluster(); err != nil {
		return err
	}
	ns, err := natsd.Start(ncfg)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	s.ns = ns
	if ncfg.Cluster != nil {
		s.log.Info("waiting for the NATS cluster: a majority of its controllers must be up", "server", ns.Name(), "routes", s.cfg.NATSRoutes)
		if err := ns.WaitJetStream(ctx); err != nil {
			return fmt.Errorf("controller: %w", err)
		}
	}
	if s.nc, err = ns.Connect("umbra-controller"); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	njs, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	// Every bucket and stream is created with the configured replica count.
	js := jetstream.JetStream(replicated{JetStream: njs, n: s.cfg.Replicas})
	// Creating a replicated stream or bucket answers once its raft group has a leader, which on a loaded
	// machine takes longer than JetStream's default 5 s request timeout: the stores get a deadline of their own.
	octx, cancelOpen := context.WithTimeout(ctx, storeOpenTimeout)
	defer cancelOpen()
	if s.ids, err = openIdentityStore(octx, js); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if s.gov, err = openGovernance(octx, js, s.log, s.controllerID.String(), s.cfg); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if s.gov.lead != nil {
		s.tasks.spawn(func() { s.gov.lead.run(ctx) })
	}
	s.tasks.spawn(func() { s.gov.rec.run(ctx) })
	s.tasks.spawn(func() { s.gov.summariseRefusals(ctx, s.log) })
	s.tasks.spawn(func() { s.gov.budget.run(ctx) })
	s.tasks.spawn(func() { s.gov.wgCopy.run(ctx) })
	s.tasks.spawn(func() { s.gov.adCopy.run(ctx) })
	s.tasks.spawn(func() { s.gov.authz.copy.run(ctx) })
	s.events = newSessionEvents(s.gov.sessions, s.gov.sessionStream, s.log)
	s.tasks.spawn(func() { s.events.run(ctx) })
	if s.alerts, err = s.newAlerts(ctx); err != nil {
		return err
	}
	if err := s.startMetrics(ctx, js); err != nil {
		return err
	}
	if err := s.startOverlay(ctx); err != nil {
		return err
	}
	// After the overlay: a joining member's start can outlast octx.
	rctx, cancelRegister := context.WithTimeout(ctx, storeOpenTimeout)
	defer cancelRegister()
	if err := s.registerClusterMember(rctx, js); err != nil {
		return err
	}
	if s.grantUse, err = openGrantUses(ctx, js, s.zc, s.cfg.GrantUseGranularity, s.log); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	s.tasks.spawn(func() { s.grantUse.run(ctx) })
	if err := s.startEnrollment(ctx); err != nil {
		return err
	}
	if err := s.ensureAdmin(ctx); err != nil {
		return err
	}
	// The API is hosted through routers: bind it once one is online (in `umbra dev` the router starts after
	// the controller is ready).
	s.tasks.spawn(func() { s.hostAPIWhenRouted(ctx) })
	s.tasks.spawn(func() { s.reconcileAdPoliciesOnce(ctx) })
	s.tasks.spawn(func() { s.expireSessions(ctx) })
	s.tasks.spawn(func() { s.purgeEndedSessionsEvery(ctx) })
	s.tasks.spawn(func() { s.checkpointEvery(ctx, s.cfg.CheckpointInterval) })
	s.tasks.spawn(func() { s.keepAdminFresh(ctx) })
	s.tasks.spawn(func() { s.followRevocations(ctx) })
	s.tasks.spawn(func() { s.keepCuts(ctx) })
	// Last: an automatic suspension needs the overlay.
	s.startAlerts(ctx)
	return nil
}

// stop closes what the goroutines of Run used, once they have ended.
func (s *Server) stop() {
	s.mu.Lock()
	self := s.self
	s.mu.Unlock()
	if self != nil {
		self.Close()
	}
	if s.zc != nil {
		s.zc.Stop()
	}
	if s.nc != nil {
		s.nc.Close()
	}
	if s.ns != nil {
		s.ns.Shutdown()
	}
	s.log.Info("controller stopped")
}

// serveHTTP serves srv on ln until ctx ends, then shuts it down (open requests get 2 s to finish; their
// contexts, derived from ctx, are cancelled already).
func (s *Server) serveHTTP(ctx context.Context, name string, srv *http.Server, ln net.Listener) {
	srv.BaseContext = func(net.Listener) context.Context { return ctx }
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		if !errors.Is(err, http.ErrServerClosed) {
			s.log.Error(name+" stopped", "err", err)
		}
		return
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	<-served
}

// loadAuthority loads (or creates on first start) the SPIFFE CA, the token signing key and the audit checkpoint
// key, all in DataDir/spiffe.
func (s *Server) loadAuthority() error {
	a, err := loadAuthorityFiles(s.cfg.DataDir, s.td)
	if err != nil {
		return err
	}
	s.ca, s.tokens, s.auditKey = a.ca, enrolltoken.NewSigner(a.tokenKey), a.auditKey
	return nil
}

// authority is the signing material a controller keeps in DATA/spiffe.
type authority struct {
	ca                 *pki.CA
	tokenKey, auditKey ed25519.PrivateKey
}

// loadAuthorityFiles loads the authority of data directory dir, creating what is missing for trust domain td.
func loadAuthorityFiles(dataDir string, td spiffeid.TrustDomain) (authority, error) {
	var a authority
	dir := filepath.Join(dataDir, "spiffe")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return a, fmt.Errorf("controller: %w", err)
	}
	certPath, keyPath := filepath.Join(dir, "ca.cert"), filepath.Join(dir, "ca.key")
	var err error
	if _, statErr := os.Stat(certPath); statErr == nil {
		a.ca, err = pki.LoadCA(certPath, keyPath)
	} else {
		a.ca, err = pki.NewCA("Umbra SPIFFE CA "+td.Name(), td, 5*365*24*time.Hour, time.Now())
		if err == nil {
			err = a.ca.Save(certPath, keyPath)
		}
	}
	if err != nil {
		return a, fmt.Errorf("controller: SPIFFE CA: %w", err)
	}
	if caTD, terr := spiffeid.TrustDomainFromURI(a.ca.Cert.URIs[0]); terr != nil || caTD != td {
		return a, fmt.Errorf("controller: data dir belongs to trust domain %v, not %s", a.ca.Cert.URIs, td)
	}
	if a.tokenKey, err = loadSeedKey(filepath.Join(dir, "token.key"), "UMBRA TOKEN SIGNING SEED"); err != nil {
		return a, err
	}
	a.auditKey, err = loadSeedKey(filepath.Join(dir, "audit.key"), "UMBRA AUDIT CHECKPOINT SEED")
	return a, err
}

// prepareOverlay registers the SPIFFE CA with the overlay and creates the policies everything relies on.
func (s *Server) prepareOverlay() error {
	m := s.zc.Mgmt()
	err := m.EnsureCA("umbra-spiffe-"+s.td.Name(), s.ca.CertPEM(), func(token string) (string, error) {
		key, err := pki.NewKey()
		if err != nil {
			return "", err
		}
		cert, err := s.ca.IssueWithCN(key.Public(), token, time.Hour, time.Now())
		if err != nil {
			return "", err
		}
		return string(pki.EncodeCertsPEM(cert)), nil
	})
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if s.authPolicy, err = m.EnsureAuthPolicy("umbra-spiffe"); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if err := m.EnsureEdgeRouterPolicies(); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if _, err := m.EnsureService(api.ServiceName, []string{api.ServiceName}); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if err := m.EnsureServicePolicy("umbra-controller-dial", "Dial", []string{"#" + api.AllIdentitiesAttr}, []string{"#" + api.ServiceName}); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if err := m.EnsureServicePolicy("umbra-controller-bind", "Bind", []string{"#" + api.ControllerBindAttr}, []string{"#" + api.ServiceName}); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	// The relay: every identity may dial it, only the controller hosts it.
	if _, err := m.EnsureService(api.RelayService, []string{api.ServiceName}); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	// The console: only administrators may dial it (and it checks again), only the controller hosts it.
	if _, err := m.EnsureService(console.ServiceName, []string{console.ServiceName}); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if err := m.EnsureServicePolicy("umbra-console-dial", "Dial", []string{"#" + console.DialAttr}, []string{"#" + console.ServiceName}); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if err := m.EnsureServicePolicy("umbra-console-bind", "Bind", []string{"#" + api.ControllerBindAttr}, []string{"#" + console.ServiceName}); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	return nil
}

// issueDirect registers id if needed and issues it an SVID for a key the controller generated itself; used for
// the controller's own identity and the platform administrator.
func (s *Server) issueDirect(ctx context.Context, id spiffeid.ID, org, kind, name string, admin bool) (*agentsdk.Identity, error) {
	if _, _, err := s.ids.get(ctx, id); errors.Is(err, errNoIdentity) {
		if _, err := s.registerIdentity(ctx, id, org, kind, name, admin, s.controllerID); err != nil {
			return nil, err
		}
		// On replicated buckets a read may come from a copy one write behind: the record just registered can
		// be missing from it for a moment.
		for attempt := 1; ; attempt++ {
			_, err := s.ids.update(ctx, id, func(r *identityRecord) error {
				r.State, r.EnrolledAt = stateEnrolled, time.Now().UTC()
				return nil
			})
			if err == nil {
				break
			}
			if !errors.Is(err, errNoIdentity) || attempt == 50 || ctx.Err() != nil {
				return nil, err
			}
			time.Sleep(100 * time.Millisecond)
		}
	} else if err != nil {
		return nil, err
	}
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.NewCSR(key, id)
	if err != nil {
		return nil, err
	}
	leaf, err := s.issueSVID(ctx, id, csr)
	if err != nil {
		return nil, err
	}
	return agentsdk.NewIdentity(key, s.credentials(id, leaf))
}

func (s *Server) startEnrollment(ctx context.Context) error {
	cert, err := serverCertificate(s.ca, nil, s.cfg.AdvertiseHost, s.cfg.Host)
	if err != nil {
		return fmt.Errorf("controller: enrollment certificate: %w", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.EnrollPort)))
	if err != nil {
		return fmt.Errorf("controller: enrollment listener: %w", err)
	}
	tlsCfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
	}
	srv := &http.Server{Handler: s.enrollHandler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	s.tasks.spawn(func() { s.serveHTTP(ctx, "enrollment server", srv, tls.NewListener(ln, tlsCfg)) })
	return nil
}

func (s *Server) hostAPIWhenRouted(ctx context.Context) {
	for {
		online, err := s.zc.Mgmt().AnyRouterOnline()
		if err == nil && online {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	// A failure is tried again until it works: members of a cluster starting together race to create their
	// shared identity (the loser's create is refused and the winner's record is there on the next try), and a
	// stream or bucket may be electing a leader. A member that gave up served neither the API nor the relay.
	for wait := 500 * time.Millisecond; ; wait = min(2*wait, 10*time.Second) {
		err := s.startAPI(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("hosting the controller API failed; trying again", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	close(s.hosted)
	s.log.Info("controller API hosted on the overlay", "service", api.ServiceName)
}

// startAPI connects the controller to the overlay under its own SVID and serves the API, the relay and the
// console as dark services. On failure it leaves nothing behind: the overlay connection is closed, and with it
// whatever it had begun to serve.
func (s *Server) startAPI(ctx context.Context) (err error) {
	id, err := s.issueDirect(ctx, s.controllerID, api.ControllerAPIOrg, api.ControllerAPIKind, api.ControllerAPIName, false)
	if err != nil {
		return fmt.Errorf("controller: own identity: %w", err)
	}
	self, err := agentsdk.Connect(ctx, id, agentsdk.WithLogger(s.log), agentsdk.WithRenewer(func(rctx context.Context, csr []byte) (agentsdk.Credentials, error) {
		leaf, err := s.issueSVID(rctx, s.controllerID, csr)
		if err != nil {
			return agentsdk.Credentials{}, err
		}
		return s.credentials(s.controllerID, leaf), nil
	}))
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	s.mu.Lock()
	s.self = self
	s.mu.Unlock()
	defer func() {
		if err != nil {
			s.mu.Lock()
			s.self = nil
			s.mu.Unlock()
			self.Close()
		}
	}()
	ln, err := self.Listen(api.ServiceName)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	srv := &http.Server{Handler: s.apiHandler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	s.tasks.spawn(func() { s.serveHTTP(ctx, "overlay API server", srv, ln) })
	rl, err := s.newRelay()
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	relayLn, err := self.Listen(api.RelayService)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	s.tasks.spawn(func() {
		if err := rl.Serve(ctx, relayLn); err != nil {
			s.log.Error("relay stopped", "err", err)
		}
	})
	consoleLn, err := s.startConsole(ctx, self)
	if err != nil {
		return err
	}
	rec, _, err := s.ids.get(ctx, s.controllerID)
	if err != nil {
		return fmt.Errorf("controller: own identity: %w", err)
	}
	for _, l := range []net.Listener{ln, relayLn, consoleLn} {
		if err := s.waitHosted(ctx, l, rec.OverlayID); err != nil {
			return fmt.Errorf("controller: %w", err)
		}
	}
	return nil
}

// hostedWarnEvery is how long the controller waits for a router to host one of its services before it says so
// (and goes on waiting). terminatorStoreWait is how long it then waits for the overlay's store to hold the
// terminator before it gives the hosting up, to host everything again in a new overlay session.
const (
	hostedWarnEvery     = 30 * time.Second
	terminatorStoreWait = 30 * time.Second
)

// waitHosted returns once l's service, hosted by the overlay identity hostID, can be dialled: Listen returns
// before a router hosts it when none could yet, and a router may count a bind established before the overlay's
// store holds its terminator (docs/overlay-reliability.md). Only then is the controller's API "hosted" (Hosted,
// and `umbra dev ready`). In a cluster the members host as one identity: the store's check is then met by any
// member's terminator, the router's by this member's own.
//
// A router can also count a bind established whose terminator the store never gets: the create it took over was
// never answered ("A burst of terminator removals" there). Waiting longer did not help (a CI run waited two
// minutes for the console's), so after terminatorStoreWait waitHosted fails, and the caller (startAPI, retried
// by hostAPIWhenRouted) hosts everything again in a new overlay session, with new listeners. agentsdk.WaitHosted
// now asks the store too, through the client API (any host's terminator), and the agent's watchdog moves a bind
// the store has lacked for 30 s to a new overlay session; the check here, through the management API, asks for
// this host identity's terminator and bounds the whole wait.
func (s *Server) waitHosted(ctx context.Context, l net.Listener, hostID string) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, hostedWarnEvery)
		err := agentsdk.WaitHosted(wctx, l)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
			return err
		}
		s.log.Warn("no router hosts the service yet; still waiting", "service", l.Addr().String(), "waited", hostedWarnEvery, "err", err)
	}
	sctx, cancel := context.WithTimeout(ctx, terminatorStoreWait)
	defer cancel()
	return s.waitInStore(sctx, l.Addr().String(), hostID)
}

// waitInStore waits until the overlay's store holds a terminator of service hosted by hostID.
func (s *Server) waitInStore(ctx context.Context, service, hostID string) error {
	for {
		found, err := s.zc.Mgmt().HostsService(ctx, service, hostID)
		if err == nil && found {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("%s has no terminator in the overlay's store: %w (last look-up: %v)", service, ctx.Err(), err)
			}
			return fmt.Errorf("%s has no terminator in the overlay's store: %w", service, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// CreateRouterToken registers an edge router and returns its one-time enrollment token.
func (s *Server) CreateRouterToken(name string) (string, error) {
	if !segment.MatchString(name) {
		return "", failf(http.StatusBadRequest, api.CodeBadRequest, "router name %q is not valid", name)
	}
	_, jwt, err := s.zc.Mgmt().CreateEdgeRouter(name)
	if err != nil {
		return "", fmt.Errorf("controller: %w", err)
	}
	tok, err := api.EncodeRouterToken(api.RouterToken{Name: name, JWT: jwt, CtrlEndpoint: s.zc.CtrlEndpoint()})
	if err != nil {
		return "", fmt.Errorf("controller: %w", err)
	}
	return tok, nil
}

// RouterOnline reports whether the named router is connected to the overlay.
func (s *Server) RouterOnline(name string) (bool, error) { return s.zc.Mgmt().RouterOnline(name) }

// tasks is the set of goroutines Run started, which it waits for before it returns.
type tasks struct{ wg sync.WaitGroup }

func (t *tasks) spawn(f func()) {
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		f()
	}()
}
