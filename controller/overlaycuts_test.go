package controller

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// cutWait bounds how long a controller may take to cut off an identity its record refuses: the grace, then a
// tick, with room for a loaded machine.
const cutWait = cutGrace + 20*time.Second

// TestCutCompletedAfterAStopBetweenWrites: revoking or suspending an identity writes its record, then the overlay.
// A controller stopped between the two (as kill -9 right there would) leaves the overlay admitting an identity
// every record refuses. Started again on the same data directory, the controller cuts it off; it does the same,
// while running, for a record whose overlay write never came (an overlay that failed half way), once the request
// that wrote it has ended. A suspension lifted meanwhile is left lifted.
func TestCutCompletedAfterAStopBetweenWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a controller twice")
	}
	dir, ports := t.TempDir(), freePorts(t, 3)
	// The first controller must not cut anything off itself before it stops: its grace outlasts the test.
	first, stop := startAdminWorldAt(t, dir, ports, func(s *Server) { s.cuts.grace = time.Hour })
	ids := map[string]spiffeid.ID{}
	overlay := map[string]string{}
	for _, name := range []string{"revoked", "suspended", "resumed", "failed"} {
		id := spiffeid.RequireFromSegments(first.s.td, "acme", "agent", name)
		rec, err := first.s.registerIdentity(first.ctx, id, "acme", "agent", name, false, first.s.AdminID())
		if err != nil {
			t.Fatal(err)
		}
		ids[name], overlay[name] = id, rec.OverlayID
	}
	// The record's write alone, as revoke and suspend make it.
	mark := func(w adminWorld, name string, fn func(*identityRecord)) {
		t.Helper()
		if _, err := w.s.ids.update(w.ctx, ids[name], func(r *identityRecord) error { fn(r); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	revoke := func(r *identityRecord) {
		r.State, r.RevokedAt, r.RevokedBy, r.RevokeReason = stateRevoked, time.Now().UTC(), first.s.AdminID().String(), "test"
	}
	suspend := func(r *identityRecord) {
		r.Suspended, r.SuspendedAt, r.SuspendedBy, r.SuspendReason = true, time.Now().UTC(), first.s.AdminID().String(), "test"
	}
	mark(first, "revoked", revoke)
	mark(first, "suspended", suspend)
	mark(first, "resumed", suspend)
	admits := func(w adminWorld, name string, revoked bool) bool {
		t.Helper()
		ok, err := w.s.zc.Admits(overlay[name], revoked)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	for _, name := range []string{"revoked", "suspended", "resumed"} {
		if !admits(first, name, name == "revoked") {
			t.Fatalf("the overlay refuses %s already: the stop between the writes was not simulated", name)
		}
	}
	stop()

	second, _ := startAdminWorldAt(t, dir, ports, nil)
	if _, err := second.s.resume(second.ctx, second.s.AdminID(), ids["resumed"], "test"); err != nil {
		t.Fatal(err)
	}
	// A revocation whose request is still under way in this process is left to it, however long it takes.
	done := second.s.changing(ids["failed"])
	mark(second, "failed", revoke)
	for _, c := range []struct {
		name    string
		revoked bool
	}{{"revoked", true}, {"suspended", false}} {
		began := time.Now()
		for admits(second, c.name, c.revoked) {
			if time.Since(began) > cutWait {
				t.Fatalf("the overlay still admits %s %s after it was marked so", c.name, cutWait)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	time.Sleep(cutGrace + 2*watchCheck)
	if !admits(second, "failed", true) {
		t.Fatal("an identity whose revocation was under way was cut off by the start-up check")
	}
	done()
	for began := time.Now(); admits(second, "failed", true); time.Sleep(100 * time.Millisecond) {
		if time.Since(began) > cutWait {
			t.Fatalf("the overlay still admits a revoked identity %s after its request ended without the overlay's part", cutWait)
		}
	}
	if !admits(second, "resumed", false) {
		t.Error("the overlay refuses an identity whose suspension was lifted")
	}
	if rec, _, err := second.s.ids.get(second.ctx, ids["resumed"]); err != nil || rec.Suspended {
		t.Errorf("the resumed identity's record: suspended=%v err=%v", rec.Suspended, err)
	}
	if n := second.logs.count("completing a revocation or suspension"); n < 3 {
		t.Errorf("%d cuts completed were logged, want at least 3", n)
	}
}
