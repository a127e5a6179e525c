package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/devcluster"
	"github.com/umbra-mesh/umbra/internal/loadbench"
	"github.com/umbra-mesh/umbra/internal/scalebench"
	"github.com/umbra-mesh/umbra/workgroups"
)

// BenchmarkClusterRecordPath measures the record path of BenchmarkRecordPath (sdktest) on real processes, one
// controller against three, side by side in one run: first a lone `umbra controller` and one `umbra router`, then
// a cluster of three controllers (one overlay raft cluster, one NATS cluster keeping every stream in three copies)
// and two routers, each started as `umbra dev` starts it (internal/devcluster) in a directory of its own and
// stopped before the next. On each, N sessions, one sender each, 512-byte payloads: envelopes/s and p50/p99 from
// send to acknowledgement (internal/loadbench). The senders' sessions belong to three agents, each authenticated
// through another controller (round robin; all through the one on the lone controller). After each run it
// reports each controller's resident set (rss-MB-c1, ...), how many envelopes each controller's relay accepted
// in the run (accepted-c1, ...: which relay takes a session's connection is the overlay's choice), the CPU time
// of every member process per envelope (members-cpu-us/envelopes; cpu-us/envelopes is the benchmark process, the
// agents, alone) and the 1-minute load average (load1). Every acknowledged envelope must be counted by a relay.
//
// Only with -bench, never with -short: a cluster takes a minute or more to start on a loaded machine.
func BenchmarkClusterRecordPath(b *testing.B) {
	if testing.Short() {
		b.Skip("starts clusters of umbra processes")
	}
	bin := umbraBinary(b)
	payload := []byte(strings.Repeat("x", 512))
	for _, shape := range []struct{ controllers, routers int }{{1, 1}, {3, 2}} {
		b.Run(fmt.Sprintf("controllers-%d", shape.controllers), func(b *testing.B) {
			bc := startBenchCluster(b, bin, shape.controllers, shape.routers)
			for _, n := range []int{32, 128} {
				b.Run(fmt.Sprintf("sessions-%d", n), func(b *testing.B) {
					bc.measure(b, n, payload)
				})
			}
		})
	}
}

// BenchmarkClusterScale is sdktest's BenchmarkScale on a cluster of three controller processes and two routers
// (internal/scalebench, sizes from UMBRA_SCALE_* variables): the world is loaded through the platform
// administrator's and its organisation's agents, which enroll and authenticate wherever their tokens name, and
// each controller's resident set, JetStream store and CPU while the loaded world settles are reported per
// controller. Only with -bench, never with -short.
func BenchmarkClusterScale(b *testing.B) {
	if testing.Short() {
		b.Skip("starts a cluster of umbra processes")
	}
	c, _ := startCluster(b, umbraBinary(b), 3, 2)
	net := scalebench.Network{Admin: connectFile(b, c.AdminIdentityPath())}
	for _, m := range c.Layout().Controllers {
		net.Controllers = append(net.Controllers, scalebench.Controller{
			Name: m.Name, StoreDir: filepath.Join(c.MemberDir(m.Name), "jetstream"),
			PID: func() int { return c.PIDs()[m.Name] },
		})
	}
	scalebench.Run(b, net)
}

// benchCluster is a running cluster of the benchmark with the agents that send on it.
type benchCluster struct {
	c        *devcluster.Cluster
	ms       []*member
	provider *agentsdk.Agent
	senders  []*agentsdk.Agent
	ad       workgroups.AdvertisementID
	sends    []func() error // one per session opened so far; each sends one envelope
	acked    atomic.Int64   // envelopes acknowledged by sends
}

// startBenchCluster starts controllers and routers as `umbra dev` does, in a new directory, and creates through
// the public API an organisation, a provider enrolled at the first controller, three senders enrolled at the
// controllers in turn, and the provider's advertisement. The cluster is stopped when b ends.
func startBenchCluster(b *testing.B, bin string, controllers, routers int) *benchCluster {
	b.Helper()
	c, dir := startCluster(b, bin, controllers, routers)
	bc := &benchCluster{c: c}
	for _, m := range c.Layout().Controllers {
		bc.ms = append(bc.ms, &member{name: m.Name, enroll: strconv.Itoa(m.Enroll), metrics: strconv.Itoa(m.Metrics)})
	}
	platform := connectFile(b, c.AdminIdentityPath())
	o := newClusterOrg(b, dir, "bench", platform, bc.ms, 0)
	bc.provider = o.agent("provider", 0)
	for i := range 3 {
		bc.senders = append(bc.senders, o.agent(fmt.Sprintf("sender-%d", i+1), i%len(bc.ms)))
	}
	terms := workgroups.Terms{MaxDuration: workgroups.Duration(24 * time.Hour), MaxMessages: 1 << 40,
		AllowedMessageTypes: []string{"tick"}, MaxEnvelopeBytes: 4096}
	o.step("advertise", time.Minute, func(ctx context.Context) error {
		ad, err := bc.provider.Advertise(ctx, workgroups.AgentCard{Name: "Bench", Version: "1", MessageTypes: []string{"tick"}}, terms, o.wg)
		bc.ad = ad.ID
		return err
	})
	return bc
}

// startCluster starts controllers and routers as `umbra dev` does, in a new directory, and returns once the
// cluster is ready. The cluster is stopped when b ends.
func startCluster(b *testing.B, bin string, controllers, routers int) (*devcluster.Cluster, string) {
	b.Helper()
	dir := filepath.Join(b.TempDir(), "data")
	c, err := devcluster.New(devcluster.Config{Dir: dir, Exe: bin, Controllers: controllers, Routers: routers, StartTimeout: 5 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { // after the cluster stopped (cleanups run last first)
		if !b.Failed() {
			return
		}
		keep, err := os.MkdirTemp("", "umbra-bench-logs-")
		if err == nil {
			err = os.CopyFS(keep, os.DirFS(filepath.Join(dir, "logs")))
		}
		if err != nil {
			b.Logf("keeping the members' logs: %v", err)
			return
		}
		b.Logf("the members' logs: %s", keep)
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		select {
		case <-errc:
		case <-time.After(time.Minute):
			b.Errorf("the cluster in %s did not stop within a minute", dir)
		}
	})
	start := time.Now()
	select {
	case err := <-errc:
		b.Fatalf("the cluster stopped before it was ready: %v", err)
	case <-c.Ready():
	case <-time.After(7 * time.Minute):
		b.Fatalf("the cluster was not ready within 7 minutes (logs in %s)", filepath.Join(dir, "logs"))
	}
	b.Logf("controllers: %d, routers: %d, ready in %s; load average %s", controllers, routers,
		time.Since(start).Round(time.Millisecond), loadbench.LoadAverage())

	return c, dir
}

// measure opens sessions up to n, the next one by the next sender, sends an envelope on each (which opens its
// relay connection), and then has one sender per session send until b.N envelopes are acknowledged.
func (bc *benchCluster) measure(b *testing.B, n int, payload []byte) {
	for len(bc.sends) < n {
		from := bc.senders[len(bc.sends)%len(bc.senders)]
		var sess *agentsdk.Session
		retryFor(b, "propose", time.Minute, func(ctx context.Context) error {
			var err error
			sess, err = from.Propose(ctx, bc.ad, workgroups.Proposal{})
			return err
		})
		send := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := sess.Send(ctx, "tick", payload); err != nil {
				return err
			}
			bc.acked.Add(1)
			return nil
		}
		if err := send(); err != nil {
			b.Fatalf("the first envelope of session %d: %v", len(bc.sends)+1, err)
		}
		bc.sends = append(bc.sends, send)
	}
	before := bc.counted(b)
	cpu0 := bc.membersCPU(b)
	acked0 := bc.acked.Load()
	loadbench.Run(b, "envelopes", bc.sends[:n])
	if acked := bc.acked.Load() - acked0; acked != int64(b.N) {
		b.Fatalf("%d envelopes acknowledged, want %d", acked, b.N)
	}
	cpu := bc.membersCPU(b) - cpu0
	after := bc.counted(b)
	b.Logf("N=%d: relays' accepted counters %v before the run, %v after; load average %s", b.N, before, after, loadbench.LoadAverage())
	pids := bc.c.PIDs()
	for i, m := range bc.ms {
		rss, err := loadbench.RSS(pids[m.name])
		if err != nil {
			b.Fatalf("%s: %v", m.name, err)
		}
		b.ReportMetric(float64(rss)/(1<<20), "rss-MB-"+m.name)
		b.ReportMetric(after[i]-before[i], "accepted-"+m.name)
	}
	b.ReportMetric(float64(cpu)/float64(time.Microsecond)/float64(b.N), "members-cpu-us/envelopes")
	load1, _ := strconv.ParseFloat(strings.Fields(loadbench.LoadAverage() + " 0")[0], 64)
	b.ReportMetric(load1, "load1")
}

// counted reads each controller's count of envelopes its relay accepted once their sum is the number of
// envelopes acknowledged so far (the cluster is new, and only the benchmark sends), which it must be within 10 s:
// a relay counts an envelope as it answers, so its counter may lag the acknowledgement a moment.
func (bc *benchCluster) counted(b *testing.B) []float64 {
	b.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		c, err := bc.accepted()
		if err != nil {
			b.Fatal(err)
		}
		var sum float64
		for _, v := range c {
			sum += v
		}
		if acked := float64(bc.acked.Load()); sum == acked || time.Now().After(deadline) {
			if sum != acked {
				b.Fatalf("the relays accepted %v envelopes (%v), %v were acknowledged", sum, c, acked)
			}
			return c
		}
	}
}

// membersCPU is the CPU time every member process of the cluster has used so far.
func (bc *benchCluster) membersCPU(b *testing.B) time.Duration {
	var total time.Duration
	for name, pid := range bc.c.PIDs() {
		cpu, err := loadbench.ProcessCPU(pid)
		if err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		total += cpu
	}
	return total
}

// accepted reads each controller's count of envelopes its relay accepted, from its /metrics.
func (bc *benchCluster) accepted() ([]float64, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	out := make([]float64, len(bc.ms))
	for i, m := range bc.ms {
		resp, err := client.Get("http://127.0.0.1:" + m.metrics + "/metrics")
		if err != nil {
			return nil, err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		found := false
		for _, l := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(l, "umbra_relay_envelopes_accepted_total "); ok {
				if out[i], err = strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil {
					return nil, fmt.Errorf("%s: %s: %w", m.name, l, err)
				}
				found = true
			}
		}
		if !found {
			return nil, errors.New(m.name + ": no umbra_relay_envelopes_accepted_total in its /metrics")
		}
	}
	return out, nil
}
