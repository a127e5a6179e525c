package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/controller"
	"github.com/umbra-mesh/umbra/internal/freeport"
	"github.com/umbra-mesh/umbra/internal/zitilog"
	"github.com/umbra-mesh/umbra/router"
)

// Config configures Run. The zero value of each optional field selects the default named.
type Config struct {
	// DataDir receives everything the demo creates: the controller's state, every identity, the gateways' state,
	// the brief and the audit export. Required; if it exists it must be empty.
	DataDir string
	// Out receives the live feed and the summaries. Default: discarded.
	Out io.Writer
	// Logger receives the components' state changes (and the overlay's warnings). Default: discarded. Nothing is
	// logged once the demo shuts down: the overlay reports the teardown of connections in flight as errors.
	Logger *slog.Logger
	// LogLevel is the level from which the overlay's own (process-wide) logs reach Logger. Run routes them there
	// itself, so that they are silenced with it at shutdown.
	LogLevel slog.Level
	// SecondRouter starts the second edge router, which must run in another process (the overlay keeps
	// process-wide registries: one router per process). It returns once the router is ready, with a function
	// that stops it and waits until it has. Default nil: one router only.
	SecondRouter func(ctx context.Context, r RouterSpec) (stop func(), err error)
	// Rounds is how many times the scenario runs on the same network. Default 1; negative: until ctx ends.
	Rounds int
	// RoundPause is the pause between rounds. Default 10s.
	RoundPause time.Duration
	// Upstream replaces the sample model server with a real provider. Default nil: the sample model.
	Upstream *Upstream
	// Pace is a pause between the planner's steps, to make the feed easier to follow. Default none.
	Pace time.Duration
}

// RouterSpec is what a second router needs: its enrollment token, a data directory, the loopback address of its
// edge listener (for workloads) and, if not empty, of a link listener (for other routers).
type RouterSpec struct {
	Name, Token, DataDir, EdgeAddr, LinkAddr string
}

// Run runs the demo on this machine: a controller and a router in this process, a second router through
// cfg.SecondRouter, both gateways, the dark MCP and model servers, and every agent with its own identity. It
// writes a live feed to cfg.Out, and after each round the summary read back from the exported audit trail, which
// it returns (of the last round).
func Run(ctx context.Context, cfg Config) (Summary, error) {
	if cfg.DataDir == "" {
		return Summary{}, errors.New("demo: DataDir is required")
	}
	if entries, err := os.ReadDir(cfg.DataDir); err == nil && len(entries) > 0 {
		return Summary{}, fmt.Errorf("demo: %s is not empty: the demo starts from nothing", cfg.DataDir)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return Summary{}, fmt.Errorf("demo: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Rounds == 0 {
		cfg.Rounds = 1
	}
	if cfg.RoundPause == 0 {
		cfg.RoundPause = 10 * time.Second
	}
	muted := new(atomic.Bool)
	cfg.Logger = slog.New(mutable{cfg.Logger.Handler(), muted})
	zitilog.Route(cfg.Logger, cfg.LogLevel)
	feed := NewFeed(cfg.Out)
	d := &deployment{cfg: cfg, feed: feed, dir: cfg.DataDir, log: cfg.Logger, seen: newLedger()}
	defer func() {
		muted.Store(true)
		d.shutdown()
	}()
	if err := d.start(ctx); err != nil {
		return Summary{}, err
	}
	var last Summary
	for round := 1; cfg.Rounds < 0 || round <= cfg.Rounds; round++ {
		if round > 1 {
			select {
			case <-ctx.Done():
				return last, nil
			case <-time.After(cfg.RoundPause):
			}
		}
		sum, err := d.round(ctx, round)
		if err != nil {
			if round > 1 && ctx.Err() != nil {
				return last, nil
			}
			return sum, err
		}
		last = sum
	}
	return last, nil
}

// mutable is a log handler that can be silenced.
type mutable struct {
	slog.Handler
	off *atomic.Bool
}

func (h mutable) Enabled(ctx context.Context, l slog.Level) bool {
	return !h.off.Load() && h.Handler.Enabled(ctx, l)
}

func (h mutable) WithAttrs(as []slog.Attr) slog.Handler {
	return mutable{h.Handler.WithAttrs(as), h.off}
}
func (h mutable) WithGroup(name string) slog.Handler {
	return mutable{h.Handler.WithGroup(name), h.off}
}

// deployment is everything Run started.
type deployment struct {
	cfg  Config
	feed *Feed
	dir  string
	log  *slog.Logger

	stops  []func() // in reverse order of start
	stopR2 func()
	admin  *agentsdk.Agent
	nodes  map[Workload]*node
	seen   *ledger
	marine *MarineServer
}

func (d *deployment) shutdown() {
	for i := len(d.stops) - 1; i >= 0; i-- {
		d.stops[i]()
	}
}

// background runs fn until shutdown, which cancels it and waits for it.
func (d *deployment) background(name string, fn func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := fn(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("demo component stopped", "component", name, "err", err)
			d.feed.Event(name, "STOPPED: %v", err)
		}
	}()
	d.stops = append(d.stops, func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			d.log.Warn("demo component did not stop in time", "component", name)
		}
	})
}

func (d *deployment) start(ctx context.Context) error {
	feed := d.feed
	feed.Text(intro)
	feed.Section("Network")
	ports, err := freeport.Loopback(6)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	srv, err := controller.New(controller.Config{DataDir: filepath.Join(d.dir, "controller"), CtrlPort: ports[0],
		OverlayAPIPort: ports[1], EnrollPort: ports[2], Logger: d.log})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	ctrlErr := make(chan error, 1)
	d.background("controller", func(ctx context.Context) error {
		err := srv.Run(ctx)
		ctrlErr <- err
		return err
	})
	select {
	case <-srv.Ready():
	case err := <-ctrlErr:
		return fmt.Errorf("demo: controller: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	feed.Event("controller", "ready: enrollment %s, overlay control and API on 127.0.0.1:%d and :%d; NATS JetStream in process",
		srv.EnrollURL(), ports[0], ports[1])

	token, err := srv.CreateRouterToken("r1")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	edge1, link1 := "127.0.0.1:"+strconv.Itoa(ports[3]), "127.0.0.1:"+strconv.Itoa(ports[4])
	r1, err := router.New(router.Config{DataDir: filepath.Join(d.dir, "r1"), Token: token, EdgeAddr: edge1, LinkAddr: link1, Logger: d.log})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	rErr := make(chan error, 1)
	d.background("router r1", func(ctx context.Context) error {
		err := r1.Run(ctx)
		rErr <- err
		return err
	})
	select {
	case <-r1.Ready():
	case err := <-rErr:
		return fmt.Errorf("demo: router r1: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	feed.Event("router r1", "ready: edge %s, links %s (in this process)", edge1, link1)
	// The second router stops after every workload has disconnected, before the first.
	d.stops = append(d.stops, func() {
		if d.stopR2 != nil {
			d.stopR2()
		}
	})

	id, err := agentsdk.LoadIdentity(srv.AdminIdentityPath())
	if err != nil {
		return err
	}
	if d.admin, err = agentsdk.Connect(ctx, id, agentsdk.WithLogger(d.log)); err != nil {
		return fmt.Errorf("demo: platform administrator: %w", err)
	}
	d.stops = append(d.stops, func() { d.admin.Close() })
	if err := waitAPI(ctx, d.admin); err != nil {
		return err
	}

	if d.cfg.SecondRouter != nil {
		tok, err := d.admin.Controller().CreateRouter(ctx, "r2")
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		// r2 dials its link to r1, which listens for links: one listener is enough.
		spec := RouterSpec{Name: "r2", Token: tok, DataDir: filepath.Join(d.dir, "r2"), EdgeAddr: "127.0.0.1:" + strconv.Itoa(ports[5])}
		if d.stopR2, err = d.cfg.SecondRouter(ctx, spec); err != nil {
			return fmt.Errorf("demo: router r2: %w", err)
		}
		feed.Event("router r2", "ready: edge %s, linked to r1 (another process)", spec.EdgeAddr)
	}

	feed.Section("Organisations, identities, workgroups and dark services")
	tokens, err := Setup(ctx, d.admin, filepath.Join(d.dir, "admins"), feed)
	if err != nil {
		return err
	}
	idDir := filepath.Join(d.dir, "identities")
	if err := os.MkdirAll(idDir, 0o700); err != nil {
		return err
	}
	agents := map[Workload]*agentsdk.Agent{}
	for _, w := range append(append([]Workload{}, Services...), Agents...) {
		// Each workload generates its key and sends only a CSR, as it would on its own machine.
		id, err := agentsdk.Enroll(ctx, tokens[w.Key()])
		if err != nil {
			return fmt.Errorf("demo: enroll %s: %w", w.Label(), err)
		}
		path := filepath.Join(idDir, w.Key()+".json")
		if err := id.Save(path); err != nil {
			return err
		}
		if w.Kind == "gateway" {
			continue // the gateway host connects it
		}
		a, err := agentsdk.Connect(ctx, id, agentsdk.WithLogger(d.log), agentsdk.WithIdentityFile(path))
		if err != nil {
			return fmt.Errorf("demo: connect %s: %w", w.Label(), err)
		}
		d.stops = append(d.stops, func() { a.Close() })
		agents[w] = a
	}
	feed.Event("workloads", "%d identities enrolled: keys generated locally, SVIDs issued for CSRs", len(tokens))

	feed.Section("Dark MCP servers, model server and gateways")
	d.marine = NewMarineServer()
	d.marine.Changed = func() {
		feed.Event(Marine.Label(), "published an update of sea_state: the description now asks for the whole conversation")
	}
	d.background(Model.Label(), func(ctx context.Context) error { return ServeModel(ctx, agents[Model], ServiceModel, SampleModel) })
	d.background(SCADA.Label(), func(ctx context.Context) error { return ServeMCP(ctx, agents[SCADA], ServiceSCADA, NewSCADAServer()) })
	d.background(Marine.Label(), func(ctx context.Context) error { return ServeMCP(ctx, agents[Marine], ServiceMarine, d.marine.Server) })
	d.background(Textkit.Label(), func(ctx context.Context) error {
		return ServeMCP(ctx, agents[Textkit], ServiceTextkit, TextkitServer())
	})
	feed.Event(Model.Label(), "hosts the sample model %q as dark service %s", SampleModel, ServiceModel)
	feed.Event(SCADA.Label(), "hosts turbine telemetry (MCP) as dark service %s", ServiceSCADA)
	feed.Event(Marine.Label(), "hosts tides and sea state (MCP) as dark service %s", ServiceMarine)
	feed.Event(Textkit.Label(), "hosts the sample MCP server as dark service %s", ServiceTextkit)
	mcpReady, llmReady := make(chan struct{}), make(chan struct{})
	d.background(MCPGateway.Label(), func(ctx context.Context) error {
		return runMCPGateway(ctx, filepath.Join(idDir, MCPGateway.Key()+".json"), filepath.Join(d.dir, "mcpgw"), d.log, mcpReady)
	})
	td := tdOf(d.admin)
	d.background(LLMGateway.Label(), func(ctx context.Context) error {
		return runLLMGateway(ctx, filepath.Join(idDir, LLMGateway.Key()+".json"), filepath.Join(d.dir, "llmgw"), td, d.cfg.Upstream, d.log, llmReady)
	})
	for _, ch := range []chan struct{}{mcpReady, llmReady} {
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Minute):
			return errors.New("demo: a gateway did not start within 2 minutes")
		}
	}
	model := fmt.Sprintf("the sample model %s on the overlay", SampleModel)
	if d.cfg.Upstream != nil {
		model = fmt.Sprintf("%s at %s", d.cfg.Upstream.Model, d.cfg.Upstream.Provider)
	}
	feed.Event(MCPGateway.Label(), "serves backends scada, marine, textkit as dark service %s; Cedar decides who sees which tool", ServiceMCPGateway)
	feed.Event(LLMGateway.Label(), "serves model %q (%s) as dark service %s; Meridian's forecaster may spend %d tokens a day",
		ModelName, model, ServiceLLMGateway, ForecasterTokensPerDay)

	feed.Section("Agents advertise")
	d.nodes = map[Workload]*node{}
	for _, w := range Agents {
		n := newNode(w, agents[w], feed, d.dir, d.seen)
		n.pace = d.cfg.Pace
		d.stops = append(d.stops, n.close)
		d.nodes[w] = n
		if err := n.advertise(ctx); err != nil {
			return fmt.Errorf("demo: %s: %w", w.Label(), err)
		}
	}
	return nil
}

// waitAPI waits until the controller's API answers on the overlay (it does once a router is online).
func waitAPI(ctx context.Context, a *agentsdk.Agent) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := a.Controller().WhoAmI(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: the controller's API did not come up: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// roundLimit bounds one round.
const roundLimit = 5 * time.Minute

func (d *deployment) round(ctx context.Context, round int) (Summary, error) {
	before, err := d.admin.Controller().AuditVerify(ctx)
	if err != nil {
		return Summary{}, err
	}
	if round > 1 {
		d.marine.Reset()
	}
	d.feed.Section(fmt.Sprintf("Round %d", round))
	rctx, cancel := context.WithTimeout(ctx, roundLimit)
	defer cancel()
	var g group
	for _, w := range Agents {
		n := d.nodes[w]
		g.go_(w.Label(), func() error { return roles[w](rctx, n, round) })
	}
	if err := g.wait(); err != nil {
		return Summary{}, fmt.Errorf("demo: round %d: %w", round, err)
	}
	sum, err := d.summarise(ctx, round, before.LastSeq)
	if err != nil {
		return sum, err
	}
	acked, delivered := d.seen.reset()
	if err := reconcile(acked, delivered, sum.EnvelopeIDs); err != nil {
		return sum, fmt.Errorf("demo: round %d: %w", round, err)
	}
	d.feed.Text("  envelopes: %d acknowledged = %d recorded = %d delivered", len(acked), sum.Envelopes, len(delivered))
	if !sum.AuditVerified {
		return sum, fmt.Errorf("demo: round %d: the audit chain did not verify", round)
	}
	return sum, nil
}

// summarise exports the audit trail once the gateways' last records are in, verifies it and tallies the round.
func (d *deployment) summarise(ctx context.Context, round int, after uint64) (Summary, error) {
	var last uint64
	for i := 0; i < 20; i++ {
		rep, err := d.admin.Controller().AuditVerify(ctx)
		if err != nil {
			return Summary{}, err
		}
		if i > 0 && rep.LastSeq == last {
			break
		}
		last = rep.LastSeq
		time.Sleep(500 * time.Millisecond)
	}
	rep, err := d.admin.Controller().AuditVerify(ctx)
	if err != nil {
		return Summary{}, err
	}
	path := filepath.Join(d.dir, "audit.jsonl")
	if err := exportAudit(ctx, d.admin, path); err != nil {
		return Summary{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return Summary{}, err
	}
	records, verr := ReadExport(f)
	f.Close()
	if records == nil && verr != nil {
		return Summary{}, fmt.Errorf("demo: %s: %w", path, verr)
	}
	sum := Tally(records, after)
	sum.Round, sum.AuditExport, sum.AuditVerified = round, path, rep.OK && verr == nil
	sum.Brief = filepath.Join(d.dir, BriefFile)
	sum.Print(d.feed)
	return sum, nil
}

// exportAudit writes the whole audit trail to path as JSON lines.
func exportAudit(ctx context.Context, admin *agentsdk.Agent, path string) error {
	resp, err := admin.Controller().AuditExport(ctx)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

const intro = `Umbra demo: a gearbox alarm on turbine A07 at Northwind's offshore wind farm.

Northwind's planner agent assembles a repair brief with the agents of four other organisations: Helix (the
turbine's maker: diagnosis and spare parts), Meridian (marine weather), and two competing vessel operators,
Tidewater and Keelson, who each work with Northwind but share no workgroup and cannot find or reach each other.
Every agent, tool server and model server holds a SPIFFE identity and opens no listening socket; every envelope
passes the controller's relay, which enforces its contract; tools and the model are reached through the MCP and
LLM gateways, which decide per identity with Cedar. Watch for REFUSED: each refusal is in the audit trail with
its reason.`
