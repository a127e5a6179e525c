package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/anomaly"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// TestAlertsFollowTheTrail runs the alerter on a real audit trail and NATS server: refusals appended to the trail
// raise an alert that is recorded in the trail, published on umbra.alerts.<org> and listed for the platform and
// for the identity's organisation only; the automatic suspension policy asks for a suspension naming the rule.
// Records stored before the alerter started are learned from, not alerted on, and the controller's own records
// are not an identity's behaviour.
func TestAlertsFollowTheTrail(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := natsdtest.Start(t)
	js := natsdtest.Connect(t, ns, "alerts-test")
	trail, err := audit.Open(ctx, js, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	self := spiffeid.RequireFromSegments(worldTD, api.ControllerAPIOrg, api.ControllerAPIKind, api.ControllerAPIName)
	bad := spiffeid.RequireFromSegments(worldTD, "acme", "agent", "bad")
	old := spiffeid.RequireFromSegments(worldTD, "acme", "agent", "old")
	refuse := func(id spiffeid.ID) {
		t.Helper()
		if _, err := trail.Append(ctx, audit.Record{Kind: "envelope.rejected", Actor: id.String(), Decision: audit.DecisionDeny,
			Reason: "type_not_allowed: type \"order.place\" is not allowed by the contract"}); err != nil {
			t.Fatal(err)
		}
	}
	// Before the alerter starts: an identity refused enough to alert, and the controller's own refusals.
	for range 6 {
		refuse(old)
		refuse(self)
	}

	msgs := make(chan *nats.Msg, 16)
	sub, err := js.Conn().ChanSubscribe(AlertSubjectPrefix+".>", msgs)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	det, err := anomaly.New(anomaly.Config{Window: time.Minute, MinRefusals: 3, AutoSuspendRefusals: 5})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var suspended, counted []string
	a := &alerter{det: det, trail: trail, nc: js.Conn(), self: self.String(), log: slog.New(slog.DiscardHandler), changed: make(chan struct{}),
		counted: func(rule string) {
			mu.Lock()
			defer mu.Unlock()
			counted = append(counted, rule)
		},
		suspend: func(_ context.Context, id spiffeid.ID, reason string) error {
			mu.Lock()
			defer mu.Unlock()
			suspended = append(suspended, id.String()+" "+reason)
			return nil
		}}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	replayed, since := a.replayUntil(ctx, time.Now())
	go func() { defer close(done); a.run(rctx, replayed, since) }()
	defer func() { stop(); <-done }()

	for range 5 {
		refuse(bad)
		refuse(self)
	}
	var published []api.Alert
	for len(published) < 2 {
		select {
		case m := <-msgs:
			var al api.Alert
			if err := json.Unmarshal(m.Data, &al); err != nil {
				t.Fatal(err)
			}
			if m.Subject != AlertSubjectPrefix+".acme" {
				t.Fatalf("alert published on %s, want %s.acme", m.Subject, AlertSubjectPrefix)
			}
			published = append(published, al)
		case <-ctx.Done():
			t.Fatalf("%d alerts published on NATS, want 2 (refusals, auto_suspend)", len(published))
		}
	}
	if published[0].Rule != "refusals" || published[1].Rule != "auto_suspend" || !published[1].Suspend ||
		published[0].SPIFFEID != bad.String() || published[0].Cursor == 0 {
		t.Fatalf("published %+v, want the bad identity's refusals and auto_suspend alerts, recorded", published)
	}
	// Listed from the trail: every alert for the platform, the organisation's for its administrator.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if page, _ := a.visible("", 0, 100); len(page.Alerts) == 2 {
			break
		}
		if time.Now().After(deadline) {
			page, _ := a.visible("", 0, 100)
			t.Fatalf("listed %+v, want the two alerts", page.Alerts)
		}
	}
	page, _ := a.visible("acme", 0, 100)
	if len(page.Alerts) != 2 || page.Alerts[0].Cursor != published[0].Cursor || page.Cursor != published[1].Cursor {
		t.Fatalf("acme's list %+v, want the two alerts with their cursors", page)
	}
	if page, _ := a.visible("globex", 0, 100); len(page.Alerts) != 0 || page.Cursor != 0 {
		t.Fatalf("globex's list %+v, want nothing", page)
	}
	if page, _ := a.visible("acme", published[0].Cursor, 100); len(page.Alerts) != 1 || page.Alerts[0].Rule != "auto_suspend" {
		t.Fatalf("acme's list after the first cursor %+v, want the suspension alert", page)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		n := len(suspended)
		mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(counted, ",") != "refusals,auto_suspend" {
		t.Fatalf("alerts counted for the metrics: %q, want refusals and auto_suspend", counted)
	}
	if len(suspended) != 1 || !strings.HasPrefix(suspended[0], bad.String()+" automatic suspension, rule auto-suspend-refusals: 5 refusals") {
		t.Fatalf("suspensions asked: %q, want the bad identity's, naming the rule", suspended)
	}
	var recorded int
	if _, err := trail.Scan(ctx, 0, func(r audit.Record) error {
		if r.Kind == kindAnomalyAlert {
			recorded++
			if r.Actor != self.String() || !strings.HasPrefix(r.Reason, bad.String()+": ") {
				t.Errorf("alert record %+v: want the controller as actor, the bad identity in the reason", r)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if recorded != 2 {
		t.Fatalf("%d anomaly.alert records in the trail, want 2 (none for the records before the start, none for the controller)", recorded)
	}
}

// TestAlertsRaisedOnceAcrossControllers runs the alerters of two controllers on one trail, each with its lease:
// an identity's refusals raise each alert once (one anomaly.alert record, one suspension asked), both list it;
// once the raising controller is killed, the other raises the next identity's alerts, again once each.
func TestAlertsRaisedOnceAcrossControllers(t *testing.T) {
	limit := testlimit.Start(t, 2*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := natsdtest.Start(t)
	self := spiffeid.RequireFromSegments(worldTD, api.ControllerAPIOrg, api.ControllerAPIKind, api.ControllerAPIName)
	var mu sync.Mutex
	suspended := map[string]int{}
	type node struct {
		a     *alerter
		lead  *leadership
		trail *audit.Log
		stop  context.CancelFunc
		done  chan struct{}
	}
	var nodes []*node
	for i := range 2 {
		js := natsdtest.Connect(t, ns, fmt.Sprintf("alerts-%d", i))
		trail, err := audit.Open(ctx, js, audit.Options{})
		if err != nil {
			t.Fatal(err)
		}
		hints, err := openTable[recorderHint](ctx, js, "umbra_recorder")
		if err != nil {
			t.Fatal(err)
		}
		det, err := anomaly.New(anomaly.Config{Window: time.Minute, MinRefusals: 3, AutoSuspendRefusals: 5})
		if err != nil {
			t.Fatal(err)
		}
		n := &node{trail: trail, lead: newLeadership(hints.kv, self.String(), 500*time.Millisecond, nil), done: make(chan struct{})}
		n.lead.abandon = true
		n.a = &alerter{det: det, trail: trail, nc: js.Conn(), self: self.String(), log: slog.New(slog.DiscardHandler), changed: make(chan struct{}),
			lead: n.lead, suspend: func(_ context.Context, id spiffeid.ID, _ string) error {
				mu.Lock()
				defer mu.Unlock()
				suspended[id.String()]++
				return nil
			}}
		rctx, stop := context.WithCancel(ctx)
		n.stop = stop
		replayed, since := n.a.replayUntil(ctx, time.Now())
		var wg sync.WaitGroup
		wg.Go(func() { n.lead.run(rctx) })
		wg.Go(func() { n.a.run(rctx, replayed, since) })
		go func() { wg.Wait(); close(n.done) }()
		t.Cleanup(func() { stop(); <-n.done })
		nodes = append(nodes, n)
	}
	leader := func() *node {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			var l []*node
			for _, n := range nodes {
				if n.lead.leads() {
					l = append(l, n)
				}
			}
			if len(l) > 1 {
				t.Fatal("two alerters lead at once")
			}
			if len(l) == 1 {
				return l[0]
			}
		}
		t.Fatal("no alerter leads after 10 s")
		return nil
	}
	refuse := func(trail *audit.Log, id spiffeid.ID) {
		t.Helper()
		for range 5 {
			if _, err := trail.Append(ctx, audit.Record{Kind: "envelope.rejected", Actor: id.String(), Decision: audit.DecisionDeny,
				Reason: "type_not_allowed: type \"order.place\" is not allowed by the contract"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// listed waits until every running alerter lists want alerts, then checks the trail holds exactly want.
	listed := func(want int, running ...*node) {
		t.Helper()
		for _, n := range running {
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if page, _ := n.a.visible("", 0, 100); len(page.Alerts) >= want {
					break
				}
				if time.Now().After(deadline) {
					page, _ := n.a.visible("", 0, 100)
					t.Fatalf("listed %d alerts, want %d", len(page.Alerts), want)
				}
			}
		}
		time.Sleep(200 * time.Millisecond) // a second raise, if there were one, would be recorded by now
		recorded := 0
		if _, err := running[0].trail.Scan(ctx, 0, func(r audit.Record) error {
			if r.Kind == kindAnomalyAlert {
				recorded++
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if recorded != want {
			t.Fatalf("%d anomaly.alert records in the trail, want %d", recorded, want)
		}
	}

	limit.Step("refusals of one identity with two controllers following")
	first := leader()
	bad := spiffeid.RequireFromSegments(worldTD, "acme", "agent", "bad")
	refuse(nodes[1].trail, bad)
	listed(2, nodes...)

	limit.Step("kill the raising controller; the other raises the next identity's alerts")
	first.stop()
	<-first.done
	var other *node
	for _, n := range nodes {
		if n != first {
			other = n
		}
	}
	if leader() != other {
		t.Fatal("the surviving alerter does not lead")
	}
	worse := spiffeid.RequireFromSegments(worldTD, "acme", "agent", "worse")
	refuse(other.trail, worse)
	listed(4, other)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		n := suspended[worse.String()]
		mu.Unlock()
		if n > 0 {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if suspended[bad.String()] != 1 || suspended[worse.String()] != 1 {
		t.Fatalf("suspensions asked: %v, want one for each identity", suspended)
	}
}
