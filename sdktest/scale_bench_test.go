package sdktest

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

// scaleSizes are the sizes of the world BenchmarkScale loads. The defaults keep `go test -bench Scale` within a
// few minutes on a small machine; docs/benchmarks.md gives the command for the full size (10,000 identities,
// 1,000 workgroups, 10,000 advertisements).
type scaleSizes struct {
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

func scaleSizesFromEnv(b *testing.B) scaleSizes {
	s := scaleSizes{Identities: 500, Workgroups: 50, Advertisements: 500, Providers: 8, Consumers: 16, ConsumerGroups: 3, Loaders: 8, SettleSeconds: 60}
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

// scaleNetwork is what BenchmarkScale loads and measures: the controllers of one Umbra network. The shared
// in-process network has one; a cluster of controllers supplies one scaleController per controller (and its own
// agents, attached to whichever controller it chooses), and the benchmark reports each controller's figures.
type scaleNetwork struct {
	admin       *agentsdk.Agent // the platform administrator
	controllers []scaleController
}

// scaleController reports one controller's memory and store size.
type scaleController struct {
	name     string
	memory   func() (heapInUse, rss uint64) // of the process the controller runs in
	storeDir string                         // its JetStream store
}

// oneController is the shared test network: its controller runs in this process, so the memory figures are the
// test process's (controller, router and the benchmark's agents together).
func oneController() scaleNetwork {
	return scaleNetwork{admin: env.Admin(), controllers: []scaleController{{
		name: "controller", memory: processMemory, storeDir: filepath.Join(env.Config.DataDir, "jetstream"),
	}}}
}

// BenchmarkScale loads a world through the public API (identities, workgroups, memberships, advertisements) and
// then measures, as enrolled agents, discovery, propose and envelope send→acknowledgement. It logs the load rate
// of each kind and each controller's heap, RSS and JetStream store size after loading. Sizes come from
// UMBRA_SCALE_* environment variables (scaleSizesFromEnv).
func BenchmarkScale(b *testing.B) {
	sizes := scaleSizesFromEnv(b)
	net := oneController()
	w := loadScaleWorld(b, net, sizes)
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

// scaleWorld is what loadScaleWorld built, from the consumers' point of view.
type scaleWorld struct {
	consumers   []*agentsdk.Agent
	consumerAds [][]workgroups.AdvertisementID // advertisements each consumer may propose on
	visible     []int                          // how many advertisements each consumer discovers
}

func loadScaleWorld(b *testing.B, net scaleNetwork, sz scaleSizes) scaleWorld {
	b.Helper()
	ctx := context.Background()
	org := fmt.Sprintf("scale%d", worldSeq.Add(1))
	resp, err := net.admin.Controller().CreateOrg(ctx, org)
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

	w := scaleWorld{consumers: consumers, consumerAds: make([][]workgroups.AdvertisementID, len(consumers)), visible: make([]int, len(consumers))}
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
		settle := time.Duration(sz.SettleSeconds) * time.Second
		var used []string
		for start := time.Now(); time.Since(start) < settle; {
			before, err := loadbench.ProcessCPU(os.Getpid())
			if err != nil {
				b.Fatal(err)
			}
			time.Sleep(min(10*time.Second, settle-time.Since(start)))
			after, err := loadbench.ProcessCPU(os.Getpid())
			if err != nil {
				b.Fatal(err)
			}
			used = append(used, (after - before).Round(10*time.Millisecond).String())
		}
		b.Logf("left alone for %s after loading: this process used %s of CPU in each 10 s", settle, strings.Join(used, ", "))
	}
	runtime.GC()
	for _, c := range net.controllers {
		heap, rss := c.memory()
		store, err := dirSize(c.storeDir)
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("%s after loading: heap in use %d MiB, RSS %d MiB, JetStream store %d MiB", c.name, heap>>20, rss>>20, store>>20)
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

// processMemory is this process's heap in use (after a collection) and resident set size.
func processMemory() (heapInUse, rss uint64) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, _ = loadbench.RSS(0)
	return ms.HeapInuse, rss
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
