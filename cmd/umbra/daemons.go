package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/controller"
	"github.com/umbra-mesh/umbra/internal/tracing"
	"github.com/umbra-mesh/umbra/internal/zitictrl"
	"github.com/umbra-mesh/umbra/router"
)

func controllerFlags(f *flags) *controller.Config {
	cfg := &controller.Config{}
	f.StringVar(&cfg.DataDir, "data", "umbra-data", "data directory")
	f.StringVar(&cfg.TrustDomain, "trust-domain", "", "SPIFFE trust domain (default umbra.local)")
	f.StringVar(&cfg.Host, "host", "", "interface to bind (default 127.0.0.1)")
	f.StringVar(&cfg.AdvertiseHost, "advertise", "", "host name routers and workloads use to reach the controller")
	f.IntVar(&cfg.CtrlPort, "ctrl-port", 0, "overlay control plane port (default 6262)")
	f.IntVar(&cfg.OverlayAPIPort, "api-port", 0, "overlay edge API port (default 1280)")
	f.IntVar(&cfg.EnrollPort, "enroll-port", 0, "enrollment port (default 1281)")
	f.DurationVar(&cfg.SVIDTTL, "svid-ttl", 0, "lifetime of issued SVIDs; running agents renew at half of it (default 1h)")
	f.DurationVar(&cfg.MaxIdentityAge, "max-identity-age", 30*24*time.Hour, "how long after enrollment an identity may renew its SVID; then it needs re-enrollment")
	f.IntVar(&cfg.MaxOpenSessions, "max-open-sessions", 0, "open sessions one identity may hold as consumer; past it, proposals are refused with too_many_sessions (default 256)")
	f.IntVar(&cfg.MaxPendingProposals, "max-pending-proposals", 0, "proposals of one identity that may await their providers; past it, proposals are refused with too_many_proposals (default 64)")
	f.Func("proposals-per-minute", "proposals one identity may make in a minute; past it, proposals are refused with proposal_rate_limited; 0: no limit (default 60)", func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("want a number of proposals, 0 for no limit")
		}
		cfg.ProposalsPerMinute = cmp.Or(n, -1) // Config: zero is the default, negative no limit
		return nil
	})
	f.Func("audit-bytes-per-identity-day", "bytes of audit records one identity's actions may cause in a UTC day; past it, its proposals and envelopes are refused with audit_budget_exhausted; 0: no limit (default 8388608, 8 MiB)", func(v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("want a number of bytes, 0 for no limit")
		}
		cfg.AuditBytesPerIdentityDay = cmp.Or(n, -1) // Config: zero is the default, negative no limit
		return nil
	})
	f.DurationVar(&cfg.ClosedSessionRetention, "closed-session-retention", 0, "how long an ended session stays in the session table before it is removed (its history stays in the audit trail) (default 168h)")
	f.Int64Var(&cfg.AuditMaxBytes, "audit-max-bytes", 0, "size bound of the audit trail on disk; when full, actions needing a record are refused, nothing is dropped (default 2 GiB)")
	f.Int64Var(&cfg.EnvelopeMaxBytes, "envelope-max-bytes", 0, "size bound of the envelope stream on disk; when full, new envelopes are refused, nothing is dropped (default 2 GiB)")
	f.BoolVar(&cfg.ResetAdmin, "reset-admin", false, "break-glass: issue a new platform administrator into the data directory and revoke every earlier one (use once)")
	f.StringVar(&cfg.NATSListen, "nats-listen", "", "also serve NATS on HOST:PORT, mutual TLS for controller SVIDs of this deployment only (default: no listener)")
	f.StringVar(&cfg.NATSClusterListen, "nats-cluster-listen", "", "join a NATS cluster of controllers: accept routes from the other controllers on HOST:PORT, mutual TLS for controller SVIDs of this deployment (docs/cluster.md) (default: no cluster)")
	f.Func("nats-routes", "the other controllers' --nats-cluster-listen addresses, HOST:PORT,... (required with --nats-cluster-listen)", func(v string) error {
		for _, r := range strings.Split(v, ",") {
			if r = strings.TrimSpace(r); r != "" {
				cfg.NATSRoutes = append(cfg.NATSRoutes, r)
			}
		}
		return nil
	})
	f.StringVar(&cfg.NATSClusterName, "nats-cluster-name", "", "the NATS cluster's name, the same on every controller (default umbra)")
	f.StringVar(&cfg.NATSClusterAdvertise, "nats-cluster-advertise", "", "HOST:PORT the other controllers reach this one's routes at, if not --nats-cluster-listen")
	f.StringVar(&cfg.NATSServerName, "nats-server-name", "", "this controller's name in the NATS cluster, unique and stable (default: chosen at the first start, kept in the data directory)")
	f.DurationVar(&cfg.RecorderLease, "recorder-lease", 0, "in a NATS cluster of controllers, how long the lease of the one that writes derived audit records and raises alerts lasts unrenewed before another takes over (default 3s)")
	f.IntVar(&cfg.Replicas, "replicas", 0, "copies JetStream keeps of every stream and bucket, 1 to 5; 3 in a cluster of three controllers; above 1 needs --nats-cluster-listen (default 1)")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", "", "serve Prometheus metrics at http://HOST:PORT/metrics, a loopback address unless --metrics-allow-remote (default: none)")
	f.BoolVar(&cfg.MetricsAllowRemote, "metrics-allow-remote", false, "let --metrics-listen be an address other hosts can reach; anyone who reaches it reads the metrics")
	anomalyFlags(f, cfg)
	return cfg
}

// anomalyFlags registers the anomaly detector's thresholds, the automatic suspension policy and the alert
// webhook (docs/posture.md, "Anomalies").
func anomalyFlags(f *flags, cfg *controller.Config) {
	a := &cfg.Anomaly
	f.BoolVar(&cfg.AnomalyOff, "anomaly-off", false, "turn the anomaly detector off: no baselines, no alerts")
	f.DurationVar(&a.Window, "anomaly-window", 0, "period rates and refusals are counted over (default 1m)")
	f.DurationVar(&a.Learn, "anomaly-learn", 0, "how long an identity's behaviour is learned before rate and novelty alerts (default 10m)")
	f.IntVar(&a.LearnRecords, "anomaly-learn-records", 0, "how many of an identity's records are learned, at the least, before rate and novelty alerts (default 100)")
	f.Float64Var(&a.RateFactor, "anomaly-rate-factor", 0, "alert when an identity's records or refusals in a window reach this many times its usual (default 10)")
	f.IntVar(&a.MinRate, "anomaly-min-rate", 0, "fewest records in a window that raise a rate alert; -1: no rate alerts (default 60)")
	f.IntVar(&a.MinRefusals, "anomaly-min-refusals", 0, "fewest refusals in a window that raise a refusals alert; -1: no refusal alerts (default 10)")
	f.BoolVar(&a.IgnoreNew, "anomaly-ignore-new", false, "no alerts on a new peer, message type, tool or model")
	f.IntVar(&a.AutoSuspendRefusals, "auto-suspend-refusals", 0, "suspend an identity refused this many times within --auto-suspend-window (default 0: never)")
	f.DurationVar(&a.AutoSuspendWindow, "auto-suspend-window", 0, "the period --auto-suspend-refusals are counted over (default 1m)")
	f.StringVar(&cfg.AlertWebhook, "alert-webhook", "", "POST every anomaly alert, signed, to this http(s) URL (default: none)")
	f.StringVar(&cfg.AlertWebhookSecret, "alert-webhook-secret", "", "sign webhook bodies with HMAC-SHA256 and this secret (default: Ed25519 with the controller's audit key)")
}

// otlpFlag registers --otlp-endpoint.
func otlpFlag(f *flags) *string {
	return f.String("otlp-endpoint", "", "send OpenTelemetry traces to this OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (default: $"+
		tracing.EnvEndpoint+", else no tracing)")
}

// startTracing returns the tracer provider for endpoint (or $OTEL_EXPORTER_OTLP_ENDPOINT), nil when tracing is
// off, and the function that flushes its spans at exit.
func startTracing(ctx context.Context, cmd, endpoint, service string, log *slog.Logger) (trace.TracerProvider, func(), error) {
	tp, shutdown, err := tracing.Setup(ctx, tracing.Config{Endpoint: endpoint, UseEnv: true, Service: service, Logger: log})
	if err != nil {
		return nil, nil, usagef(cmd, "%s", err)
	}
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdown(sctx); err != nil {
			log.Warn("traces not all sent", "err", err)
		}
	}
	if _, off := tp.(noop.TracerProvider); off {
		return nil, stop, nil
	}
	return tp, stop, nil
}

// checkControllerPorts fails early, naming the flag, if a port the controller would listen on is taken.
func checkControllerPorts(cmd string, cfg *controller.Config) error {
	for _, p := range []struct {
		flag      string
		port, def int
	}{{"ctrl-port", cfg.CtrlPort, 6262}, {"api-port", cfg.OverlayAPIPort, 1280}, {"enroll-port", cfg.EnrollPort, 1281}} {
		if err := checkListen(cmd, p.flag, hostPort(cfg.Host, p.port, p.def)); err != nil {
			return err
		}
	}
	if cfg.NATSListen != "" {
		if err := checkListen(cmd, "nats-listen", cfg.NATSListen); err != nil {
			return err
		}
	}
	if cfg.NATSClusterListen != "" {
		if err := checkListen(cmd, "nats-cluster-listen", cfg.NATSClusterListen); err != nil {
			return err
		}
	}
	if cfg.MetricsListen != "" {
		return checkListen(cmd, "metrics-listen", cfg.MetricsListen)
	}
	return nil
}

func startController(ctx context.Context, cfg controller.Config) (*controller.Server, <-chan error, error) {
	srv, err := controller.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
		return srv, errc, nil
	case err := <-errc:
		var moved *zitictrl.APIMovedError
		if errors.As(err, &moved) {
			port := moved.Stored[strings.LastIndex(moved.Stored, ":")+1:]
			return nil, nil, fmt.Errorf("the identities in %s reach the overlay API at %s, not %s: start with --api-port %s (and the same --host/--advertise), or use a new --data directory",
				cfg.DataDir, moved.Stored, moved.Given, port)
		}
		return nil, nil, err
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

func cmdController(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "secrets" {
		return cmdControllerSecrets(ctx, args[1:], stdin, stdout, stderr)
	}
	f := newFlags("controller", stderr)
	cfg := controllerFlags(f)
	cluster := addClusterFlags(f, cfg)
	otlp := otlpFlag(f)
	var routerTokens multi
	var adminCopy string
	f.Var(&routerTokens, "router-token", "NAME:FILE: on first start, register router NAME and write its enrollment token to FILE (repeatable)")
	f.StringVar(&adminCopy, "admin-copy", "", "also keep the platform administrator's identity at FILE, for a setup job that must not see the data directory")
	f.args(0, "")
	f.check(func([]string) error {
		for _, rt := range routerTokens {
			if _, _, ok := strings.Cut(rt, ":"); !ok {
				return fmt.Errorf("--router-token %q: want NAME:FILE", rt)
			}
		}
		return checkControllerPorts("controller", cfg)
	})
	if _, err := f.parse(args); err != nil {
		return err
	}
	log, err := f.logging(stderr)
	if err != nil {
		return err
	}
	cfg.Logger = log
	if err := cluster.install(cfg); err != nil {
		return err
	}
	tp, stopTracing, err := startTracing(ctx, "controller", *otlp, "umbra-controller", log)
	if err != nil {
		return err
	}
	defer stopTracing()
	cfg.TracerProvider = tp
	srv, errc, err := startController(ctx, *cfg)
	if err != nil {
		return err
	}
	for _, rt := range routerTokens {
		name, path, _ := strings.Cut(rt, ":")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			tok, err := srv.CreateRouterToken(name)
			if err != nil {
				return err
			}
			if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
				return err
			}
		}
	}
	if adminCopy != "" {
		if err := copyIdentity(srv.AdminIdentityPath(), adminCopy); err != nil {
			return err
		}
		go keepCopy(ctx, srv.AdminIdentityPath(), adminCopy, log)
	}
	fmt.Fprintf(stdout, "umbra controller ready: trust domain %s, enrollment %s, admin identity %s\n",
		srv.TrustDomain().Name(), srv.EnrollURL(), srv.AdminIdentityPath())
	return <-errc
}

// copyIdentity copies an identity file, atomically and readable by its owner only (Identity.Save).
func copyIdentity(from, to string) error {
	id, err := agentsdk.LoadIdentity(from)
	if err != nil {
		return err
	}
	return id.Save(to)
}

// keepCopy follows the controller's renewals of the administrator's identity file into its copy.
func keepCopy(ctx context.Context, from, to string, log *slog.Logger) {
	last, _ := os.ReadFile(from)
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b, err := os.ReadFile(from)
		if err != nil || bytes.Equal(b, last) {
			continue
		}
		if err := copyIdentity(from, to); err != nil {
			log.Error("copying the administrator's identity file failed", "err", err)
			continue
		}
		last = b
	}
}

func cmdRouter(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "create" {
		return cmdRouterCreate(ctx, args[1:], stdin, stdout, stderr)
	}
	f := newFlags("router", stderr)
	var cfg router.Config
	var tokenFile string
	f.StringVar(&cfg.DataDir, "data", "", "router data directory (required)")
	f.StringVar(&tokenFile, "token", "", "enrollment token file (first start only)")
	f.StringVar(&cfg.EdgeAddr, "edge", "", "HOST:PORT workloads connect to (default 127.0.0.1:3022)")
	f.StringVar(&cfg.AdvertiseAddr, "advertise", "", "HOST:PORT workloads use to reach --edge")
	f.StringVar(&cfg.LinkAddr, "link", "", "HOST:PORT to accept links from other routers (default: none)")
	f.StringVar(&cfg.LinkAdvertise, "link-advertise", "", "HOST:PORT other routers use to reach --link")
	f.require("data")
	f.args(0, "")
	f.check(func([]string) error {
		edge := cfg.EdgeAddr
		if edge == "" {
			edge = "127.0.0.1:3022"
		}
		if err := checkListen("router", "edge", edge); err != nil {
			return err
		}
		if cfg.LinkAddr != "" {
			return checkListen("router", "link", cfg.LinkAddr)
		}
		return nil
	})
	if _, err := f.parse(args); err != nil {
		return err
	}
	log, err := f.logging(stderr)
	if err != nil {
		return err
	}
	cfg.Logger = log
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return usagef("router", "--token %s: %s", tokenFile, fileProblem(err))
		}
		cfg.Token = strings.TrimSpace(string(b))
	}
	r, err := router.New(cfg)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()
	select {
	case <-r.Ready():
		fmt.Fprintln(stdout, "umbra router ready")
	case err := <-errc:
		return err
	}
	return <-errc
}

func cmdDev(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("dev", stderr)
	cfg := controllerFlags(f)
	otlp := otlpFlag(f)
	var edge, link string
	f.StringVar(&edge, "edge", "127.0.0.1:3022", "HOST:PORT of the embedded router's edge listener")
	f.StringVar(&link, "link", "", "HOST:PORT where the embedded router accepts links from other routers (default: none)")
	cl := devClusterFlags(f)
	f.args(0, "")
	f.check(func([]string) error {
		if clustered, err := cl.check(f, cfg); clustered || err != nil {
			return err
		}
		if err := checkControllerPorts("dev", cfg); err != nil {
			return err
		}
		if err := checkListen("dev", "edge", edge); err != nil {
			return err
		}
		if link != "" {
			return checkListen("dev", "link", link)
		}
		return nil
	})
	if _, err := f.parse(args); err != nil {
		return err
	}
	log, err := f.logging(stderr)
	if err != nil {
		return err
	}
	cfg.Logger = log
	if cl.controllers > 1 {
		return runDevCluster(ctx, cl, cfg, f.level, log, stdout)
	}
	tp, stopTracing, err := startTracing(ctx, "dev", *otlp, "umbra-controller", log)
	if err != nil {
		return err
	}
	defer stopTracing()
	cfg.TracerProvider = tp
	start := time.Now()
	// The router stops first, then the controller: the other way round the router logs every terminator it
	// can no longer deregister.
	ctrlCtx, stopCtrl := context.WithCancel(context.Background())
	defer stopCtrl()
	srv, errc, err := startController(ctrlCtx, *cfg)
	if err != nil {
		return err
	}
	routerDir := filepath.Join(cfg.DataDir, "router")
	var token string
	if _, err := os.Stat(filepath.Join(routerDir, "cert.pem")); err != nil {
		if token, err = srv.CreateRouterToken("dev-router"); err != nil {
			return err
		}
	}
	// The controller's address is passed on every start: the router follows a controller restarted on another
	// --ctrl-port.
	r, err := router.New(router.Config{DataDir: routerDir, Token: token, EdgeAddr: edge, LinkAddr: link,
		CtrlEndpoint: srv.CtrlEndpoint(), Logger: log})
	if err != nil {
		return err
	}
	routerCtx, stopRouter := context.WithCancel(ctx)
	defer stopRouter()
	rerr := make(chan error, 1)
	go func() { rerr <- r.Run(routerCtx) }()
	select {
	case <-r.Ready():
	case err := <-rerr:
		return err
	}
	// Ready means usable: the governance API answers on the overlay, which it can only once the router is up.
	select {
	case <-srv.Hosted():
	case err := <-rerr:
		return err
	case err := <-errc:
		return err
	case <-time.After(time.Minute):
		return errors.New("the controller API was not served on the overlay within a minute (see the log); try again with --log-level info")
	}
	fmt.Fprintf(stdout, `umbra dev ready in %s
  trust domain   %s
  enrollment     %s
  router edge    %s
  admin identity %s  (spiffe id %s)
Try: umbra whoami --as %s
`, time.Since(start).Round(time.Millisecond), srv.TrustDomain().Name(), srv.EnrollURL(), edge,
		srv.AdminIdentityPath(), srv.AdminID(), srv.AdminIdentityPath())
	// On interrupt the router stops (ctx), then the controller; if either fails, both stop.
	select {
	case err = <-rerr:
		stopCtrl()
		if cerr := <-errc; err == nil {
			err = cerr
		}
	case err = <-errc:
		stopRouter()
		<-rerr
	}
	return err
}
