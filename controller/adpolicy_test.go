package controller

import (
	"crypto/rand"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/zitictrl"
	"github.com/umbra-mesh/umbra/workgroups"
)

// adState reads back what the overlay holds for advertisements: the attributes of each advertisement's service
// and the roles of each policy named umbra-a2a…, both shapes.
type adState struct {
	t        *testing.T
	m        *zitictrl.Mgmt
	services map[string]zitictrl.Service
	policies map[string]zitictrl.ServicePolicy
}

func readAdState(t *testing.T, m *zitictrl.Mgmt) adState {
	t.Helper()
	services, err := m.Services(adServicePrefix)
	if err != nil {
		t.Fatal(err)
	}
	policies, err := m.ServicePolicies("umbra-a2a")
	if err != nil {
		t.Fatal(err)
	}
	return adState{t: t, m: m, services: services, policies: policies}
}

func (st adState) wantService(what string, id workgroups.AdvertisementID, attrs ...string) {
	st.t.Helper()
	svc, ok := st.services[AdvertisementService(id)]
	if !ok {
		st.t.Fatalf("%s: no service for advertisement %s", what, id)
	}
	if !zitictrl.SameRoles(svc.Attributes, attrs) {
		st.t.Fatalf("%s: the service of %s carries %q, want %q", what, id, svc.Attributes, attrs)
	}
}

func (st adState) wantPolicy(what, name, kind string, identities, services []string) {
	st.t.Helper()
	p, ok := st.policies[name]
	if !ok {
		st.t.Fatalf("%s: no policy %s (have %d)", what, name, len(st.policies))
	}
	if p.Kind != kind || !zitictrl.SameRoles(p.IdentityRoles, identities) || !zitictrl.SameRoles(p.ServiceRoles, services) {
		st.t.Fatalf("%s: policy %s is %s %q -> %q, want %s %q -> %q", what, name, p.Kind, p.IdentityRoles, p.ServiceRoles,
			kind, identities, services)
	}
}

// startAdWorld is startAdminWorld once the controller's start-up reconciliation of advertisements has ended (it
// would otherwise run beside the test's own), with the overlay identity of the platform administrator, the provider
// of the tests' advertisements. Skipped with -short.
func startAdWorld(t *testing.T) (adminWorld, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a controller")
	}
	w := startAdminWorld(t)
	select {
	case <-w.s.adsSettled:
	case <-time.After(time.Minute):
		t.Fatal("the start-up reconciliation of advertisements did not end within a minute")
	}
	provider, _, err := w.s.ids.get(w.ctx, w.s.AdminID())
	if err != nil {
		t.Fatal(err)
	}
	return w, provider.OverlayID
}

func newAdID(t *testing.T) workgroups.AdvertisementID {
	t.Helper()
	id, err := workgroups.NewAdvertisementID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestAdServicesFollowProviderAndWorkgroups checks on a real overlay the shape of advertisements: each one's
// service carries an attribute per workgroup and one for its provider, one dial policy per workgroup lets the
// workgroup's members dial them and one bind policy per provider lets it bind them. reconcileAdPolicies moves a
// network of the earlier shape (a dial and a bind policy per advertisement, naming per-advertisement attributes)
// to this one, deleting the old policies; it strips the service of an advertisement that is gone (but not one
// younger than its grace, which may be being published) and is idempotent. Narrowing an advertisement narrows
// its service's attributes, retracting it strips them; a grant cannot take a name of this shape.
func TestAdServicesFollowProviderAndWorkgroups(t *testing.T) {
	w, ov := startAdWorld(t)
	s, ctx, m := w.s, w.ctx, w.s.zc.Mgmt()
	pricing, ops := workgroups.WorkgroupID{Org: "acme", Name: "pricing"}, workgroups.WorkgroupID{Org: "acme", Name: "ops"}
	live := workgroups.Advertisement{ID: newAdID(t), Provider: s.AdminID(), Workgroups: []workgroups.WorkgroupID{pricing, ops}}
	gone := newAdID(t)
	// The shape of before: the service carried ad.<id>, the provider ad.<id>.bind, each member ad.<id>.dial, and
	// two policies per advertisement named them.
	for _, id := range []workgroups.AdvertisementID{live.ID, gone} {
		attr := "ad." + id.String()
		if _, err := m.EnsureService(AdvertisementService(id), []string{attr}); err != nil {
			t.Fatal(err)
		}
		for _, kind := range []string{"Bind", "Dial"} {
			name := legacyAdPolicyPrefix + id.String() + "-" + strings.ToLower(kind)
			if err := m.EnsureServicePolicy(name, kind, []string{"#" + attr + "." + strings.ToLower(kind)}, []string{"#" + attr}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.gov.ads.create(ctx, live.ID.String(), live); err != nil {
		t.Fatal(err)
	}

	// Within its grace, the service of an advertisement the copy does not hold is left alone.
	if err := s.reconcileAdPolicies(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	readAdState(t, m).wantService("within its grace", gone, "ad."+gone.String())

	wantShared := func(st adState, what string) {
		t.Helper()
		for _, wg := range []workgroups.WorkgroupID{pricing, ops} {
			st.wantPolicy(what, adPolicyPrefix+"dial-acme."+wg.Name, "Dial", []string{"#wg.acme." + wg.Name}, []string{"#adwg.acme." + wg.Name})
		}
		st.wantPolicy(what, adPolicyPrefix+"bind-"+ov, "Bind", []string{"@" + ov}, []string{"#adp." + ov})
	}
	var before adState
	for pass := range 2 { // the second pass finds nothing to change
		if err := s.reconcileAdPolicies(ctx, 0); err != nil {
			t.Fatal(err)
		}
		st := readAdState(t, m)
		st.wantService("reconciled", live.ID, "adwg.acme.pricing", "adwg.acme.ops", "adp."+ov)
		st.wantService("reconciled, advertisement gone", gone)
		wantShared(st, "reconciled")
		for name := range st.policies {
			if strings.HasPrefix(name, legacyAdPolicyPrefix) {
				t.Fatalf("reconciled: the per-advertisement policy %s is still there", name)
			}
		}
		if pass == 1 && (len(st.policies) != len(before.policies) || len(st.services) != len(before.services)) {
			t.Fatalf("the second pass changed the overlay: %d policies, %d services, then %d and %d",
				len(before.policies), len(before.services), len(st.policies), len(st.services))
		}
		before = st
	}

	narrowed := live
	narrowed.Workgroups = []workgroups.WorkgroupID{ops}
	if err := s.ensureAdService(ctx, narrowed, false); err != nil {
		t.Fatal(err)
	}
	readAdState(t, m).wantService("narrowed", live.ID, "adwg.acme.ops", "adp."+ov)
	narrowed.Workgroups = nil
	if err := s.ensureAdService(ctx, narrowed, false); err != nil {
		t.Fatal(err)
	}
	st := readAdState(t, m)
	st.wantService("retracted", live.ID)
	wantShared(st, "retracted") // shared by others: they stay

	for _, name := range []string{AdvertisementService(live.ID), "a2a-dial-acme.pricing"} {
		err := s.grant(ctx, s.AdminID(), api.GrantRequest{Service: name, Bind: []string{s.AdminID().String()}})
		if err == nil || !strings.Contains(err.Error(), "reserved for advertisements") {
			t.Errorf("a grant of %s: %v, want it refused as reserved", name, err)
		}
	}
	readAdState(t, m).wantService("after the refused grants", live.ID)
}

// TestNewAdServiceConvergesAfterPartialCreate checks on a real overlay the path of a new advertisement, which
// creates its service without looking it up first: when it exists already with other attributes, or a shared
// policy with other roles (a controller that stopped half way, then the same advertisement again), or another
// controller creates them at the same time, the refused creates fall back to the look-up and the service and
// policies end as they should, once each.
func TestNewAdServiceConvergesAfterPartialCreate(t *testing.T) {
	w, ov := startAdWorld(t)
	s, ctx, m := w.s, w.ctx, w.s.zc.Mgmt()
	newAd := func() workgroups.Advertisement {
		return workgroups.Advertisement{ID: newAdID(t), Provider: s.AdminID(),
			Workgroups: []workgroups.WorkgroupID{{Org: "acme", Name: "pricing"}}}
	}
	check := func(what string, ad workgroups.Advertisement) {
		t.Helper()
		st := readAdState(t, m)
		st.wantService(what, ad.ID, "adwg.acme.pricing", "adp."+ov)
		st.wantPolicy(what, adPolicyPrefix+"dial-acme.pricing", "Dial", []string{"#wg.acme.pricing"}, []string{"#adwg.acme.pricing"})
		st.wantPolicy(what, adPolicyPrefix+"bind-"+ov, "Bind", []string{"@" + ov}, []string{"#adp." + ov})
	}

	// Stopped after the service (with attributes of another shape) and a workgroup policy naming someone else.
	ad := newAd()
	serviceID, err := m.EnsureService(AdvertisementService(ad.ID), []string{"ad." + ad.ID.String()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.EnsureServicePolicy(adPolicyPrefix+"dial-acme.pricing", "Dial", []string{"#someone.else"}, []string{"#adwg.acme.pricing"}); err != nil {
		t.Fatal(err)
	}
	for _, what := range []string{"after a partial create", "all there already"} {
		if err := s.ensureAdService(ctx, ad, true); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		check(what, ad)
	}
	if err := m.CreateNewService(AdvertisementService(ad.ID), []string{"adwg.acme.pricing", "adp." + ov}); err != nil {
		t.Errorf("creating the service again: %v", err)
	}
	if got := readAdState(t, m).services[AdvertisementService(ad.ID)].ID; got != serviceID {
		t.Errorf("creating the service again left service %q, want the existing one, %q", got, serviceID)
	}

	// Two controllers of a cluster racing on the same new advertisement and new shared policies.
	s.adPolicies.Clear()
	if err := m.DeleteServicePolicy(readAdState(t, m).policies[adPolicyPrefix+"bind-"+ov].ID); err != nil {
		t.Fatal(err)
	}
	ad = newAd()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = s.ensureAdService(ctx, ad, true) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("racing creates: %v", err)
		}
	}
	check("racing creates", ad)
	if n := len(readAdState(t, m).policies); n != 2 {
		t.Errorf("racing creates: %d shared policies, want 2", n)
	}
}

// TestAdServiceSettlesAfterAConcurrentChange checks on a real overlay that a write of an advertisement's service
// made from a version read before another controller changed the advertisement does not stand. Start-up
// reconciliation finds a service to correct and reads its advertisement; then, before it writes, another
// controller retracts the advertisement (or narrows it) and writes the service itself; reconciliation's write of
// the version before lands last. It reads the advertisement again after writing and writes once more: a retracted
// advertisement is not left dialable by the workgroups it left.
func TestAdServiceSettlesAfterAConcurrentChange(t *testing.T) {
	w, ov := startAdWorld(t)
	s, ctx, m := w.s, w.ctx, w.s.zc.Mgmt()
	pricing, ops := workgroups.WorkgroupID{Org: "acme", Name: "pricing"}, workgroups.WorkgroupID{Org: "acme", Name: "ops"}
	for _, c := range []struct {
		name   string
		change func(workgroups.Advertisement) error
		want   []string
	}{
		{"retracted", func(ad workgroups.Advertisement) error { return s.gov.ads.kv.Delete(ctx, ad.ID.String()) }, nil},
		{"narrowed", func(ad workgroups.Advertisement) error {
			_, err := s.gov.ads.update(ctx, ad.ID.String(), func(a *workgroups.Advertisement) error {
				a.Workgroups = []workgroups.WorkgroupID{ops}
				return nil
			})
			return err
		}, []string{"adwg.acme.ops", "adp." + ov}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ad := workgroups.Advertisement{ID: newAdID(t), Provider: s.AdminID(), Workgroups: []workgroups.WorkgroupID{pricing, ops}}
			if err := s.gov.ads.create(ctx, ad.ID.String(), ad); err != nil {
				t.Fatal(err)
			}
			// A service reconciliation corrects: of the earlier shape.
			if _, err := m.EnsureService(AdvertisementService(ad.ID), []string{"ad." + ad.ID.String()}); err != nil {
				t.Fatal(err)
			}
			changed := false
			s.raceStep = func(step string, id workgroups.AdvertisementID) {
				if step != "ad read" || changed || id != ad.ID {
					return
				}
				changed = true // the other controller: its change, then its own write of the service
				if err := c.change(ad); err != nil {
					t.Error(err)
				}
				if err := s.settleAdService(ctx, id); err != nil {
					t.Error(err)
				}
			}
			defer func() { s.raceStep = nil }()
			if err := s.reconcileAdPolicies(ctx, time.Hour); err != nil {
				t.Fatal(err)
			}
			if !changed {
				t.Fatal("reconciliation did not correct the service, so the race was not run")
			}
			readAdState(t, m).wantService(c.name+" while reconciliation wrote its service", ad.ID, c.want...)
		})
	}
}

// TestAdvertiseRacingAWorkgroupDeletion checks on a real overlay an advertisement published while one of its
// workgroups is deleted: the deletion's retraction ran after advertise checked the provider's workgroups and
// before it stored the advertisement, so it did not see it. advertise checks again after storing it and retracts
// it from the workgroup that is gone: published in two, it stands in the other; in only that one, it is refused
// as for any workgroup the provider is not in, and nothing of it is left.
func TestAdvertiseRacingAWorkgroupDeletion(t *testing.T) {
	w, ov := startAdWorld(t)
	s, ctx, m := w.s, w.ctx, w.s.zc.Mgmt()
	admin := w.caller(s.AdminID())
	create := func(name string) workgroups.WorkgroupID {
		t.Helper()
		view, err := s.createWorkgroup(ctx, admin, api.CreateWorkgroupRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return view.ID
	}
	kept := create("kept")
	for _, c := range []struct {
		name string
		also bool // published in kept too
	}{{"in two", true}, {"in that one only", false}} {
		t.Run(c.name, func(t *testing.T) {
			doomed := create("doomed-" + strings.ReplaceAll(c.name, " ", "-"))
			req := api.AdvertiseRequest{Workgroups: []string{doomed.String()},
				Card:  workgroups.AgentCard{Name: "pricer", Version: "1", MessageTypes: []string{"q.*"}},
				Terms: workgroups.Terms{MaxMessages: 10, MaxDuration: workgroups.Duration(time.Minute), AllowedMessageTypes: []string{"q.*"}, MaxEnvelopeBytes: 1024}}
			if c.also {
				req.Workgroups = append(req.Workgroups, kept.String())
			}
			var published workgroups.AdvertisementID
			s.raceStep = func(step string, id workgroups.AdvertisementID) {
				if step != "ad checked" || !published.IsZero() {
					return
				}
				published = id
				if err := s.deleteWorkgroup(ctx, admin, api.DeleteWorkgroupRequest{Workgroup: doomed.String()}); err != nil {
					t.Error(err)
				}
			}
			defer func() { s.raceStep = nil }()
			ad, err := s.advertise(ctx, admin, req)
			if published.IsZero() {
				t.Fatalf("advertise did not reach its create: %v", err)
			}
			st := readAdState(t, m)
			stored, _, getErr := s.gov.ads.get(ctx, published.String())
			if !c.also {
				if err == nil || !strings.Contains(err.Error(), "not an active member of workgroup "+doomed.String()) {
					t.Fatalf("published in a workgroup deleted meanwhile: %v, want it refused", err)
				}
				if !errors.Is(getErr, errNotFound) {
					t.Fatalf("the refused advertisement is stored: %+v, %v", stored.Workgroups, getErr)
				}
				st.wantService("refused", published)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := []workgroups.WorkgroupID{kept}
			if getErr != nil || !slices.Equal(stored.Workgroups, want) || !slices.Equal(ad.Workgroups, want) {
				t.Fatalf("stored %v (%v), answered %v; want both in %v", stored.Workgroups, getErr, ad.Workgroups, want)
			}
			st.wantService("narrowed", published, adWorkgroupAttr(kept), "adp."+ov)
		})
	}
}
