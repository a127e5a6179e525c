package devcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/controller"
)

const (
	// maxRestarts bounds how many times, in all, members are started again at one start of the cluster.
	maxRestarts = 3
	// lateStart is how long after the first controller is ready another may take before it is started again:
	// seen on a loaded machine, a member whose stores' first creation never gets an answer while the others' do.
	lateStart = 45 * time.Second
	// routerStart bounds a router's start, and the governance API's first answer after the routers are up.
	routerStart = 2 * time.Minute
)

// Config says what cluster to run. Copied by value.
type Config struct {
	// Dir holds the cluster: one data directory per member (c1, r1, ...), their logs (logs/), and the layout
	// (cluster.json). Required.
	Dir string
	// Exe is the umbra binary the members run. Default: this process's executable.
	Exe string
	// Controllers is the number of controllers: an odd number, 3 or more; or 1, a lone controller (no raft or
	// NATS cluster, one copy of every store), the baseline a cluster is compared with (BenchmarkClusterRecordPath).
	Controllers int
	// Routers is the number of routers, 1 or more.
	Routers int
	// TrustDomain is the SPIFFE trust domain of a new cluster. Default: umbra.local, or the one Dir's cluster has.
	TrustDomain string
	// LogLevel is the members' --log-level. Default: warn.
	LogLevel string
	// StartTimeout bounds the controllers' start. Default: 5 minutes.
	StartTimeout time.Duration
	// Logger receives the cluster's state changes (a member started again, a member stopped). Default: discard.
	Logger *slog.Logger
}

// Cluster is a running cluster of child processes.
type Cluster struct {
	cfg    Config
	layout Layout
	log    *slog.Logger
	ready  chan struct{}
	spawn  chan func()

	mu      sync.Mutex
	ctrls   []*child // by layout index
	routers []*child
}

// New checks cfg and reads Dir's layout, or chooses one for a new cluster. A Dir that holds a cluster of
// another size is refused.
func New(cfg Config) (*Cluster, error) {
	if cfg.Dir == "" {
		return nil, errors.New("devcluster: Dir is required")
	}
	if cfg.Controllers < 1 || cfg.Controllers%2 == 0 {
		return nil, fmt.Errorf("devcluster: %d controllers: want 1 or an odd number, 3 or more", cfg.Controllers)
	}
	if cfg.Routers < 1 {
		return nil, fmt.Errorf("devcluster: %d routers: want 1 or more", cfg.Routers)
	}
	if cfg.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("devcluster: %w", err)
		}
		cfg.Exe = exe
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "warn"
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 5 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	l, ok, err := loadLayout(cfg.Dir)
	if err != nil {
		return nil, err
	}
	if ok && (len(l.Controllers) != cfg.Controllers || len(l.Routers) != cfg.Routers) {
		return nil, fmt.Errorf("%s holds a cluster of %d controllers and %d routers: start it with --controllers %d --routers %d, or use a new --data directory",
			cfg.Dir, len(l.Controllers), len(l.Routers), len(l.Controllers), len(l.Routers))
	}
	if !ok {
		if _, err := os.Stat(filepath.Join(cfg.Dir, "admin.json")); err == nil {
			return nil, fmt.Errorf("%s holds a one-process network (umbra dev without --controllers): use a new --data directory for a cluster", cfg.Dir)
		}
		if l, err = newLayout(cfg.Controllers, cfg.Routers); err != nil {
			return nil, err
		}
	}
	return &Cluster{cfg: cfg, layout: l, log: cfg.Logger, ready: make(chan struct{})}, nil
}

// Layout is the cluster's members and their ports.
func (c *Cluster) Layout() Layout { return c.layout }

// Ready is closed when every member is ready and the governance API answers the platform administrator on the
// overlay.
func (c *Cluster) Ready() <-chan struct{} { return c.ready }

// MemberDir is the data directory of the member named name (c1, r1, ...).
func (c *Cluster) MemberDir(name string) string { return filepath.Join(c.cfg.Dir, name) }

// LogPath is where the member named name logs.
func (c *Cluster) LogPath(name string) string { return filepath.Join(c.cfg.Dir, "logs", name+".log") }

// AdminIdentityPath is the platform administrator's identity file. It is written by the first controller, and
// names that controller's overlay API.
func (c *Cluster) AdminIdentityPath() string {
	return filepath.Join(c.MemberDir(c.layout.Controllers[0].Name), "admin.json")
}

// PIDs are the process ids of the members running now, by name.
func (c *Cluster) PIDs() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	pids := map[string]int{}
	for _, ch := range append(append([]*child{}, c.ctrls...), c.routers...) {
		if ch != nil && !ch.exited() {
			pids[ch.name] = ch.pid()
		}
	}
	return pids
}

// Run starts the cluster, closes Ready once it is usable, and runs it until ctx is done; then it stops the
// routers, then the controllers, and returns nil. It returns an error if the cluster could not start, or once
// every controller has stopped. No member outlives Run.
func (c *Cluster) Run(ctx context.Context) error {
	// The kernel sends a child its parent-death signal when the thread that started it ends; the Go runtime ends
	// only threads a goroutine locked, so every child is started from one locked thread that lives until the
	// children are stopped.
	c.spawn = make(chan func())
	go func() {
		runtime.LockOSThread()
		for f := range c.spawn {
			f()
		}
	}()
	defer close(c.spawn)
	defer c.stopAll()
	if err := c.prepare(); err != nil {
		return err
	}
	if err := c.startControllers(ctx); err != nil {
		return err
	}
	if err := c.startRouters(ctx); err != nil {
		return err
	}
	if err := c.waitAPI(ctx); err != nil {
		return err
	}
	close(c.ready)
	return c.watch(ctx)
}

// prepare creates the cluster's directory and layout and, for the members that have none, the keys every
// controller shares: exported from the first controller's data directory (created there if new) and installed
// into the others' before they start, as `umbra controller secrets export` and --cluster-secrets do.
func (c *Cluster) prepare() error {
	if err := os.MkdirAll(filepath.Join(c.cfg.Dir, "logs"), 0o700); err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	if err := c.layout.save(c.cfg.Dir); err != nil {
		return err
	}
	var bundle []byte
	for _, m := range c.layout.Controllers[1:] {
		dir := c.MemberDir(m.Name)
		if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
			continue
		}
		if bundle == nil {
			b, err := controller.ExportClusterSecrets(c.MemberDir(c.layout.Controllers[0].Name), c.cfg.TrustDomain)
			if err != nil {
				return fmt.Errorf("devcluster: %w", err)
			}
			bundle = b
		}
		if err := controller.InstallClusterSecrets(dir, bundle); err != nil {
			return fmt.Errorf("devcluster: %w", err)
		}
	}
	return nil
}

// start runs one member from the locked thread.
func (c *Cluster) start(name string, args []string, readyLine string) (*child, error) {
	var ch *child
	var err error
	done := make(chan struct{})
	c.spawn <- func() {
		ch, err = startChild(name, c.cfg.Exe, args, c.LogPath(name), readyLine)
		close(done)
	}
	<-done
	return ch, err
}

func loopback(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// controllerArgs is the command line of controller i. A lone controller is started as one without a cluster:
// no NATS routes, one copy of every store, no raft.
func (c *Cluster) controllerArgs(i int) []string {
	m := c.layout.Controllers[i]
	var routes []string
	for j, o := range c.layout.Controllers {
		if j != i {
			routes = append(routes, loopback(o.Route))
		}
	}
	args := []string{"controller", "--data", c.MemberDir(m.Name),
		"--ctrl-port", strconv.Itoa(m.Ctrl), "--api-port", strconv.Itoa(m.API), "--enroll-port", strconv.Itoa(m.Enroll),
		"--metrics-listen", loopback(m.Metrics), "--log-level", c.cfg.LogLevel}
	if c.cfg.TrustDomain != "" {
		args = append(args, "--trust-domain", c.cfg.TrustDomain)
	}
	if len(c.layout.Controllers) > 1 {
		args = append(args, "--nats-cluster-listen", loopback(m.Route), "--nats-routes", strings.Join(routes, ","), "--replicas", "3")
		if i > 0 {
			return append(args, "--cluster-join", "tls:"+loopback(c.layout.Controllers[0].Ctrl))
		}
		args = append(args, "--cluster-init")
	}
	for _, r := range c.layout.Routers {
		if !c.enrolled(r) {
			args = append(args, "--router-token", r.Name+":"+c.tokenPath(r))
		}
	}
	return args
}

// enrolled reports whether router r holds its overlay identity.
func (c *Cluster) enrolled(r Router) bool {
	_, err := os.Stat(filepath.Join(c.MemberDir(r.Name), "cert.pem"))
	return err == nil
}

func (c *Cluster) tokenPath(r Router) string { return filepath.Join(c.cfg.Dir, r.Name+".token") }

// FirstStartStop reports whether a controller's log (its stderr) ends as one that stopped at the first start of
// the replicated stores does, or in a crash of the embedded OpenZiti controller, either of which is to be
// started again (docs/cluster.md, "Starting").
func FirstStartStop(log string) bool {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	end := strings.Join(lines, "\n")
	// The embedded OpenZiti controller can also crash while a joining member starts (a panic or fatal log in
	// its start, e.g. "error starting policy engine"): its stack names OpenZiti's module.
	return strings.Contains(end, "no suitable peers") || strings.Contains(end, "context deadline exceeded") ||
		strings.Contains(end, "github.com/openziti/ziti@")
}

// startControllers starts every controller and waits until all are ready, starting again a member that stops
// at the first start of the replicated stores or is not ready lateStart after the first one.
func (c *Cluster) startControllers(ctx context.Context) error {
	launch := func(i int) error {
		ch, err := c.start(c.layout.Controllers[i].Name, c.controllerArgs(i), "umbra controller ready")
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.ctrls[i] = ch
		c.mu.Unlock()
		return nil
	}
	c.mu.Lock()
	c.ctrls = make([]*child, len(c.layout.Controllers))
	c.mu.Unlock()
	for i := range c.layout.Controllers {
		if err := launch(i); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(c.cfg.StartTimeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	restarts := 0
	var firstReady time.Time
	for {
		var waiting *child
		for i, ch := range c.ctrls {
			select {
			case <-ch.ready:
				if firstReady.IsZero() {
					firstReady = time.Now()
				}
				continue
			default:
			}
			switch {
			case ch.exited():
				if !FirstStartStop(ch.tail.text()) || restarts >= maxRestarts {
					return fmt.Errorf("controller %s stopped before it was ready: %s (its log: %s)", ch.name, ch.why(), ch.log)
				}
				restarts++
				c.log.Info("a controller stopped at the first start of the replicated stores; starting it again",
					"controller", ch.name, "reason", ch.why())
				if err := launch(i); err != nil {
					return err
				}
			case !firstReady.IsZero() && time.Since(firstReady) > lateStart && restarts < maxRestarts:
				restarts++
				c.log.Info("a controller was not ready long after the first; starting it again", "controller", ch.name,
					"after", lateStart)
				ch.stop()
				if err := launch(i); err != nil {
					return err
				}
				firstReady = time.Now()
			}
			waiting = c.ctrls[i]
		}
		if waiting == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("controller %s was not ready within %s (its log: %s)", waiting.name, c.cfg.StartTimeout, waiting.log)
		}
		select {
		case <-ctx.Done():
			return errors.New("interrupted before the cluster was ready")
		case <-tick.C:
		}
	}
}

// startRouters starts every router and waits until all are ready; a new router enrolls with the token the
// first controller wrote for it, which is then removed.
func (c *Cluster) startRouters(ctx context.Context) error {
	c.mu.Lock()
	c.routers = make([]*child, len(c.layout.Routers))
	c.mu.Unlock()
	for i, r := range c.layout.Routers {
		args := []string{"router", "--data", c.MemberDir(r.Name), "--edge", loopback(r.Edge), "--link", loopback(r.Link),
			"--log-level", c.cfg.LogLevel}
		if !c.enrolled(r) {
			args = append(args, "--token", c.tokenPath(r))
		}
		ch, err := c.start(r.Name, args, "umbra router ready")
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.routers[i] = ch
		c.mu.Unlock()
	}
	timeout := time.After(routerStart)
	for i, ch := range c.routers {
		select {
		case <-ch.ready:
			if err := os.Remove(c.tokenPath(c.layout.Routers[i])); err != nil && !errors.Is(err, os.ErrNotExist) {
				c.log.Warn("the router's enrollment token was not removed", "file", c.tokenPath(c.layout.Routers[i]), "err", err)
			}
		case <-ch.done:
			return fmt.Errorf("router %s stopped before it was ready: %s (its log: %s)", ch.name, ch.why(), ch.log)
		case <-timeout:
			return fmt.Errorf("router %s was not ready within %s (its log: %s)", ch.name, routerStart, ch.log)
		case <-ctx.Done():
			return errors.New("interrupted before the cluster was ready")
		}
	}
	return nil
}

// waitAPI waits until the governance API answers the platform administrator on the overlay: ready means usable.
func (c *Cluster) waitAPI(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, routerStart)
	defer cancel()
	id, err := agentsdk.LoadIdentity(c.AdminIdentityPath())
	if err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	var last error
	for {
		if last = c.whoami(ctx, id); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the governance API did not answer on the overlay within %s: %v (logs in %s)", routerStart, last,
				filepath.Join(c.cfg.Dir, "logs"))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *Cluster) whoami(ctx context.Context, id *agentsdk.Identity) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	a, err := agentsdk.Connect(ctx, id)
	if err != nil {
		return err
	}
	defer a.Close()
	_, err = a.Controller().WhoAmI(ctx)
	return err
}

// watch reports members that stop while the cluster runs (it runs on without one controller of three) until
// ctx is done, or until every controller has stopped.
func (c *Cluster) watch(ctx context.Context) error {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	reported := map[*child]bool{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		running := 0
		for _, ch := range c.ctrls {
			if !ch.exited() {
				running++
			}
		}
		for _, ch := range append(append([]*child{}, c.ctrls...), c.routers...) {
			if ch.exited() && !reported[ch] {
				reported[ch] = true
				c.log.Warn("a member of the cluster stopped; the others run on", "member", ch.name, "reason", ch.why(), "log", ch.log)
			}
		}
		if running == 0 {
			return fmt.Errorf("every controller has stopped (logs in %s)", filepath.Join(c.cfg.Dir, "logs"))
		}
	}
}

// stopAll stops the routers, then the controllers: the other way round the routers log every terminator they
// can no longer deregister.
func (c *Cluster) stopAll() {
	c.mu.Lock()
	routers, ctrls := c.routers, c.ctrls
	c.mu.Unlock()
	for _, group := range [][]*child{routers, ctrls} {
		var wg sync.WaitGroup
		for _, ch := range group {
			if ch != nil {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ch.stop()
				}()
			}
		}
		wg.Wait()
	}
}
