package controller

import (
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/umbra-mesh/umbra/workgroups"
)

// BenchmarkDiscovery measures what a discovery costs the controller as the network grows (visibleAds: the
// caller's memberships, the advertisements it shares an active workgroup with, a Cedar decision for each), without
// the overlay and the audit record, which do not grow with it. The world is written straight into the buckets:
// 1,000 workgroups of one organisation, the caller a member of 3 of them, and advertisements spread evenly over
// all, 10 per workgroup and then 100, so the caller sees 30 and then 300 of 1,000 and then 10,000.
func BenchmarkDiscovery(b *testing.B) {
	if testing.Short() {
		b.Skip("starts a controller")
	}
	w := startAdminWorld(b)
	s, ctx := w.s, w.ctx
	admin := s.AdminID()
	who, err := workgroups.ParseIdentity(admin)
	if err != nil {
		b.Fatal(err)
	}
	caller, err := spiffeid.FromSegments(admin.TrustDomain(), who.Org, "agent", "bench-consumer")
	if err != nil {
		b.Fatal(err)
	}
	provider, err := spiffeid.FromSegments(admin.TrustDomain(), who.Org, "agent", "bench-provider")
	if err != nil {
		b.Fatal(err)
	}
	const nWGs, mine = 1000, 3
	now := time.Now().UTC()
	wgs := make([]workgroups.WorkgroupID, nWGs)
	parallel(b, nWGs, func(i int) error {
		id := workgroups.WorkgroupID{Org: who.Org, Name: fmt.Sprintf("bench%04d", i)}
		wg, err := workgroups.NewWorkgroup(id, workgroups.ScopeIntraOrg, admin, nil, now)
		if err != nil {
			return err
		}
		if err := wg.AddMember(admin, provider, workgroups.RoleMember, now); err != nil {
			return err
		}
		if stride := nWGs / mine; i%stride == 0 && i/stride < mine {
			if err := wg.AddMember(admin, caller, workgroups.RoleMember, now); err != nil {
				return err
			}
		}
		wgs[i] = id
		return s.gov.wgs.create(ctx, wgKey(id), wg)
	})
	terms := workgroups.Terms{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 1000,
		AllowedMessageTypes: []string{"bench.request"}, MaxEnvelopeBytes: 4096}
	loaded := 0
	for _, total := range []int{1000, 10000} {
		parallel(b, total-loaded, func(i int) error {
			id, err := workgroups.NewAdvertisementID(rand.Reader)
			if err != nil {
				return err
			}
			ad := workgroups.Advertisement{ID: id, Provider: provider, Workgroups: []workgroups.WorkgroupID{wgs[(loaded+i)%nWGs]},
				Card: workgroups.AgentCard{Name: fmt.Sprintf("Agent %d", loaded+i), Description: "answers bench requests", Version: "1.0",
					Skills: []workgroups.Skill{{ID: "bench", Name: "Bench", Tags: []string{"bench"}}}, MessageTypes: []string{"bench.*"}},
				Terms: terms}
			return s.gov.ads.create(ctx, id.String(), ad)
		})
		loaded = total
		want := mine * total / nWGs
		b.Run(fmt.Sprintf("ads-%d", total), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ads, _, err := s.visibleAds(ctx, caller)
				if err != nil {
					b.Fatal(err)
				}
				if len(ads) != want {
					b.Fatalf("discovery returned %d advertisements, want %d", len(ads), want)
				}
			}
		})
	}
}

// parallel calls do(0) … do(n-1) from 8 goroutines and fails b on the first error.
func parallel(b *testing.B, n int, do func(i int) error) {
	b.Helper()
	var g errgroup.Group
	g.SetLimit(8)
	for i := range n {
		g.Go(func() error { return do(i) })
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
}
