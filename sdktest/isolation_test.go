package sdktest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openziti/sdk-golang/ziti"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// isolationSeed fixes the random topologies; UMBRA_ISOLATION_SEED replays another seed.
const isolationSeed = 0x5eed_a2a

// isolationSettle bounds how long the overlay may lag behind a change the controller acknowledged.
const isolationSettle = 10 * time.Second

var isolationRun atomic.Int32

// isoWorld is a random topology as the test built it: the model the controller's answers are checked against.
type isoWorld struct {
	orgs   []string
	admins []*agentsdk.Agent // admins[i] administers orgs[i]
	agents []*agentsdk.Agent
	org    map[spiffeid.ID]int
	wgs    []*isoWorkgroup
	ads    []*isoAd
}

type isoWorkgroup struct {
	id      workgroups.WorkgroupID
	kind    string // intra, inter (every invitation accepted), declined or pending
	owner   int
	active  bool
	members map[spiffeid.ID]bool
}

type isoAd struct {
	id       workgroups.AdvertisementID
	provider *agentsdk.Agent
	scope    []workgroups.WorkgroupID
}

func (w *isoWorld) identities() []*agentsdk.Agent { return slices.Concat(w.admins, w.agents) }

func (w *isoWorld) workgroup(id workgroups.WorkgroupID) *isoWorkgroup {
	for _, g := range w.wgs {
		if g.id == id {
			return g
		}
	}
	return nil
}

// visible is the rule, computed from the model: x shares an active workgroup of the ad's scope.
func (w *isoWorld) visible(x spiffeid.ID, ad *isoAd) bool {
	for _, id := range ad.scope {
		if g := w.workgroup(id); g != nil && g.active && g.members[x] {
			return true
		}
	}
	return false
}

func (w *isoWorld) name(id spiffeid.ID) string {
	ident, err := workgroups.ParseIdentity(id)
	if err != nil {
		return id.String()
	}
	return ident.Org + "/" + ident.Name
}

// removeMember mirrors what the controller does when x leaves g: x's advertisements lose g from their scope,
// and those left with none are withdrawn.
func (w *isoWorld) removeMember(g *isoWorkgroup, x spiffeid.ID) {
	delete(g.members, x)
	w.retract(g.id, func(ad *isoAd) bool { return ad.provider.ID() == x })
}

func (w *isoWorld) deleteWorkgroup(g *isoWorkgroup) {
	w.wgs = slices.DeleteFunc(w.wgs, func(o *isoWorkgroup) bool { return o == g })
	w.retract(g.id, func(*isoAd) bool { return true })
}

func (w *isoWorld) retract(wg workgroups.WorkgroupID, match func(*isoAd) bool) {
	for _, ad := range w.ads {
		if match(ad) {
			ad.scope = slices.DeleteFunc(ad.scope, func(s workgroups.WorkgroupID) bool { return s == wg })
		}
	}
	w.ads = slices.DeleteFunc(w.ads, func(ad *isoAd) bool { return len(ad.scope) == 0 })
}

func isolationRNG(t *testing.T) *mrand.Rand {
	seed := uint64(isolationSeed)
	if s := os.Getenv("UMBRA_ISOLATION_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 0, 64)
		if err != nil {
			t.Fatalf("UMBRA_ISOLATION_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("seed %#x (replay with UMBRA_ISOLATION_SEED=%#x)", seed, seed)
	return mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// buildIsoWorld creates 3-4 organisations, 6-8 agents and 4-5 workgroups: at least one inter-org workgroup
// every invited organisation accepted, one declined, one left pending, the rest intra- or inter-org; agents
// join the workgroups their organisation may join at random, and each agent in an active workgroup advertises
// in 1-2 of them and hosts its advertisement's overlay service.
func buildIsoWorld(t *testing.T, ctx context.Context, rng *mrand.Rand, round int) *isoWorld {
	t.Helper()
	run := isolationRun.Add(1)
	w := &isoWorld{org: map[spiffeid.ID]int{}}
	for i := range 3 + rng.IntN(2) {
		name := fmt.Sprintf("iso%dr%do%d", run, round, i)
		w.orgs = append(w.orgs, name)
		a := orgAdmin(t, name)
		w.admins = append(w.admins, a)
		w.org[a.ID()] = i
	}
	for j := range 6 + rng.IntN(3) {
		i := j
		if j >= len(w.orgs) {
			i = rng.IntN(len(w.orgs))
		}
		a := orgAgent(t, w.admins[i], w.orgs[i], fmt.Sprintf("agent%d", j))
		w.agents = append(w.agents, a)
		w.org[a.ID()] = i
	}

	kinds := []string{"inter", "declined", "pending"}
	for n := 4 + rng.IntN(2); len(kinds) < n; {
		kinds = append(kinds, []string{"intra", "inter"}[rng.IntN(2)])
	}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	for k, kind := range kinds {
		w.wgs = append(w.wgs, buildIsoWorkgroup(t, ctx, rng, w, k, kind))
	}

	for j, a := range w.agents {
		var mine []workgroups.WorkgroupID
		for _, g := range w.wgs {
			if g.active && g.members[a.ID()] {
				mine = append(mine, g.id)
			}
		}
		if len(mine) == 0 {
			continue
		}
		rng.Shuffle(len(mine), func(i, j int) { mine[i], mine[j] = mine[j], mine[i] })
		scope := mine[:1+rng.IntN(min(2, len(mine)))]
		card := workgroups.AgentCard{Name: fmt.Sprintf("Agent %d", j), Description: "isolation probe", Version: "1.0",
			Skills: []workgroups.Skill{{ID: "probe", Name: "Probe"}}, MessageTypes: []string{"quote.*"}}
		ad, err := a.Advertise(ctx, card, defaultTerms(), scope...)
		if err != nil {
			t.Fatalf("advertise %s in %v: %v", w.name(a.ID()), scope, err)
		}
		w.ads = append(w.ads, &isoAd{id: ad.ID, provider: a, scope: slices.Clone(scope)})
		serveEcho(t, a, adService(ad.ID))
	}
	for _, g := range w.wgs {
		var ms []string
		for id := range g.members {
			ms = append(ms, w.name(id))
		}
		slices.Sort(ms)
		t.Logf("round %d: %s %s active=%v members %v", round, g.kind, g.id, g.active, ms)
	}
	for _, ad := range w.ads {
		t.Logf("round %d: %s by %s in %v", round, ad.id, w.name(ad.provider.ID()), ad.scope)
	}
	return w
}

func adService(adID workgroups.AdvertisementID) string { return "a2a." + adID.String() }

func buildIsoWorkgroup(t *testing.T, ctx context.Context, rng *mrand.Rand, w *isoWorld, k int, kind string) *isoWorkgroup {
	t.Helper()
	owner := rng.IntN(len(w.orgs))
	var others []int
	for _, i := range rng.Perm(len(w.orgs)) {
		if i != owner {
			others = append(others, i)
		}
	}
	var invited []int
	switch kind {
	case "inter":
		invited = others[:1+rng.IntN(min(2, len(others)))]
	case "declined", "pending":
		invited = others[:2]
	}
	var names []string
	for _, i := range invited {
		names = append(names, w.orgs[i])
	}
	v, err := w.admins[owner].Controller().CreateWorkgroup(ctx, fmt.Sprintf("wg%d", k), names...)
	if err != nil {
		t.Fatalf("create %s workgroup: %v", kind, err)
	}
	g := &isoWorkgroup{id: v.ID, kind: kind, owner: owner, members: map[spiffeid.ID]bool{w.admins[owner].ID(): true}}
	admitted := []int{owner}
	for n, i := range invited {
		if kind != "inter" && n == 1 {
			break // the second invitation is declined after members join, or never answered
		}
		if v, err = w.admins[i].Controller().AnswerInvitation(ctx, g.id, false); err != nil {
			t.Fatalf("accept %s: %v", g.id, err)
		}
		g.members[w.admins[i].ID()] = true
		admitted = append(admitted, i)
	}
	for _, a := range w.agents {
		if o := w.org[a.ID()]; slices.Contains(admitted, o) && rng.IntN(2) == 0 {
			if v, err = w.admins[o].Controller().AddMember(ctx, g.id, a.ID(), ""); err != nil {
				t.Fatalf("add %s to %s: %v", w.name(a.ID()), g.id, err)
			}
			g.members[a.ID()] = true
		}
	}
	if kind == "declined" {
		if v, err = w.admins[invited[1]].Controller().AnswerInvitation(ctx, g.id, true); err != nil {
			t.Fatalf("decline %s: %v", g.id, err)
		}
	}
	want := map[string]workgroups.WorkgroupStatus{"intra": workgroups.StatusActive, "inter": workgroups.StatusActive,
		"declined": workgroups.StatusDeclined, "pending": workgroups.StatusPending}[kind]
	if v.Status != want {
		t.Fatalf("%s workgroup %s is %s, want %s", kind, g.id, v.Status, want)
	}
	g.active = want == workgroups.StatusActive
	return g
}

// isoTally counts the pairs a check covered, so the test fails if the topologies exercised nothing.
type isoTally struct{ visible, hidden int }

// check asserts, for every identity and every advertisement, that discovery, proposals and the overlay agree
// with the model.
func (w *isoWorld) check(t *testing.T, ctx context.Context, phase string, tally *isoTally) {
	t.Helper()
	missing, err := workgroups.NewAdvertisementID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	settle := time.Now().Add(isolationSettle)
	for _, x := range w.identities() {
		xn := w.name(x.ID())
		want := map[string]bool{}
		for _, ad := range w.ads {
			if w.visible(x.ID(), ad) {
				want[ad.id.String()] = true
			}
		}

		// Discovery returns exactly the advertisements the model says x may see, and nothing of other tests.
		found, err := x.Discover(ctx, api.DiscoverRequest{})
		if err != nil {
			t.Fatalf("%s: %s discover: %v", phase, xn, err)
		}
		got := map[string]bool{}
		for _, ad := range found {
			got[ad.ID.String()] = true
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s: %s discovers %v, want %v", phase, xn, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
		}

		// The overlay lists the advertisement's service exactly when it is visible (to its provider as host).
		var services map[string]bool
		for {
			names, err := x.Services()
			if err != nil {
				t.Fatalf("%s: %s services: %v", phase, xn, err)
			}
			services = map[string]bool{}
			for _, s := range names {
				if id, ok := strings.CutPrefix(s, "a2a."); ok {
					services[id] = true
				}
			}
			if maps.Equal(services, want) || time.Now().After(settle) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !maps.Equal(services, want) {
			t.Errorf("%s: %s's overlay lists %v, want %v (a fresh overlay context lists %v)", phase, xn,
				slices.Sorted(maps.Keys(services)), slices.Sorted(maps.Keys(want)), rawAdServices(t, x))
		}

		// What x may not use is as absent as what does not exist.
		_, errMissing := x.Propose(ctx, missing, workgroups.Proposal{})
		var ref *agentsdk.APIError
		if !errors.As(errMissing, &ref) || ref.Code != api.CodeNotFound {
			t.Fatalf("%s: %s proposes on a missing advertisement: %v", phase, xn, errMissing)
		}
		for _, ad := range w.ads {
			own := ad.provider.ID() == x.ID()
			sess, err := x.Propose(ctx, ad.id, workgroups.Proposal{})
			switch {
			case want[ad.id.String()] && !own:
				tally.visible++
				if err != nil || sess.Info().State != workgroups.StateAccepted {
					t.Errorf("%s: %s proposes on visible %s: %v", phase, xn, ad.id, err)
				}
			default:
				// Hidden, or its own (a provider never proposes to itself): not_found, like a missing one.
				if !own {
					tally.hidden++
				}
				var e *agentsdk.APIError
				if !errors.As(err, &e) || e.Status != ref.Status || e.Code != ref.Code ||
					strings.ReplaceAll(e.Message, ad.id.String(), "<ad>") != strings.ReplaceAll(ref.Message, missing.String(), "<ad>") {
					t.Errorf("%s: %s proposes on %s (visible %v, own %v): %v; on a missing one: %v", phase, xn, ad.id, want[ad.id.String()], own, err, errMissing)
				}
			}
			if own {
				continue
			}
			svc := adService(ad.id)
			if want[ad.id.String()] {
				w.dialVisible(t, ctx, phase, x, ad, settle)
				continue
			}
			dctx, dcancel := context.WithTimeout(ctx, 15*time.Second)
			conn, err := x.Dial(dctx, svc)
			dcancel()
			if err == nil {
				peer, _ := agentsdk.PeerIdentity(conn)
				conn.Close()
				t.Errorf("%s: %s dialled hidden %s and reached %s", phase, xn, svc, peer)
			} else if !errors.Is(err, agentsdk.ErrServiceNotFound) {
				t.Errorf("%s: %s dials hidden %s: %v, want ErrServiceNotFound", phase, xn, svc, err)
			}
		}
	}
}

// dialVisible dials a visible advertisement's service and checks the provider answers and sees x.
func (w *isoWorld) dialVisible(t *testing.T, ctx context.Context, phase string, x *agentsdk.Agent, ad *isoAd, settle time.Time) {
	t.Helper()
	svc := adService(ad.id)
	for {
		err := func() error {
			dctx, dcancel := context.WithTimeout(ctx, 15*time.Second)
			defer dcancel()
			conn, err := x.Dial(dctx, svc)
			if err != nil {
				return err
			}
			defer conn.Close()
			if peer, err := agentsdk.PeerIdentity(conn); err != nil || peer != ad.provider.ID() {
				return fmt.Errorf("answered by %s (%v), want %s", peer, err, ad.provider.ID())
			}
			line := make([]byte, len(x.ID().String())+1)
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(conn, line); err != nil {
				return err
			}
			if got := strings.TrimSuffix(string(line), "\n"); got != x.ID().String() {
				return fmt.Errorf("the provider saw %q", got)
			}
			return nil
		}()
		if err == nil {
			return
		}
		if time.Now().After(settle) {
			t.Errorf("%s: %s dials visible %s: %v", phase, w.name(x.ID()), svc, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rawAdServices lists the advertisement services a fresh sdk-golang context of x sees, bypassing the agent's
// cached service list.
func rawAdServices(t *testing.T, x *agentsdk.Agent) []string {
	t.Helper()
	zctx := rawContext(t, x.Identity())
	svcs, err := zctx.GetServices()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range svcs {
		if s.Name != nil && strings.HasPrefix(*s.Name, "a2a.") {
			ids = append(ids, strings.TrimPrefix(*s.Name, "a2a."))
		}
	}
	slices.Sort(ids)
	return ids
}

// checkRawOverlay asks the overlay with sdk-golang directly, without the agent SDK, for one identity that has
// both a visible and a hidden advertisement: the hidden one is neither listed nor dialable.
func (w *isoWorld) checkRawOverlay(t *testing.T, phase string) bool {
	t.Helper()
	for _, x := range w.agents {
		var shown, hidden *isoAd
		for _, ad := range w.ads {
			switch {
			case ad.provider.ID() == x.ID():
			case w.visible(x.ID(), ad):
				shown = ad
			default:
				hidden = ad
			}
		}
		if shown == nil || hidden == nil {
			continue
		}
		zctx := rawContext(t, x.Identity())
		if err := zctx.RefreshServices(); err != nil {
			t.Fatal(err)
		}
		svcs, err := zctx.GetServices()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range svcs {
			if s.Name != nil {
				names = append(names, *s.Name)
			}
		}
		if !slices.Contains(names, adService(shown.id)) {
			t.Errorf("%s: raw overlay of %s does not list visible %s: %v", phase, w.name(x.ID()), shown.id, names)
		}
		if slices.Contains(names, adService(hidden.id)) {
			t.Errorf("%s: raw overlay of %s lists hidden %s", phase, w.name(x.ID()), hidden.id)
		}
		conn, err := zctx.DialWithOptions(adService(hidden.id), &ziti.DialOptions{ConnectTimeout: 10 * time.Second})
		if err == nil {
			conn.Close()
			t.Errorf("%s: raw overlay of %s dialled hidden %s", phase, w.name(x.ID()), hidden.id)
		}
		t.Logf("%s: raw overlay of %s: lists %s, not %s; dial of the hidden one: %v", phase, w.name(x.ID()), shown.id, hidden.id, err)
		return true
	}
	return false
}

// mutate removes memberships (a provider from one workgroup of an advertisement scoped to several, so the
// advertisement shrinks but stays; and a random agent) and, on a coin toss, deletes an active workgroup.
func (w *isoWorld) mutate(t *testing.T, ctx context.Context, rng *mrand.Rand, round int) {
	t.Helper()
	remove := func(g *isoWorkgroup, a *agentsdk.Agent) {
		if _, err := w.admins[w.org[a.ID()]].Controller().RemoveMember(ctx, g.id, a.ID()); err != nil {
			t.Fatalf("remove %s from %s: %v", w.name(a.ID()), g.id, err)
		}
		t.Logf("round %d: removed %s from %s", round, w.name(a.ID()), g.id)
		w.removeMember(g, a.ID())
	}
	for _, i := range rng.Perm(len(w.ads)) {
		if ad := w.ads[i]; len(ad.scope) >= 2 {
			remove(w.workgroup(ad.scope[rng.IntN(len(ad.scope))]), ad.provider)
			break
		}
	}
	type membership struct {
		g *isoWorkgroup
		a *agentsdk.Agent
	}
	var ms []membership
	for _, g := range w.wgs {
		for _, a := range w.agents {
			if g.active && g.members[a.ID()] {
				ms = append(ms, membership{g, a})
			}
		}
	}
	if len(ms) > 0 {
		m := ms[rng.IntN(len(ms))]
		remove(m.g, m.a)
	}
	if rng.IntN(2) == 0 {
		var active []*isoWorkgroup
		for _, g := range w.wgs {
			if g.active {
				active = append(active, g)
			}
		}
		if len(active) > 0 {
			g := active[rng.IntN(len(active))]
			if err := w.admins[g.owner].Controller().DeleteWorkgroup(ctx, g.id); err != nil {
				t.Fatalf("delete %s: %v", g.id, err)
			}
			t.Logf("round %d: deleted %s", round, g.id)
			w.deleteWorkgroup(g)
		}
	}
}

// TestIsolationRandomTopologies checks on random topologies that discovery, proposals and the overlay show an
// advertisement to exactly the identities sharing an active workgroup of its scope, before and after
// memberships are removed and workgroups deleted, and that to everyone else it is indistinguishable from one
// that does not exist.
func TestIsolationRandomTopologies(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rng := isolationRNG(t)
	var tally isoTally
	raw := 0
	for round := range 3 {
		w := buildIsoWorld(t, ctx, rng, round)
		phase := fmt.Sprintf("round %d", round)
		w.check(t, ctx, phase, &tally)
		if w.checkRawOverlay(t, phase) {
			raw++
		}
		w.mutate(t, ctx, rng, round)
		phase += " after changes"
		w.check(t, ctx, phase, &tally)
		if w.checkRawOverlay(t, phase) {
			raw++
		}
	}
	t.Logf("checked %d visible and %d hidden (identity, advertisement) pairs; raw overlay checks: %d", tally.visible, tally.hidden, raw)
	if tally.visible == 0 || tally.hidden == 0 || raw == 0 {
		t.Fatalf("the topologies exercised too little: %d visible, %d hidden pairs, %d raw overlay checks", tally.visible, tally.hidden, raw)
	}
}
