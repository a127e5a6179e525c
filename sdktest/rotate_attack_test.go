package sdktest

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openziti/sdk-golang/ziti"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// apiWith calls the controller's whoami with cert inside the inner mutual TLS, over raw, the overlay connection
// of another, valid identity: what an attacker holding a copied identity file does once its own overlay identity
// is disabled. It returns the HTTP status and error code, or the handshake's refusal.
func apiWith(t testing.TB, raw ziti.Context, cert tls.Certificate) (status int, code string, refused error) {
	t.Helper()
	conn, err := rawDial(t, raw, api.ServiceName)
	if err != nil {
		t.Fatalf("raw overlay dial of the controller API: %v", err)
	}
	defer conn.Close()
	tconn := tls.Client(conn, &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true})
	_ = tconn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tconn.Handshake(); err != nil {
		return 0, "", err
	}
	if _, err := fmt.Fprintf(tconn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", api.PathWhoAmI, api.ServiceName); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(tconn), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var e api.Error
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Code, nil
}

// TestAdminRotationRevokesOld is the attack on the platform administrator: its identity file is copied, the
// administrator rotates, and the thief presents the copied SVID to the controller's API and to a host made with
// agentsdk.Listen, each inside another, valid identity's overlay connection. Both refuse it, the host within a
// second. The new administrator works; organisation administrators and agents cannot rotate.
func TestAdminRotationRevokesOld(t *testing.T) {
	limit := testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	limit.Step("an organisation administrator and an agent try to rotate the platform administrator")
	org := uniq("rot")
	orgAdm := orgAdmin(t, org)
	agent := orgAgent(t, orgAdm, org, "worker")
	for _, who := range []*agentsdk.Agent{orgAdm, agent} {
		if id, err := who.Controller().BeginAdminRotation(ctx); err == nil || apiCode(err) != api.CodeForbidden {
			t.Fatalf("%s began a platform administrator rotation: %v %v", who.ID(), id, err)
		}
		if _, err := who.Controller().CommitAdminRotation(ctx); err == nil || apiCode(err) != api.CodeForbidden {
			t.Fatalf("%s committed a platform administrator rotation: %v", who.ID(), err)
		}
	}

	limit.Step("set up a host and a carrier; copy the administrator's identity file")
	w := newRevocationWorld(t)
	old := env.Admin()
	oldID := old.Identity()
	stolen := stolenCert(t, oldID)
	if ok, got := presents(t, w.raw, w.svc, stolen); !ok || got != oldID.SPIFFEID().String() {
		t.Fatalf("before the rotation the host did not accept the administrator's SVID: %v %q", ok, got)
	}
	if status, _, refused := apiWith(t, w.raw, stolen); refused != nil || status != http.StatusOK {
		t.Fatalf("before the rotation the API did not accept the administrator's SVID: %d %v", status, refused)
	}

	limit.Step("rotate")
	file := filepath.Join(t.TempDir(), "admin.json")
	if err := oldID.Save(file); err != nil {
		t.Fatal(err)
	}
	next, err := old.RotateAdmin(ctx, func(id *agentsdk.Identity) error { return id.Save(file) })
	if err != nil {
		t.Fatal(err)
	}
	rotated := time.Now()
	na, err := agentsdk.Connect(ctx, next)
	if err != nil {
		t.Fatalf("connect as the new administrator: %v", err)
	}
	env.UseAdmin(na) // the tests after this one administer with the new identity
	if next.SPIFFEID() == oldID.SPIFFEID() {
		t.Fatalf("rotation kept the SPIFFE ID %s", next.SPIFFEID())
	}
	if held, err := agentsdk.LoadIdentity(file); err != nil || held.SPIFFEID() != next.SPIFFEID() {
		t.Fatalf("identity file after rotation: %v %v, want %s", held, err, next.SPIFFEID())
	}

	limit.Step("present the copied SVID to the host")
	for {
		ok, got := presents(t, w.raw, w.svc, stolen)
		if !ok {
			t.Logf("host refused the rotated-out administrator's SVID %s after the rotation", time.Since(rotated).Round(time.Millisecond))
			break
		}
		if time.Since(rotated) > time.Second {
			t.Fatalf("the host still accepted the rotated-out administrator's SVID a second after the rotation (answered %q)", got)
		}
		time.Sleep(10 * time.Millisecond)
	}

	limit.Step("present the copied SVID to the controller API")
	status, code, refused := apiWith(t, w.raw, stolen)
	if refused == nil && (status != http.StatusForbidden || code != api.CodeRevoked) {
		t.Fatalf("the API answered the rotated-out administrator with %d %q, want 403 %q", status, code, api.CodeRevoked)
	}
	t.Logf("the API refused the rotated-out administrator: status %d %q, handshake %v", status, code, refused)
	if a, err := agentsdk.Connect(ctx, oldID); err == nil {
		_, werr := a.Controller().WhoAmI(ctx)
		a.Close()
		if werr == nil {
			t.Fatal("the rotated-out administrator still connects and calls the API")
		}
	}

	limit.Step("the new administrator administers")
	who, err := na.Controller().WhoAmI(ctx)
	if err != nil || who.SPIFFEID != next.SPIFFEID().String() || !who.Admin {
		t.Fatalf("whoami as the new administrator: %+v %v", who, err)
	}
	if _, err := na.Controller().CreateOrg(ctx, uniq("after-rot")); err != nil {
		t.Fatalf("the new administrator cannot create an organisation: %v", err)
	}
	if err := na.Renew(ctx); err != nil {
		t.Fatalf("the new administrator cannot renew: %v", err)
	}
	if got := env.Server.AdminID(); got != next.SPIFFEID() {
		t.Errorf("controller names %s as the platform administrator, want %s", got, next.SPIFFEID())
	}
	limit.Step("the old SPIFFE ID cannot come back")
	_, err = na.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: api.PlatformAdminOrg, Kind: api.PlatformAdminKind,
		Name: path.Base(oldID.SPIFFEID().Path()), Admin: true})
	if err == nil {
		t.Fatal("the rotated-out administrator's SPIFFE ID was created again")
	}
}

// TestAdminRotationInterruptedCompletesOnRetry cuts a rotation after the new administrator was registered and
// signed (the answer lost), and again after the new identity was saved but before its commit. The old
// administrator stays valid until the commit; the retries end with one administrator, the old one revoked.
func TestAdminRotationInterruptedCompletesOnRetry(t *testing.T) {
	limit := testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cur := env.Admin()

	limit.Step("begin a rotation and lose its answer")
	lost, err := cur.Controller().BeginAdminRotation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if who, err := cur.Controller().WhoAmI(ctx); err != nil || !who.Admin {
		t.Fatalf("the administrator was cut before the rotation was committed: %+v %v", who, err)
	}

	limit.Step("begin again: the same rotation continues")
	saved, err := cur.Controller().BeginAdminRotation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if saved.SPIFFEID() != lost.SPIFFEID() {
		t.Fatalf("the retried rotation names %s, the first named %s", saved.SPIFFEID(), lost.SPIFFEID())
	}

	limit.Step("the new identity was saved; the process died before the commit")
	pa, err := agentsdk.Connect(ctx, saved)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pa.Controller().BeginAdminRotation(ctx); apiCode(err) != api.CodeRotationPending {
		t.Fatalf("begin by the pending administrator: %v, want %s", err, api.CodeRotationPending)
	}
	got, err := pa.RotateAdmin(ctx, func(*agentsdk.Identity) error {
		return errors.New("a finished rotation must not save another identity")
	})
	if err != nil {
		pa.Close()
		t.Fatalf("retry with the saved identity: %v", err)
	}
	env.UseAdmin(pa)
	if got.SPIFFEID() != saved.SPIFFEID() {
		t.Fatalf("retry made %s the administrator, want %s", got.SPIFFEID(), saved.SPIFFEID())
	}

	limit.Step("exactly one administrator is left")
	if _, err := cur.Controller().WhoAmI(ctx); err == nil {
		t.Fatal("the old administrator still calls the API after the rotation completed")
	}
	if who, err := pa.Controller().WhoAmI(ctx); err != nil || !who.Admin || who.SPIFFEID != saved.SPIFFEID().String() {
		t.Fatalf("whoami as the new administrator: %+v %v", who, err)
	}
	revoked, err := pa.Controller().CommitAdminRotation(ctx)
	if err != nil || len(revoked) != 0 {
		t.Fatalf("a repeated commit: revoked %v, err %v; want nothing left to revoke", revoked, err)
	}
	if _, err := pa.Controller().CreateOrg(ctx, uniq("after-retry")); err != nil {
		t.Fatalf("the new administrator cannot create an organisation: %v", err)
	}
}

// TestIdentityMaxAgeAndReenroll is the attack of a stolen key that renews itself forever: past the maximum
// identity age renewal is refused, until an administrator re-enrolls the identity; re-enrollment keeps the SPIFFE
// ID and its grants and memberships. Re-enrollment obeys the creation scope: another organisation's identity is
// answered as an unknown one, and a revoked identity stays revoked.
func TestIdentityMaxAgeAndReenroll(t *testing.T) {
	limit := testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	org := uniq("age")
	limit.Step("create organisation %s and its aging agent", org)
	adm := orgAdmin(t, org)
	before := time.Now()
	aged := orgAgent(t, adm, org, "aged")
	client := orgAgent(t, adm, org, "client")
	svc := uniq("age-echo")
	env.Grant(t, svc, []spiffeid.ID{aged.ID()}, []spiffeid.ID{client.ID()})
	wg := uniq("age-wg")
	if _, err := adm.Controller().CreateWorkgroup(ctx, wg); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.Controller().AddMember(ctx, workgroups.WorkgroupID{Org: org, Name: wg}, aged.ID(), ""); err != nil {
		t.Fatal(err)
	}
	if err := aged.Renew(ctx); err != nil {
		t.Fatalf("a young identity cannot renew: %v", err)
	}

	limit.Step("re-enrollment scope")
	other := orgAdmin(t, uniq("age-other"))
	ghost := spiffeid.RequireFromSegments(env.Server.TrustDomain(), org, "agent", "ghost")
	_, foreignErr := other.Controller().Reenroll(ctx, aged.ID(), "")
	_, unknownErr := adm.Controller().Reenroll(ctx, ghost, "")
	if apiCode(foreignErr) != api.CodeNotFound || apiCode(unknownErr) != api.CodeNotFound {
		t.Fatalf("re-enroll of another organisation's identity: %v; of an unknown one: %v; want both %s", foreignErr, unknownErr, api.CodeNotFound)
	}
	if _, err := other.Controller().Reenroll(ctx, env.Admin().ID(), ""); apiCode(err) != api.CodeNotFound {
		t.Fatalf("an organisation administrator re-enrolling the platform administrator: %v, want %s", err, api.CodeNotFound)
	}
	gw, err := env.Admin().Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: org, Kind: api.GatewayKind, Name: "gw"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adm.Controller().Reenroll(ctx, spiffeid.RequireFromString(gw.SPIFFEID), ""); apiCode(err) != api.CodeForbidden {
		t.Fatalf("an organisation administrator re-enrolling a platform gateway: %v, want %s", err, api.CodeForbidden)
	}
	if _, err := adm.Controller().Reenroll(ctx, adm.ID(), ""); apiCode(err) != api.CodeForbidden {
		t.Fatalf("an organisation administrator re-enrolling itself: %v, want %s", err, api.CodeForbidden)
	}
	gone := orgAgent(t, adm, org, "gone")
	if _, err := adm.Controller().Revoke(ctx, gone.ID(), "key stolen"); err != nil {
		t.Fatal(err)
	}
	for _, who := range []*agentsdk.Agent{adm, env.Admin()} {
		if _, err := who.Controller().Reenroll(ctx, gone.ID(), ""); apiCode(err) != api.CodeRevoked {
			t.Fatalf("%s re-enrolling a revoked identity: %v, want %s", who.ID(), err, api.CodeRevoked)
		}
	}

	limit.Step("wait out the maximum identity age")
	time.Sleep(time.Until(before.Add(testMaxIdentityAge + time.Second)))
	err = aged.Renew(ctx)
	if apiCode(err) != api.CodeReenrollRequired || !errors.Is(err, agentsdk.ErrNotAuthorized) || !strings.Contains(err.Error(), "re-enroll") {
		t.Fatalf("renewal past the maximum identity age: %v, want %s telling to re-enroll", err, api.CodeReenrollRequired)
	}

	limit.Step("re-enroll")
	tok, err := adm.Controller().Reenroll(ctx, aged.ID(), "10m")
	if err != nil {
		t.Fatal(err)
	}
	id, err := agentsdk.Enroll(ctx, tok.Token)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agentsdk.Enroll(ctx, tok.Token); apiCode(err) != api.CodeTokenUsed {
		t.Fatalf("second use of a re-enrollment token: %v, want %s", err, api.CodeTokenUsed)
	}
	if id.SPIFFEID() != aged.ID() {
		t.Fatalf("re-enrollment issued %s, want %s", id.SPIFFEID(), aged.ID())
	}
	// The hosting agent's own account goes to the test's log, shown if the test fails: whether its listener was
	// bound, and whether it found its terminator missing from the overlay's store.
	again, err := agentsdk.Connect(ctx, id, agentsdk.WithLogger(testLogger(t, slog.LevelInfo)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { again.Close() })
	if err := again.Renew(ctx); err != nil {
		t.Fatalf("a re-enrolled identity cannot renew: %v", err)
	}

	limit.Step("grants and memberships survive re-enrollment")
	serveEcho(t, again, svc)
	dialEcho(t, ctx, client, svc)
	wgs, err := again.Controller().Workgroups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(wgs) != 1 || wgs[0].ID.Name != wg {
		t.Fatalf("workgroups after re-enrollment: %+v, want %s", wgs, wg)
	}
}
