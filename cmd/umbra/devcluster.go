package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/controller"
	"github.com/umbra-mesh/umbra/internal/devcluster"
)

// devCluster holds `umbra dev --controllers N --routers M`.
type devCluster struct {
	controllers, routers int
}

// devClusterFlags registers --controllers and --routers.
func devClusterFlags(f *flags) *devCluster {
	d := &devCluster{}
	f.IntVar(&d.controllers, "controllers", 1, "1: one process; an odd number of 3 or more: a cluster of that many `umbra controller` processes on loopback (docs/cluster.md)")
	f.IntVar(&d.routers, "routers", 1, "routers of a cluster (--controllers 3 or more), each a process of its own")
	return d
}

// check validates the counts and, for a cluster, the other flags given; clustered reports a cluster.
func (d *devCluster) check(f *flags, cfg *controller.Config) (clustered bool, err error) {
	if d.controllers < 1 || d.controllers > 1 && (d.controllers < 3 || d.controllers%2 == 0) {
		return false, fmt.Errorf("--controllers %d: want 1 (one process) or an odd number of 3 or more (a cluster keeps a majority)", d.controllers)
	}
	if d.routers < 1 {
		return false, fmt.Errorf("--routers %d: want 1 or more", d.routers)
	}
	if d.controllers == 1 {
		if d.routers != 1 {
			return false, errors.New("--routers is for a cluster: give --controllers 3 too (one process runs one router; add more with umbra router create)")
		}
		if n, m, ok := devcluster.HasLayout(cfg.DataDir); ok {
			return false, fmt.Errorf("--data %s holds a cluster: start it with --controllers %d --routers %d", cfg.DataDir, n, m)
		}
		return false, nil
	}
	// A cluster takes these flags of `umbra dev`; dev chooses every port.
	f.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "data", "trust-domain", "log-level", "controllers", "routers":
			return
		}
		if err == nil {
			err = fmt.Errorf("--%s is for one process: with --controllers %d, dev chooses every member's ports and keeps them in --data", fl.Name, d.controllers)
		}
	})
	return true, err
}

// runDevCluster runs the cluster until ctx is done, printing where each member is once it is usable.
func runDevCluster(ctx context.Context, d *devCluster, cfg *controller.Config, level string, log *slog.Logger, stdout io.Writer) error {
	start := time.Now()
	c, err := devcluster.New(devcluster.Config{Dir: cfg.DataDir, Controllers: d.controllers, Routers: d.routers,
		TrustDomain: cfg.TrustDomain, LogLevel: level, Logger: log})
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	select {
	case err := <-errc:
		if err == nil {
			err = errors.New("the cluster stopped before it was ready")
		}
		return err
	case <-c.Ready():
	}
	admin, err := agentsdk.LoadIdentity(c.AdminIdentityPath())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "umbra dev ready in %s: %d controllers and %d routers, each a process of its own\n",
		time.Since(start).Round(time.Millisecond), d.controllers, d.routers)
	fmt.Fprintf(stdout, "  trust domain   %s\n", admin.SPIFFEID().TrustDomain().Name())
	pids := c.PIDs()
	l := c.Layout()
	for _, m := range l.Controllers {
		fmt.Fprintf(stdout, "  %-3s overlay API 127.0.0.1:%d  enrollment 127.0.0.1:%d  metrics http://127.0.0.1:%d/metrics  pid %d  log %s\n",
			m.Name, m.API, m.Enroll, m.Metrics, pids[m.Name], c.LogPath(m.Name))
	}
	for _, r := range l.Routers {
		fmt.Fprintf(stdout, "  %-3s edge 127.0.0.1:%d  link 127.0.0.1:%d  pid %d  log %s\n", r.Name, r.Edge, r.Link, pids[r.Name], c.LogPath(r.Name))
	}
	fmt.Fprintf(stdout, "  admin identity %s  (spiffe id %s; names %s's overlay API)\n", c.AdminIdentityPath(), admin.SPIFFEID(), l.Controllers[0].Name)
	fmt.Fprintf(stdout, "Try: umbra whoami --as %s\n", c.AdminIdentityPath())
	return <-errc
}
