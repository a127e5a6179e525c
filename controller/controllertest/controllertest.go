// Package controllertest starts a real Umbra controller and edge router inside a test binary, on loopback ports
// and in a temporary directory, and makes enrolled agents for tests.
//
// OpenZiti keeps process-wide registries, so a test binary starts one Env, in TestMain, and shares it.
package controllertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller"
	"github.com/umbra-mesh/umbra/internal/freeport"
	"github.com/umbra-mesh/umbra/internal/zitilog"
	"github.com/umbra-mesh/umbra/router"
)

// Options vary Start.
type Options struct {
	// SVIDTTL of issued SVIDs. Default the controller's.
	SVIDTTL time.Duration
	// MaxIdentityAge after enrollment until renewal is refused. Default the controller's.
	MaxIdentityAge time.Duration
	// RefusalRecordsPerMinute of one identity recorded one by one. Default the controller's.
	RefusalRecordsPerMinute int
	// ProposalsPerMinute one identity may make. Default the controller's; negative: no limit.
	ProposalsPerMinute int
	// MetricsListen of the controller (Env.Server.MetricsAddr tells the port of "127.0.0.1:0"). Default: none.
	MetricsListen string
	// TracerProvider of the controller (its relay's spans). Default: no tracing.
	TracerProvider trace.TracerProvider
	// GrantUseGranularity of the controller's record of grant use. Default the controller's.
	GrantUseGranularity time.Duration
	// Logger for the controller, router and OpenZiti. Default: warnings to stderr.
	Logger *slog.Logger
}

// Env is a running controller and router.
type Env struct {
	Server    *controller.Server
	Config    controller.Config
	Dir       string
	RouterDir string
	EdgeAddr  string
	log       *slog.Logger // the controller's, router's and OpenZiti's, from logLevel on
	logLevel  slog.Level
	admin     atomic.Pointer[agentsdk.Agent]
	cancel    context.CancelFunc
	done      chan struct{}
}

// FreePort returns a loopback TCP port that was free a moment ago, below the kernel's ephemeral range (freeport).
func FreePort() (int, error) {
	ports, err := freeport.Loopback(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// Start starts a controller and one router in this process and connects the platform administrator.
func Start(opts Options) (*Env, error) {
	log := opts.Logger
	level := slog.LevelWarn
	if os.Getenv("UMBRA_TEST_LOG") == "debug" {
		level = slog.LevelDebug
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	zitilog.Route(log, level)
	dir, err := os.MkdirTemp("", "umbra-controllertest-")
	if err != nil {
		return nil, err
	}
	ports := make([]int, 4)
	for i := range ports {
		if ports[i], err = FreePort(); err != nil {
			return nil, err
		}
	}
	cfg := controller.Config{DataDir: filepath.Join(dir, "controller"), CtrlPort: ports[0], OverlayAPIPort: ports[1],
		EnrollPort: ports[2], SVIDTTL: opts.SVIDTTL, MaxIdentityAge: opts.MaxIdentityAge,
		RefusalRecordsPerMinute: opts.RefusalRecordsPerMinute, ProposalsPerMinute: opts.ProposalsPerMinute, MetricsListen: opts.MetricsListen,
		TracerProvider: opts.TracerProvider, GrantUseGranularity: opts.GrantUseGranularity, Logger: log}
	srv, err := controller.New(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Env{Server: srv, Config: cfg, Dir: dir, RouterDir: filepath.Join(dir, "router"), cancel: cancel, done: make(chan struct{}),
		EdgeAddr: "127.0.0.1:" + strconv.Itoa(ports[3]), log: log, logLevel: level}
	errc := make(chan error, 2)
	go func() {
		defer close(e.done)
		errc <- srv.Run(ctx)
	}()
	select {
	case <-srv.Ready():
	case err := <-errc:
		cancel()
		return nil, fmt.Errorf("controllertest: controller: %w", err)
	case <-time.After(2 * time.Minute):
		cancel()
		return nil, errors.New("controllertest: controller did not become ready")
	}
	tok, err := srv.CreateRouterToken("router-a")
	if err != nil {
		e.Close()
		return nil, err
	}
	r, err := router.New(router.Config{DataDir: e.RouterDir, Token: tok, EdgeAddr: e.EdgeAddr, Logger: log})
	if err != nil {
		e.Close()
		return nil, err
	}
	go func() { errc <- r.Run(ctx) }()
	select {
	case <-r.Ready():
	case err := <-errc:
		e.Close()
		return nil, fmt.Errorf("controllertest: router: %w", err)
	}
	if err := waitOnline(srv, "router-a"); err != nil {
		e.Close()
		return nil, err
	}
	id, err := agentsdk.LoadIdentity(srv.AdminIdentityPath())
	if err != nil {
		e.Close()
		return nil, err
	}
	admin, err := agentsdk.Connect(ctx, id)
	if err != nil {
		e.Close()
		return nil, err
	}
	e.admin.Store(admin)
	// The controller's API is hosted on the overlay once a router holds its terminators: the controller says so
	// (Hosted) after trying again as long as it takes, which on a loaded machine can be longer than a dial's
	// retries. Only then is the API probed, as an agent would.
	select {
	case <-srv.Hosted():
	case err := <-errc:
		e.Close()
		return nil, fmt.Errorf("controllertest: stopped before the controller API was hosted: %w", err)
	case <-time.After(2 * time.Minute):
		e.Close()
		return nil, errors.New("controllertest: the controller API was not hosted on the overlay within 2 minutes")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := admin.Controller().WhoAmI(wctx)
		wcancel()
		if err == nil {
			return e, nil
		}
		if time.Now().After(deadline) {
			e.Close()
			return nil, fmt.Errorf("controllertest: controller API unreachable on the overlay: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitOnline(srv *controller.Server, name string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if ok, err := srv.RouterOnline(name); err == nil && ok {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("controllertest: router %s did not come online", name)
}

// Close stops everything and removes the directory.
func (e *Env) Close() {
	if a := e.admin.Load(); a != nil {
		a.Close()
	}
	e.cancel()
	select {
	case <-e.done:
	case <-time.After(30 * time.Second):
	}
	os.RemoveAll(e.Dir)
}

// Admin is the platform administrator, connected.
func (e *Env) Admin() *agentsdk.Agent { return e.admin.Load() }

// UseAdmin makes a the platform administrator that Admin returns, after a test rotated it; the previous one is
// closed.
func (e *Env) UseAdmin(a *agentsdk.Agent) {
	if old := e.admin.Swap(a); old != nil && old != a {
		old.Close()
	}
}

// NewIdentity registers and enrolls a workload.
func (e *Env) NewIdentity(t testing.TB, org, kind, name string) *agentsdk.Identity {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := e.Admin().Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: org, Kind: kind, Name: name})
	if err != nil {
		t.Fatalf("create identity %s/%s/%s: %v", org, kind, name, err)
	}
	id, err := agentsdk.Enroll(ctx, resp.Token)
	if err != nil {
		t.Fatalf("enroll %s: %v", resp.SPIFFEID, err)
	}
	return id
}

// NewAgent registers, enrolls and connects a workload, closed when the test ends.
func (e *Env) NewAgent(t testing.TB, org, kind, name string, opts ...agentsdk.Option) *agentsdk.Agent {
	t.Helper()
	id := e.NewIdentity(t, org, kind, name)
	a, err := agentsdk.Connect(context.Background(), id, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", id.SPIFFEID(), err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// Grant lets bind host service and dial use it.
func (e *Env) Grant(t testing.TB, service string, bind, dial []spiffeid.ID) {
	t.Helper()
	req := api.GrantRequest{Service: service}
	for _, id := range bind {
		req.Bind = append(req.Bind, id.String())
	}
	for _, id := range dial {
		req.Dial = append(req.Dial, id.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.Admin().Controller().Grant(ctx, req); err != nil {
		t.Fatalf("grant %s: %v", service, err)
	}
}

// CountOverlayLog counts OpenZiti's log records whose message is msg, from info on whatever e's level, until the
// test ends; the records e's logger takes still reach it. Its count is a router's or an SDK's own tally of what
// it did (a bind handled, a bind refused). OpenZiti's logger is process-wide: the test must not run in parallel
// with another that counts.
func (e *Env) CountOverlayLog(t testing.TB, msg string) *atomic.Int64 {
	var n atomic.Int64
	// From info on: zitilog lowers OpenZiti's routine records to info.
	zitilog.Route(slog.New(countingHandler{next: e.log.Handler(), msg: msg, n: &n}), min(e.logLevel, slog.LevelInfo))
	t.Cleanup(func() { zitilog.Route(e.log, e.logLevel) })
	return &n
}

// countingHandler counts the records whose message is msg, whatever their level, and passes on those next takes.
type countingHandler struct {
	next slog.Handler
	msg  string
	n    *atomic.Int64
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return countingHandler{next: h.next.WithAttrs(as), msg: h.msg, n: h.n}
}

func (h countingHandler) WithGroup(g string) slog.Handler {
	return countingHandler{next: h.next.WithGroup(g), msg: h.msg, n: h.n}
}
