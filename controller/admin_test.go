package controller

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/freeport"
	"github.com/umbra-mesh/umbra/internal/pki"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/internal/zitilog"
)

// warnings collects the messages logged at warning level and above.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, r.Message)
	return nil
}
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }

func (w *warnings) count(substr string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, m := range w.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

// freePorts picks n distinct free loopback ports below the kernel's ephemeral range (freeport).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports, err := freeport.Loopback(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

// adminWorld is a running controller (no router: the succession needs none) and helpers to act on it.
type adminWorld struct {
	t    testing.TB
	s    *Server
	ctx  context.Context
	logs *warnings
}

func startAdminWorld(t testing.TB) adminWorld {
	t.Helper()
	w, _ := startAdminWorldAt(t, t.TempDir(), freePorts(t, 3), nil)
	return w
}

// startAdminWorldAt starts a controller on data directory dir and ports (control, overlay API, enrollment), as
// configured by adjust if it is not nil, before it runs. stop stops it (and is called when the test ends).
func startAdminWorldAt(t testing.TB, dir string, ports []int, adjust func(*Server)) (w adminWorld, stop func()) {
	t.Helper()
	logs := &warnings{}
	zitilog.Route(slog.New(logs), slog.LevelWarn) // OpenZiti logs through logrus; keep its chatter out of the test output
	s, err := New(Config{DataDir: dir, CtrlPort: ports[0], OverlayAPIPort: ports[1], EnrollPort: ports[2], Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	if adjust != nil {
		adjust(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var runErr error
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		runErr = s.Run(ctx)
	}()
	stop = func() {
		cancel()
		<-stopped
	}
	t.Cleanup(stop)
	select {
	case <-s.Ready():
	case <-stopped:
		t.Fatalf("controller did not start: %v", runErr)
	}
	return adminWorld{t: t, s: s, ctx: ctx, logs: logs}, stop
}

func (w adminWorld) caller(id spiffeid.ID) caller {
	w.t.Helper()
	rec, _, err := w.s.ids.get(w.ctx, id)
	if err != nil {
		w.t.Fatalf("record of %s: %v", id, err)
	}
	return caller{id: id, rec: rec}
}

func (w adminWorld) state() adminSuccession {
	w.t.Helper()
	st, found, err := w.s.succession(w.ctx)
	if err != nil || !found {
		w.t.Fatalf("succession: found=%v err=%v", found, err)
	}
	return st
}

func (w adminWorld) revoked(id spiffeid.ID) bool {
	w.t.Helper()
	rec, _, err := w.s.ids.get(w.ctx, id)
	if err != nil {
		w.t.Fatalf("record of %s: %v", id, err)
	}
	return rec.State == stateRevoked
}

// fileHolds reports the SPIFFE ID in the data directory's administrator file.
func (w adminWorld) fileHolds() spiffeid.ID {
	w.t.Helper()
	id, err := agentsdk.LoadIdentity(w.s.AdminIdentityPath())
	if err != nil {
		w.t.Fatal(err)
	}
	return id.SPIFFEID()
}

// signed makes a key, has the rotation's new administrator signed for it by from, and returns the identity.
func (w adminWorld) signed(from spiffeid.ID, next spiffeid.ID) *agentsdk.Identity {
	w.t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		w.t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, next)
	if err != nil {
		w.t.Fatal(err)
	}
	creds, err := w.s.signRotation(w.ctx, w.caller(from), csr)
	if err != nil {
		w.t.Fatal(err)
	}
	id, err := agentsdk.NewIdentity(key, creds)
	if err != nil {
		w.t.Fatal(err)
	}
	return id
}

// TestAdminSuccession drives the platform administrator's succession on a real controller: rotations cut by a
// crash after each step, the data directory's file followed only while it holds the current administrator, and
// break-glass recovery that revokes every earlier administrator, pending ones included.
func TestAdminSuccession(t *testing.T) {
	limit := testlimit.Start(t, 3*time.Minute)
	limit.Step("start a controller")
	w := startAdminWorld(t)
	s := w.s
	root, root2 := s.nthAdmin(1), s.nthAdmin(2)
	if st := w.state(); st.Current != root.String() || st.Generation != 1 || w.fileHolds() != root || s.AdminID() != root {
		t.Fatalf("first start: succession %+v, file holds %s, AdminID %s", st, w.fileHolds(), s.AdminID())
	}

	limit.Step("a rotation crashes after recording its intent")
	crash := errors.New("crash")
	s.platform.fault = func(step string) error {
		if step == "begin" {
			return crash
		}
		return nil
	}
	if _, err := s.beginRotation(w.ctx, w.caller(root)); !errors.Is(err, crash) {
		t.Fatalf("begin with a crash: %v", err)
	}
	s.platform.fault = nil
	begun, err := s.beginRotation(w.ctx, w.caller(root))
	if err != nil || begun.SPIFFEID != root2.String() {
		t.Fatalf("begin retried: %+v %v, want %s", begun, err, root2)
	}
	if st := w.state(); st.Pending != root2.String() || st.Current != root.String() {
		t.Fatalf("succession after begin: %+v", st)
	}
	if next := w.signed(root, root2); next.SPIFFEID() != root2 {
		t.Fatalf("signed %s, want %s", next.SPIFFEID(), root2)
	}

	limit.Step("the commit crashes after making the new administrator current")
	s.platform.fault = func(step string) error {
		if step == "commit" {
			return crash
		}
		return nil
	}
	if _, err := s.commitRotation(w.ctx, w.caller(root2)); !errors.Is(err, crash) {
		t.Fatalf("commit with a crash: %v", err)
	}
	s.platform.fault = nil
	if st := w.state(); st.Current != root2.String() || st.Pending != "" || w.revoked(root) {
		t.Fatalf("after the cut commit: succession %+v, root revoked %v", st, w.revoked(root))
	}
	if _, err := s.beginRotation(w.ctx, w.caller(root)); err == nil {
		t.Fatal("the superseded administrator began a rotation")
	}
	limit.Step("the next start finishes the commit")
	if err := s.ensureAdmin(w.ctx); err != nil {
		t.Fatal(err)
	}
	if !w.revoked(root) || w.revoked(root2) || s.AdminID() != root2 {
		t.Fatalf("after restart: root revoked %v, root-2 revoked %v, AdminID %s", w.revoked(root), w.revoked(root2), s.AdminID())
	}
	if resp, err := s.commitRotation(w.ctx, w.caller(root2)); err != nil || resp.SPIFFEID != root2.String() || len(resp.Revoked) != 0 {
		t.Fatalf("repeated commit: %+v %v", resp, err)
	}

	limit.Step("the data directory's file holds the revoked root")
	before, err := os.ReadFile(s.AdminIdentityPath())
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := s.refreshAdminFile(w.ctx, w.state()); err != nil {
			t.Fatal(err)
		}
	}
	if after, _ := os.ReadFile(s.AdminIdentityPath()); string(after) != string(before) {
		t.Fatal("the controller rewrote the data directory's file of a revoked administrator")
	}
	if n := w.logs.count("holds a revoked administrator"); n != 1 {
		t.Fatalf("warned %d times about the revoked administrator's file, want once", n)
	}

	limit.Step("the data directory's file holds the current administrator, about to expire")
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, root2)
	if err != nil {
		t.Fatal(err)
	}
	short, err := s.ca.IssueSVID(csr, root2, 20*time.Second, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	expiring, err := agentsdk.NewIdentity(key, s.credentials(root2, short))
	if err != nil {
		t.Fatal(err)
	}
	if err := expiring.Save(s.AdminIdentityPath()); err != nil {
		t.Fatal(err)
	}
	if err := s.refreshAdminFile(w.ctx, w.state()); err != nil {
		t.Fatal(err)
	}
	fresh, err := agentsdk.LoadIdentity(s.AdminIdentityPath())
	if err != nil || fresh.SPIFFEID() != root2 || time.Until(fresh.ExpiresAt()) < s.cfg.SVIDTTL/2 {
		t.Fatalf("the current administrator's file was not refreshed: %v %v", fresh, err)
	}

	limit.Step("a missing file is not recreated")
	if err := os.Remove(s.AdminIdentityPath()); err != nil {
		t.Fatal(err)
	}
	if err := s.refreshAdminFile(w.ctx, w.state()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.AdminIdentityPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the controller minted an administrator file on its own: %v", err)
	}

	limit.Step("break-glass reset while a rotation is pending")
	if _, err := s.beginRotation(w.ctx, w.caller(root2)); err != nil {
		t.Fatal(err)
	}
	root3, root4 := s.nthAdmin(3), s.nthAdmin(4)
	s.cfg.ResetAdmin = true
	err = s.ensureAdmin(w.ctx)
	s.cfg.ResetAdmin = false
	if err != nil {
		t.Fatal(err)
	}
	st := w.state()
	if st.Current != root4.String() || st.Pending != "" || st.Generation != 4 || s.AdminID() != root4 || w.fileHolds() != root4 {
		t.Fatalf("after reset: succession %+v, AdminID %s, file holds %s; want %s", st, s.AdminID(), w.fileHolds(), root4)
	}
	for _, id := range []spiffeid.ID{root, root2, root3} {
		if !w.revoked(id) {
			t.Errorf("%s survived the break-glass reset", id)
		}
	}
	if w.revoked(root4) {
		t.Fatal("the reset's new administrator is revoked")
	}
	if w.logs.count("platform administrator reset from the data directory") != 1 {
		t.Error("the reset was not logged")
	}
	limit.Step("a revoked name is never reused, and the revoked file is not refreshed")
	if _, err := s.beginRotation(w.ctx, w.caller(root2)); err == nil {
		t.Fatal("a revoked administrator began a rotation")
	}
	begun, err = s.beginRotation(w.ctx, w.caller(root4))
	if err != nil || begun.SPIFFEID != s.nthAdmin(5).String() {
		t.Fatalf("rotation after reset: %+v %v, want %s", begun, err, s.nthAdmin(5))
	}
	if _, err := s.issueDirect(w.ctx, root2, "umbra", "admin", adminName(2), true); err == nil {
		t.Fatal("the controller issued an SVID to a revoked administrator")
	}
}
