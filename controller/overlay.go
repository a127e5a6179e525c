package controller

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/zitictrl"
)

// joinSettleTimeout bounds how long a joining controller waits for the cluster's first controller to have
// prepared the overlay.
const joinSettleTimeout = 2 * time.Minute

// startOverlay starts the embedded overlay controller, lone or as a cluster member, and prepares the CA,
// policies and services everything relies on.
func (s *Server) startOverlay(ctx context.Context) error {
	dir := filepath.Join(s.cfg.DataDir, "overlay")
	cluster := s.cfg.overlayCluster()
	if cluster == nil {
		if _, err := os.Stat(filepath.Join(dir, "raft")); err == nil {
			return fmt.Errorf("controller: %s is an overlay cluster member's data directory: start it with --cluster-init or --cluster-join as before", s.cfg.DataDir)
		}
	}
	var err error
	s.zc, err = zitictrl.Start(ctx, zitictrl.Config{
		Dir: dir, BindHost: s.cfg.Host, AdvertiseHost: s.cfg.AdvertiseHost,
		CtrlPort: s.cfg.CtrlPort, APIPort: s.cfg.OverlayAPIPort,
		TrustDomain: spiffeid.RequireTrustDomainFromString("overlay." + s.td.Name()),
		Cluster:     cluster,
	}, s.log)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if s.metrics != nil {
		s.metrics.overlay.zc.Store(s.zc)
		// Ends with the overlay controller, which Run stops.
		s.zc.Terminators(s.metrics.terminatorChanged)
	}
	if cluster != nil {
		s.log.Info("overlay cluster member", "member", s.zc.MemberID(), "ctrl", s.zc.CtrlEndpoint())
	}
	if cluster == nil || cluster.Join == "" {
		return s.prepareOverlay()
	}
	// A joining controller finds the overlay's CA registration, policies and services replicated from the
	// member that prepared them; it waits until that member has finished (its last step, recording the
	// platform administrator, is in the shared NATS state), so that two controllers do not create them at once.
	// A write of both at once can still meet (a member joining while the first one starts again): the second
	// try finds what the first created.
	wctx, cancel := context.WithTimeout(ctx, joinSettleTimeout)
	defer cancel()
	for logged := false; ; logged = true {
		_, found, err := s.succession(wctx)
		if err == nil && found {
			break
		}
		if wctx.Err() != nil {
			return fmt.Errorf("controller: joined the overlay cluster, but no controller of it finished its first start within %s (last: %v)", joinSettleTimeout, err)
		}
		if !logged {
			s.log.Info("waiting for the cluster's first controller to finish preparing the overlay")
		}
		select {
		case <-wctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	for attempt := 1; ; attempt++ {
		err := s.prepareOverlay()
		if err == nil || attempt == 3 || ctx.Err() != nil {
			return err
		}
		s.log.Info("preparing the overlay again", "err", err)
		time.Sleep(time.Second)
	}
}

// overlayCollector reports, at each scrape, this controller's view of its overlay cluster; a lone controller
// reports nothing.
type overlayCollector struct {
	leaderDesc, membersDesc *prometheus.Desc
	zc                      atomic.Pointer[zitictrl.Controller]
}

func newOverlayCollector() *overlayCollector {
	return &overlayCollector{
		leaderDesc: prometheus.NewDesc("umbra_overlay_cluster_leader",
			"1 if this controller leads the overlay's raft cluster, else 0.", nil, nil),
		membersDesc: prometheus.NewDesc("umbra_overlay_cluster_members",
			"Members of the overlay's raft cluster as this controller sees them, by whether it holds a connection to them (itself counts as connected).",
			[]string{"connected"}, nil),
	}
}

func (c *overlayCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.leaderDesc
	ch <- c.membersDesc
}

func (c *overlayCollector) Collect(ch chan<- prometheus.Metric) {
	zc := c.zc.Load()
	if zc == nil || !zc.Clustered() {
		return
	}
	members, err := zc.ClusterMembers()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.leaderDesc, err)
		return
	}
	leader, connected, disconnected := 0.0, 0.0, 0.0
	for _, m := range members {
		self := m.ID == zc.MemberID()
		if self && m.Leader {
			leader = 1
		}
		if self || m.Connected {
			connected++
		} else {
			disconnected++
		}
	}
	ch <- prometheus.MustNewConstMetric(c.leaderDesc, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(c.membersDesc, prometheus.GaugeValue, connected, "true")
	ch <- prometheus.MustNewConstMetric(c.membersDesc, prometheus.GaugeValue, disconnected, "false")
}
