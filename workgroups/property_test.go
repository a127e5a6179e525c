package workgroups

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// world is a random population of organisations, workgroups and
// advertisements, built only through the public operations.
type world struct {
	orgs   []string
	admins map[string]spiffeid.ID   // org -> its org-level admin identity
	idents map[string][]spiffeid.ID // org -> every identity
	all    []spiffeid.ID
	wgs    []Workgroup
	ads    []Advertisement
}

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

// clone deep-copies v through JSON, to compare before and after a refused
// operation.
func clone[T any](t *testing.T, v T) T {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out T
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func randomWorld(t *testing.T, r *rand.Rand) world {
	w := world{admins: map[string]spiffeid.ID{}, idents: map[string][]spiffeid.ID{}}
	for i := range 2 + r.IntN(4) {
		org := fmt.Sprintf("o%d", i)
		w.orgs = append(w.orgs, org)
		w.admins[org] = ident(org, "user", "admin")
		w.idents[org] = []spiffeid.ID{w.admins[org]}
		for j := range 1 + r.IntN(4) {
			w.idents[org] = append(w.idents[org], ident(org, "agent", fmt.Sprintf("a%d", j)))
		}
		w.all = append(w.all, w.idents[org]...)
	}
	at := t0
	for i := range 1 + r.IntN(6) {
		owner := pick(r, w.orgs)
		id := WorkgroupID{Org: owner, Name: fmt.Sprintf("wg%d", i)}
		scope, invited := ScopeIntraOrg, []string(nil)
		if r.IntN(2) == 0 {
			for _, o := range w.orgs {
				if o != owner && r.IntN(2) == 0 {
					invited = append(invited, o)
				}
			}
			if len(invited) > 0 {
				scope = ScopeInterOrg
			}
		}
		wg, err := NewWorkgroup(id, scope, w.admins[owner], invited, at)
		if err != nil {
			t.Fatal(err)
		}
		for range 30 {
			at = at.Add(time.Second)
			before := clone(t, wg)
			var err error
			switch r.IntN(6) {
			case 0:
				err = wg.AcceptInvitation(w.admins[pick(r, w.orgs)], at)
			case 1:
				if r.IntN(4) == 0 { // declines are rarer, so more workgroups become active
					err = wg.DeclineInvitation(w.admins[pick(r, w.orgs)], at)
				}
			case 2:
				err = wg.Invite(pick(r, w.all), pick(r, w.orgs), at)
			case 3, 4:
				err = wg.AddMember(pick(r, w.all), pick(r, w.all), pick(r, []Role{RoleMember, RoleAdmin}), at)
			case 5:
				if r.IntN(2) == 0 {
					err = wg.RemoveMember(pick(r, w.all), pick(r, w.all))
				} else {
					err = wg.SetRole(pick(r, w.all), pick(r, w.all), pick(r, []Role{RoleMember, RoleAdmin}))
				}
			}
			if verr := wg.Validate(); verr != nil {
				t.Fatalf("invariant broken after an operation (err=%v): %v", err, verr)
			}
			if err != nil && !reflect.DeepEqual(clone(t, wg), before) {
				t.Fatalf("refused operation (%v) changed the workgroup", err)
			}
		}
		w.wgs = append(w.wgs, wg)
	}
	// Advertisements may name workgroups that do not exist.
	ghosts := []WorkgroupID{{Org: "o0", Name: "ghost"}, {Org: "zz", Name: "wg0"}}
	for i := range r.IntN(16) {
		ad := sampleAd(t)
		ad.ID = mustAdID(t, uint64(1000+i))
		ad.Provider = pick(r, w.all)
		ad.Workgroups = nil
		for range 1 + r.IntN(3) {
			var wg WorkgroupID
			if r.IntN(5) == 0 {
				wg = pick(r, ghosts)
			} else {
				wg = pick(r, w.wgs).ID
			}
			if !slices.Contains(ad.Workgroups, wg) {
				ad.Workgroups = append(ad.Workgroups, wg)
			}
		}
		if err := ad.Validate(); err != nil {
			t.Fatal(err)
		}
		w.ads = append(w.ads, ad)
	}
	return w
}

// sharesActive is the rule stated directly over the workgroups, independent
// of Membership, ActiveWorkgroups and Visible.
func (w world) sharesActive(id spiffeid.ID, ad Advertisement) bool {
	for _, wg := range w.wgs {
		if _, member := wg.Member(id); member && wg.Active() && slices.Contains(ad.Workgroups, wg.ID) {
			return true
		}
	}
	return false
}

func TestPropertyDiscoveryScope(t *testing.T) {
	worlds := 300
	if testing.Short() {
		worlds = 20
	}
	plain := mustAuthorizer(t)
	// Organisation policies may only forbid, so they never widen anything.
	strict := mustAuthorizer(t,
		OrgPolicy{Org: "o0", Name: "no-propose", Text: `forbid (principal in Umbra::Org::"o0", action == Umbra::Action::"propose", resource);`},
		OrgPolicy{Org: "o1", Name: "partners", Text: `forbid (principal, action, resource) when { resource has provider_org && resource.provider_org == "o2" };`},
	)
	checked, allowed := 0, 0
	for seed := range uint64(worlds) {
		r := rand.New(rand.NewPCG(seed, 0x5eed))
		w := randomWorld(t, r)
		for _, id := range w.all {
			ms := MembershipsOf(id, w.wgs)
			visible := Visible(ms, w.ads)
			var want []Advertisement
			for _, ad := range w.ads {
				if w.sharesActive(id, ad) {
					want = append(want, ad)
				}
			}
			if !reflect.DeepEqual(visible, want) {
				t.Fatalf("seed %d: %s sees %d ads, want %d", seed, id, len(visible), len(want))
			}
			p := PrincipalFor(id, ms)
			for _, ad := range w.ads {
				shares := w.sharesActive(id, ad)
				for _, action := range []Action{ActionDiscover, ActionPropose} {
					req := Request{Principal: p, Action: action, Resource: AdvertisementResource(ad), At: t0}
					d := plain.Decide(req)
					want := shares && !(action == ActionPropose && ad.Provider == id)
					if d.Allow != want {
						t.Fatalf("seed %d: %s %s %s: allow=%v want %v (%+v)", seed, id, action, ad.Workgroups, d.Allow, want, d.Diagnostic)
					}
					if ds := strict.Decide(req); ds.Allow && !want {
						t.Fatalf("seed %d: an organisation policy widened %s %s", seed, id, action)
					}
					checked++
					if d.Allow {
						allowed++
					}
				}
			}
		}
	}
	// Guard against a generator that never exercises the allow side.
	if allowed == 0 || allowed == checked {
		t.Fatalf("degenerate worlds: %d of %d allowed", allowed, checked)
	}
	t.Logf("%d decisions, %d allowed", checked, allowed)
}

// TestPropertySessionMachine drives sessions with random operations by
// random actors: the history always validates, and a refused operation
// changes nothing.
func TestPropertySessionMachine(t *testing.T) {
	actors := []spiffeid.ID{acmeAgent, globexProv, controller, acmeOther, {}}
	reasons := []CloseReason{CloseByConsumer, CloseByProvider, CloseExpired, CloseAdmin, "nope"}
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 7))
		s := sessionIn(t, StateProposed)
		at := t0
		for range 12 {
			at = at.Add(time.Duration(r.IntN(3)) * time.Second)
			actor := pick(r, actors)
			before := clone(t, s)
			var err error
			switch r.IntN(5) {
			case 0:
				err = s.Hold(actor, at, "h")
			case 1:
				err = s.Accept(actor, at, "a")
			case 2:
				err = s.Reject(actor, at, "r")
			case 3:
				err = s.Activate(actor, at)
			case 4:
				err = s.Close(actor, pick(r, reasons), at, "")
			}
			if verr := s.Validate(); verr != nil {
				t.Fatalf("seed %d: invalid session after op (err=%v): %v", seed, err, verr)
			}
			if err != nil && !reflect.DeepEqual(clone(t, s), before) {
				t.Fatalf("seed %d: refused op changed the session: %v", seed, err)
			}
			if err == nil && len(s.History) != len(before.History)+1 {
				t.Fatalf("seed %d: op not recorded", seed)
			}
		}
	}
}
