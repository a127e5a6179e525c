// Package scalebench loads a world of many identities, workgroups and advertisements into an Umbra network
// through its public API and measures discovery, propose and envelope latency in it, the same way for the
// in-process test network and for a cluster of controller processes, so that their figures in
// docs/benchmarks.md compare.
package scalebench

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/loadbench"
	"github.com/umbra-mesh/umbra/workgroups"
)

var worldSeq atomic.Int64

// Sizes are the sizes of the world Run loads. The defaults keep a run within a few
// minutes on a small machine; docs/benchmarks.md gives the command for the full size (10,000 identities,
// 1,000 workgroups, 10,000 advertisements).
type Sizes struct {
	Identities     int // directory identities, created with an enrollment token and never enrolled
	Workgroups     int // intra-organisation workgroups
	Advertisements int // spread evenly over the workgroups
	Providers      int // enrolled agents that advertise (each is a member of the workgroups it advertises in)
	Consumers      int // enrolled agents that discover, propose and send
	ConsumerGroups int // workgroups each consumer is a member of
	Loaders        int // concurrent API callers while loading
	// SettleSeconds is how long the loaded world is left alone before it is measured: what loading set off in
	// the background (OpenZiti's service updates to routers and agents) ends, or shows in the CPU it used.
	SettleSeconds int
}

// SizesFromEnv is the default Sizes with any UMBRA_SCALE_* variable set in the environment in its place.
func SizesFromEnv(b *testing.B) Sizes {
	b.Helper()
	s := Sizes{Identities: 500, Workgroups: 50, Advertisements: 500, Providers: 8, Consumers: 16, ConsumerGroups: 3, Loaders: 8, SettleSeconds: 60}
	for name, p := range map[string]*int{
		"UMBRA_SCALE_IDENTITIES": &s.Identities, "UMBRA_SCALE_WORKGROUPS": &s.Workgroups,
		"UMBRA_SCALE_ADVERTISEMENTS": &s.Advertisements, "UMBRA_SCALE_PROVIDERS": &s.Providers,
		"UMBRA_SCALE_CONSUMERS": &s.Consumers, "UMBRA_SCALE_LOADERS": &s.Loaders,
		"UMBRA_SCALE_SETTLE_SECONDS": &s.SettleSeconds,
	} {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n == 0 && name != "UMBRA_SCALE_SETTLE_SECONDS" {
				b.Fatalf("%s=%q: give a positive whole number", name, v)
			}
			*p = n
		}
	}
	s.ConsumerGroups = min(s.ConsumerGroups, s.Workgroups)
	return s
}

// Network is what Run loads and measures: the controllers of one Umbra network. An in-process network has one,
// running in the benchmark's own process; a cluster of controllers has one per controller process, and the
// benchmark reports each one's figures.
type Network struct {
	Admin       *agentsdk.Agent // the platform administrator
	Controllers []Controller
}

// Controller is where one controller of the network runs and keeps its store.
type Controller struct {
	Name     string
	PID      func() int // its process now (a member restarted after a crash has another); nil for the benchmark's own, whose heap is reported too
	StoreDir string     // its JetStream store
}

// Run loads a world into net through the public API (identities, workgroups, memberships, advertisements) and
// then measures, as enrolled agents, discovery, propose and envelope send→acknowledgement. It logs the load rate
// of each kind and each controller's memory and JetStream store size after loading. Sizes come from UMBRA_SCALE_*
// environment variables (SizesFromEnv).
func Run(b *testing.B, net Network) {
	w := load(b, net, SizesFromEnv(b))
	ctx := context.Background()

	b.Run("discover", func(b *testing.B) {
		workers := make([]func() error, len(w.consumers))
		for i, c := range w.consumers {
			want := w.visible[i]
			workers[i] = func() error {
				dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				ads, err := c.Discover(dctx, api.DiscoverRequest{})
				if err != nil {
					return err
				}
				if len(ads) != want {
					return fmt.Errorf("discovery returned %d advertisements, want %d", len(ads), want)
				}
				return nil
			}
		}
		loadbench.Run(b, "discoveries", workers)
	})
	b.Run("propose", func(b *testing.B) {
		workers := make([]func() error, len(w.consumers))
		for i, c := range w.consumers {
			ads := w.consumerAds[i]
			var next atomic.Int64
			workers[i] = func() error {
				pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				ad := ads[int(next.Add(1))%len(ads)]
				s, err := c.Propose(pctx, ad, workgroups.Proposal{})
				if err != nil {
					return err
				}
				if st := s.Info().State; st != workgroups.StateAccepted {
					return fmt.Errorf("proposal within the terms is %s, want accepted", st)
				}
				return nil
			}
		}
		loadbench.Run(b, "proposals", workers)
	})
	b.Run("envelope", func(b *testing.B) {
		payload := []byte(strings.Repeat("x", 512))
		workers := make([]func() error, len(w.consumers))
		for i, c := range w.consumers {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			sess, err := c.Propose(sctx, w.consumerAds[i][0], workgroups.Proposal{})
			cancel()
			if err != nil {
				b.Fatal(err)
			}
			workers[i] = func() error {
				sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				_, err := sess.Send(sctx, "scale.request", payload)
				return err
			}
			if err := workers[i](); err != nil { // opens the session's relay connection
				b.Fatal(err)
			}
		}
		loadbench.Run(b, "envelopes", workers)
	})
}

// world is what load built, from the consumers' point of view.
type world struct {
	consumers   []*agentsdk.Agent
	consumerAds [][]workgroups.AdvertisementID // advertisements each consumer may propose on
	visible     []int                          // how many advertisements each consumer discovers
}

func load(b *testing.B, net Network, sz Sizes) world {
	ctx := context.Background()
	org := fmt.Sprintf("scale%d", worldSeq.Add(1))
	resp, err := net.Admin.Controller().CreateOrg(ctx, org)
	if err != nil {
		b.Fatal(err)
	}
	orgAdminID, err := agentsdk.Enroll(ctx, resp.AdminToken)
	if err != nil {
		b.Fatal(err)
	}
	admin, err := agentsdk.Connect(ctx, orgAdminID)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { admin.Close() })
	b.Logf("load average before loading: %s", loadbench.LoadAverage())

	// Directory identities: created, never enrolled.
	timed(b, "identities", sz.Identities, sz.Loaders, func(i int) error {
		_, err := admin.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: org, Kind: "agent", Name: fmt.Sprintf("dir%06d", i)})
		return err
	})
	enrolled := make([]*agentsdk.Agent, sz.Providers+sz.Consumers)
	timed(b, "enrolled agents", len(enrolled), sz.Loaders, func(i int) error {
		r, err := admin.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: org, Kind: "agent", Name: fmt.Sprintf("agent%03d", i)})
		if err != nil {
			return err
		}
		id, err := agentsdk.Enroll(ctx, r.Token)
		if err != nil {
			return err
		}
		if enrolled[i], err = agentsdk.Connect(ctx, id); err != nil {
			return err
		}
		return nil
	})
	b.Cleanup(func() {
		for _, a := range enrolled {
			if a != nil {
				a.Close()
			}
		}
	})
	providers, consumers := enrolled[:sz.Providers], enrolled[sz.Providers:]

	wgs := make([]workgroups.WorkgroupID, sz.Workgroups)
	timed(b, "workgroups", sz.Workgroups, sz.Loaders, func(i int) error {
		v, err := admin.Controller().CreateWorkgroup(ctx, fmt.Sprintf("wg%05d", i))
		wgs[i] = v.ID
		return err
	})
	// Workgroup i has provider i mod Providers; consumer c is in ConsumerGroups workgroups spread over all.
	consumerWGs := make([][]int, len(consumers))
	type member struct{ wg, agent int }
	var members []member
	for i := range wgs {
		members = append(members, member{i, i % len(providers)})
	}
	for c := range consumers {
		for k := range sz.ConsumerGroups {
			wg := (c*7919 + k*sz.Workgroups/sz.ConsumerGroups) % sz.Workgroups
			consumerWGs[c] = append(consumerWGs[c], wg)
			members = append(members, member{wg, len(providers) + c})
		}
	}
	timed(b, "memberships", len(members), sz.Loaders, func(i int) error {
		m := members[i]
		_, err := admin.Controller().AddMember(ctx, wgs[m.wg], enrolled[m.agent].ID(), "")
		return err
	})

	terms := workgroups.Terms{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 1 << 40,
		AllowedMessageTypes: []string{"scale.request", "scale.response"}, MaxEnvelopeBytes: 4096}
	adsByWG := make([][]workgroups.AdvertisementID, sz.Workgroups)
	var mu sync.Mutex
	timed(b, "advertisements", sz.Advertisements, sz.Loaders, func(i int) error {
		wg := i % sz.Workgroups
		card := workgroups.AgentCard{Name: fmt.Sprintf("Agent %d", i), Description: "answers scale requests", Version: "1.0",
			Skills:       []workgroups.Skill{{ID: "scale", Name: "Scale", Tags: []string{"bench"}}},
			MessageTypes: []string{"scale.*"}}
		ad, err := providers[wg%len(providers)].Advertise(ctx, card, terms, wgs[wg])
		if err != nil {
			return err
		}
		mu.Lock()
		adsByWG[wg] = append(adsByWG[wg], ad.ID)
		mu.Unlock()
		return nil
	})

	w := world{consumers: consumers, consumerAds: make([][]workgroups.AdvertisementID, len(consumers)), visible: make([]int, len(consumers))}
	for c, mine := range consumerWGs {
		seen := map[int]bool{}
		for _, wg := range mine {
			if !seen[wg] {
				seen[wg] = true
				w.consumerAds[c] = append(w.consumerAds[c], adsByWG[wg]...)
			}
		}
		w.visible[c] = len(w.consumerAds[c])
		if w.visible[c] == 0 {
			b.Fatalf("consumer %d sees no advertisement: give more advertisements than workgroups", c)
		}
	}
	if sz.SettleSeconds > 0 {
		settle(b, net, time.Duration(sz.SettleSeconds)*time.Second)
	}
	runtime.GC()
	for _, c := range net.Controllers {
		store, err := dirSize(c.StoreDir)
		if err != nil {
			b.Fatal(err)
		}
		pid := 0
		if c.PID != nil {
			if pid = c.PID(); pid == 0 {
				b.Fatalf("%s is not running", c.Name)
			}
		}
		rss, err := loadbench.RSS(pid)
		if err != nil {
			b.Fatalf("%s: %v", c.Name, err)
		}
		heap := ""
		if c.PID == nil {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			heap = fmt.Sprintf("heap in use %d MiB, ", ms.HeapInuse>>20)
		}
		b.Logf("%s after loading: %sRSS %d MiB, JetStream store %.1f MiB", c.Name, heap, rss>>20, float64(store)/(1<<20))
	}
	b.Logf("load average after loading: %s", loadbench.LoadAverage())
	return w
}

// timed runs n calls of do over workers goroutines, fails the benchmark on the first error, and logs the rate.
func timed(b *testing.B, kind string, n, workers int, do func(i int) error) {
	b.Helper()
	var next, loaded atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	stop := make(chan struct{})
	defer close(stop)
	go progress(kind, n, start, &loaded, stop)
	for range min(workers, max(n, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first.Load() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := do(i); err != nil {
					first.CompareAndSwap(nil, fmt.Errorf("%s %d: %w", kind, i, err))
					return
				}
				loaded.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := first.Load().(error); err != nil {
		b.Fatal(err)
	}
	d := time.Since(start)
	b.Logf("loaded %d %s in %s (%.1f/s)", n, kind, d.Round(time.Millisecond), float64(n)/d.Seconds())
}

// progress prints, once a minute until stop closes, how many of n of a kind are loaded and the rate of the last
// minute: printed at once rather than logged (a benchmark's log appears when it ends), so that a load which
// slows down shows it, and a run stopped before the end still tells how far it got.
func progress(kind string, n int, start time.Time, loaded *atomic.Int64, stop <-chan struct{}) {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	var before int64
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			now := loaded.Load()
			fmt.Printf("    scale: %d of %d %s after %s (%.1f/s in the last minute)\n",
				now, n, kind, time.Since(start).Round(time.Second), float64(now-before)/60)
			before = now
		}
	}
}

// settle leaves the loaded world alone for d and logs the CPU time this process and each controller's process
// used in each 10 s of it: what loading set off in the background (OpenZiti's service updates to routers and
// agents) ends, or shows, before the measurements.
func settle(b *testing.B, net Network, d time.Duration) {
	b.Helper()
	pids := []func() int{os.Getpid}
	names := []string{"this process"}
	for _, c := range net.Controllers {
		if c.PID != nil {
			pids = append(pids, c.PID)
			names = append(names, c.Name)
		}
	}
	used := make([][]string, len(pids))
	cpu := func() []time.Duration {
		out := make([]time.Duration, len(pids))
		for i, pid := range pids {
			p := pid()
			if p == 0 {
				b.Fatalf("%s is not running", names[i])
			}
			v, err := loadbench.ProcessCPU(p)
			if err != nil {
				b.Fatalf("%s: %v", names[i], err)
			}
			out[i] = v
		}
		return out
	}
	for start := time.Now(); time.Since(start) < d; {
		before := cpu()
		time.Sleep(min(10*time.Second, d-time.Since(start)))
		for i, v := range cpu() {
			used[i] = append(used[i], (v - before[i]).Round(10*time.Millisecond).String())
		}
	}
	for i, name := range names {
		b.Logf("left alone for %s after loading: %s used %s of CPU in each 10 s", d, name, strings.Join(used[i], ", "))
	}
}

func dirSize(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking (a compacted block)
			}
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return nil
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
}
