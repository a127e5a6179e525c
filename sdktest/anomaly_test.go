package sdktest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/anomaly"
	"github.com/umbra-mesh/umbra/controller/controllertest"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/internal/webhook"
	"github.com/umbra-mesh/umbra/workgroups"
)

// TestAnomalyAlertsAndAutoSuspend runs the anomaly detector on a network of its own (a child process: its
// thresholds are short, and the shared network's tests must not be suspended by them). Two buyers of one
// organisation send to a quoter at the same steady rate while the controller learns them. Then one misbehaves:
// it bursts, and an alert comes within seconds; it sends envelopes its contract refuses, and a refusals alert
// comes, then the automatic suspension policy suspends it (with the controller as the actor and the rule as the
// reason). The other goes on as before over the same period and raises no alert: the false-positive count,
// logged, must be zero. The alerts reach the webhook signed, and another organisation's administrator sees none
// of them.
func TestAnomalyAlertsAndAutoSuspend(t *testing.T) {
	limit := testlimit.Start(t, 5*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	secret := []byte("webhook-secret")
	var hookMu sync.Mutex
	var hooked []api.Alert
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if err := webhook.Verify(secret, nil, r.Header.Get(webhook.HeaderTimestamp), b, r.Header.Get(webhook.HeaderSignature)); err != nil {
			t.Errorf("webhook delivery: %v", err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var al api.Alert
		if err := json.Unmarshal(b, &al); err != nil {
			t.Errorf("webhook body %q: %v", b, err)
		}
		hookMu.Lock()
		hooked = append(hooked, al)
		hookMu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer hook.Close()

	const window = 2 * time.Second
	n := childNetwork{Dir: t.TempDir(), AlertWebhook: hook.URL, AlertWebhookSecret: string(secret),
		Anomaly: anomaly.Config{Window: window, Learn: 6 * time.Second, LearnRecords: 5, MinRate: 10, MinRefusals: 5,
			AutoSuspendRefusals: 8, AutoSuspendWindow: 20 * time.Second}}
	for _, p := range []*int{&n.CtrlPort, &n.APIPort, &n.Enroll, &n.Edge} {
		var err error
		if *p, err = controllertest.FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	limit.Step("start the child network")
	startChild(t, n)
	id, err := agentsdk.LoadIdentity(filepath.Join(n.Dir, "controller", "admin.json"))
	if err != nil {
		t.Fatal(err)
	}
	connect := func(id *agentsdk.Identity) *agentsdk.Agent {
		t.Helper()
		a, err := agentsdk.Connect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	enroll := func(token string) *agentsdk.Agent {
		t.Helper()
		id, err := agentsdk.Enroll(ctx, token)
		if err != nil {
			t.Fatal(err)
		}
		return connect(id)
	}
	limit.Step("build an organisation with a quoter and two buyers, and another organisation")
	admin := connect(id)
	var org api.CreateOrgResponse
	for deadline := time.Now().Add(30 * time.Second); ; {
		if org, err = admin.Controller().CreateOrg(ctx, "acme"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	acme := enroll(org.AdminToken)
	other, err := admin.Controller().CreateOrg(ctx, "globex")
	if err != nil {
		t.Fatal(err)
	}
	globex := enroll(other.AdminToken)
	agent := func(name string) *agentsdk.Agent {
		resp, err := acme.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: "acme", Kind: "agent", Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return enroll(resp.Token)
	}
	quoter, good, bad := agent("quoter"), agent("good-buyer"), agent("bad-buyer")
	wg, err := acme.Controller().CreateWorkgroup(ctx, "pricing")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []*agentsdk.Agent{quoter, good, bad} {
		if _, err := acme.Controller().AddMember(ctx, wg.ID, a.ID(), ""); err != nil {
			t.Fatal(err)
		}
	}
	terms := defaultTerms()
	terms.MaxMessages = 5000
	card := workgroups.AgentCard{Name: "Quoter", Version: "1.0", MessageTypes: []string{"quote.*"}}
	ad, err := quoter.Advertise(ctx, card, terms, wg.ID)
	if err != nil {
		t.Fatal(err)
	}
	goodSess, err := good.Propose(ctx, ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	badSess, err := bad.Propose(ctx, ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}

	// The alerts, as acme's administrator follows them.
	type seen struct {
		alert api.Alert
		at    time.Time
	}
	alerts := make(chan seen, 100)
	go func() {
		var cursor uint64
		for ctx.Err() == nil {
			page, err := acme.Controller().Alerts(ctx, cursor, 10*time.Second)
			if err != nil {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			for _, a := range page.Alerts {
				alerts <- seen{a, time.Now()}
			}
			cursor = page.Cursor
		}
	}()
	await := func(what string, within time.Duration, match func(api.Alert) bool) seen {
		t.Helper()
		deadline := time.After(within)
		for {
			select {
			case s := <-alerts:
				t.Logf("alert: %s %s %s: %s", s.alert.Severity, s.alert.Rule, s.alert.SPIFFEID, s.alert.Message)
				if match(s.alert) {
					return s
				}
			case <-deadline:
				t.Fatalf("no %s alert within %s", what, within)
			}
		}
	}

	limit.Step("both buyers send at the same steady rate while the controller learns them")
	steadyCtx, stopSteady := context.WithCancel(ctx)
	defer stopSteady()
	steady := func(sess *agentsdk.Session) <-chan error {
		done := make(chan error, 1)
		go func() {
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-steadyCtx.Done():
					done <- nil
					return
				case <-tick.C:
					sctx, scancel := context.WithTimeout(steadyCtx, 10*time.Second)
					_, err := sess.Send(sctx, "quote.request", []byte(`{"sku":"w-1"}`))
					scancel()
					if err != nil && steadyCtx.Err() == nil {
						done <- err
						return
					}
				}
			}
		}()
		return done
	}
	goodDone := steady(goodSess)
	badSteady, stopBad := context.WithCancel(steadyCtx)
	badDone := make(chan struct{})
	go func() {
		defer close(badDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-badSteady.Done():
				return
			case <-tick.C:
				sctx, scancel := context.WithTimeout(badSteady, 10*time.Second)
				_, _ = badSess.Send(sctx, "quote.request", []byte(`{"sku":"w-1"}`))
				scancel()
			}
		}
	}()
	time.Sleep(12 * time.Second) // six windows: past the learning period of both
	stopBad()
	<-badDone

	limit.Step("the bad buyer bursts: an alert within seconds")
	burst := time.Now()
	burstCtx, stopBurst := context.WithCancel(ctx)
	burstSent := make(chan int, 1)
	go func() {
		sent := 0
		for ; sent < 1000 && burstCtx.Err() == nil; sent++ {
			if _, err := badSess.Send(burstCtx, "quote.request", []byte(`{"sku":"w-2"}`)); err != nil {
				break
			}
		}
		burstSent <- sent
	}()
	rate := await("rate", 30*time.Second, func(a api.Alert) bool {
		return a.Rule == string(anomaly.RuleRate) && a.SPIFFEID == bad.ID().String()
	})
	stopBurst()
	sent := <-burstSent
	t.Logf("rate alert %s after the burst began (%d envelopes sent), observed %.0f against a baseline of %.1f, threshold %.0f",
		rate.at.Sub(burst).Round(time.Millisecond), sent, rate.alert.Observed, rate.alert.Baseline, rate.alert.Threshold)
	if rate.alert.Cursor == 0 || rate.alert.Org != "acme" || rate.alert.Window != window.String() {
		t.Fatalf("rate alert %+v: want an audit cursor, organisation acme, window %s", rate.alert, window)
	}

	limit.Step("the bad buyer sends what its contract refuses: a refusals alert, then the automatic suspension")
	refusing := time.Now()
	var eighth time.Time
	refused := 0
	for ; refused < 30; refused++ {
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := badSess.Send(sctx, "order.place", []byte(`{}`))
		scancel()
		if !errors.Is(err, agentsdk.ErrContractViolation) {
			t.Logf("refusal %d: %v (no longer a contract violation: suspended)", refused+1, err)
			break
		}
		if refused+1 == 8 {
			eighth = time.Now()
		}
	}
	await("refusals", 30*time.Second, func(a api.Alert) bool {
		return a.Rule == string(anomaly.RuleRefusals) && a.SPIFFEID == bad.ID().String()
	})
	suspend := await("auto_suspend", 30*time.Second, func(a api.Alert) bool {
		return a.Rule == string(anomaly.RuleAutoSuspend) && a.SPIFFEID == bad.ID().String() && a.Suspend
	})
	if eighth.IsZero() {
		// The policy counts every refusal of the identity: name the others it saw.
		if view, err := acme.Controller().AuditSession(ctx, badSess.ID()); err == nil {
			for _, raw := range view.Records {
				var r struct{ Kind, Actor, Decision, Reason string }
				if json.Unmarshal(raw, &r) == nil && r.Actor == bad.ID().String() && r.Decision == "deny" {
					t.Logf("refusal recorded: %s: %s", r.Kind, r.Reason)
				}
			}
		}
		t.Fatalf("the bad buyer was refused only %d times before its sends failed otherwise", refused)
	}
	var state, reason string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		inv, err := acme.Controller().Inventory(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range inv.Identities {
			if i.SPIFFEID == bad.ID().String() {
				state, reason = i.State, i.Suspended
			}
		}
		if state == "suspended" || time.Now().After(deadline) {
			break
		}
	}
	if state != "suspended" {
		t.Fatalf("the bad buyer is %s 30s after the policy's alert, want suspended", state)
	}
	t.Logf("suspended %s after its eighth refusal (alert %s after it); %d refusals sent from %s; reason %q",
		time.Since(eighth).Round(time.Millisecond), suspend.at.Sub(eighth).Round(time.Millisecond), refused,
		refusing.Format(time.TimeOnly), reason)
	if want := "rule auto-suspend-refusals"; !strings.Contains(reason, want) {
		t.Fatalf("suspension reason %q does not name the rule (%q)", reason, want)
	}
	view, err := acme.Controller().AuditSession(ctx, badSess.ID())
	if err != nil {
		t.Fatal(err)
	}
	if view.Session.State != workgroups.StateClosed || view.Session.CloseReason != workgroups.CloseIdentitySuspended {
		t.Fatalf("the bad buyer's session after the suspension: %s %s, want closed identity_suspended", view.Session.State, view.Session.CloseReason)
	}
	pctx, pcancel := context.WithTimeout(ctx, 20*time.Second)
	_, err = bad.Propose(pctx, ad.ID, workgroups.Proposal{})
	pcancel()
	if !errors.Is(err, agentsdk.ErrNotAuthorized) {
		t.Fatalf("a proposal of the suspended buyer: %v, want ErrNotAuthorized", err)
	}

	limit.Step("the good buyer went on as before over the same period: no alert for it")
	time.Sleep(2 * window) // its last windows close
	stopSteady()
	if err := <-goodDone; err != nil {
		t.Fatalf("the good buyer's steady sends failed: %v", err)
	}
	page, err := acme.Controller().Alerts(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	falsePositives, others := 0, 0
	for _, a := range page.Alerts {
		switch a.SPIFFEID {
		case good.ID().String():
			falsePositives++
			t.Errorf("false positive: %s %s", a.Rule, a.Message)
		case bad.ID().String():
		default:
			others++
			t.Logf("alert for another identity: %s %s %s", a.SPIFFEID, a.Rule, a.Message)
		}
	}
	t.Logf("false positives for the well-behaved buyer over %s: %d (alerts in all: %d, for identities other than the buyers: %d)",
		time.Since(burst.Add(-12*time.Second)).Round(time.Second), falsePositives, len(page.Alerts), others)

	limit.Step("another organisation sees none of acme's alerts; the webhook got them signed")
	theirs, err := globex.Controller().Alerts(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(theirs.Alerts) != 0 {
		t.Fatalf("globex's administrator sees %d alerts of acme's, first %+v", len(theirs.Alerts), theirs.Alerts[0])
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		hookMu.Lock()
		got := false
		for _, a := range hooked {
			got = got || a.Rule == string(anomaly.RuleAutoSuspend) && a.SPIFFEID == bad.ID().String()
		}
		count := len(hooked)
		hookMu.Unlock()
		if got {
			t.Logf("the webhook received %d signed alerts", count)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the webhook did not receive the suspension alert within 20s (%d alerts received)", count)
		}
	}
}
