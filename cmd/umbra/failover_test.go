package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// Router loss: with two edge routers, losing one in the middle of a stream must stall no agent for long.
const (
	// stallBudget is the longest an agent may go without a success after a router dies.
	stallBudget = 5 * time.Second
	// attemptTimeout bounds every send, receive and dial of the traffic loops.
	attemptTimeout = 2 * time.Second
	// observeAfterKill is how long traffic is watched after the kill (longer while an agent has not recovered).
	observeAfterKill = 15 * time.Second
	// observeLimit ends the watch even if an agent never recovers.
	observeLimit = 60 * time.Second
	// settleTime is long enough for hosts to notice a new router (the agents' service refresh is 5 s).
	settleTime = 12 * time.Second
)

// TestRouterLossStall runs `umbra controller` and two `umbra router` processes, keeps A2A traffic (relay sends,
// receives) and new dials of a hosted service going between two agents in this process, kills one router with
// SIGKILL in the middle of it, and measures for each activity the longest gap between consecutive successes that
// ends after the kill (the gap still open when watching ends counts too). Each case has a network of its own: r1
// is the router the controller first hosts its API and relay through, r2 the one added a few seconds before the
// traffic starts; in the settled case the traffic starts only after every service has had time to be hosted
// through both routers. No agent may stall longer than stallBudget.
func TestRouterLossStall(t *testing.T) {
	for _, c := range []struct {
		name, victim string
		settle       time.Duration
	}{
		{"kill-r1", "r1", 0},
		{"kill-r2", "r2", 0},
		{"kill-r1-settled", "r1", settleTime},
	} {
		t.Run(c.name, func(t *testing.T) { routerLoss(t, c.victim, c.settle) })
	}
}

// lossNet is a controller, two routers and the agents of one router-loss run.
type lossNet struct {
	t       *testing.T
	c       *cli
	routers map[string]*daemon
}

func (n *lossNet) path(name string) string { return filepath.Join(n.c.dir, name) }

// step runs fn with its own deadline; a failure names the step.
func (n *lossNet) step(name string, timeout time.Duration, fn func(ctx context.Context) error) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := fn(ctx); err != nil {
		n.t.Fatalf("%s: %v", name, err)
	}
}

// retryStep retries fn, each attempt with its own deadline, until it succeeds or limit passes; a failure names
// the step and the last error.
func (n *lossNet) retryStep(name string, limit, attempt time.Duration, fn func(ctx context.Context) error) {
	n.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), attempt)
		err := fn(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: not done after %s: %v", name, limit, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startRouter starts router name with an edge and a link listener on free loopback ports.
func (n *lossNet) startRouter(name, tokenFile string) {
	p := freePorts(n.t, 2)
	n.routers[name] = n.c.start("umbra router ready", "router", "--data", name, "--token", tokenFile,
		"--edge", "127.0.0.1:"+p[0], "--link", "127.0.0.1:"+p[1])
}

// enroll creates an identity with admin's client, enrolls it and connects it.
func (n *lossNet) enroll(admin *agentsdk.Agent, org, name string) *agentsdk.Agent {
	n.step("enroll "+org+"/"+name, 30*time.Second, func(ctx context.Context) error {
		resp, err := admin.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: org, Kind: "agent", Name: name})
		if err != nil {
			return err
		}
		id, err := agentsdk.Enroll(ctx, resp.Token)
		if err != nil {
			return err
		}
		return id.Save(n.path(name + ".json"))
	})
	return connectFile(n.t, n.path(name+".json"))
}

// activity records when one traffic loop succeeded and how it failed.
type activity struct {
	name string
	mu   sync.Mutex
	ok   []time.Time
	errs []failure
}

// failure is one failed attempt of a traffic loop.
type failure struct {
	at  time.Time
	err error
}

func (a *activity) success() {
	a.mu.Lock()
	a.ok = append(a.ok, time.Now())
	a.mu.Unlock()
}

func (a *activity) fail(err error) {
	a.mu.Lock()
	if len(a.errs) < 12 {
		a.errs = append(a.errs, failure{at: time.Now(), err: err})
	}
	a.mu.Unlock()
}

func (a *activity) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.ok)
}

func (a *activity) last() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.ok) == 0 {
		return time.Time{}
	}
	return a.ok[len(a.ok)-1]
}

// stall returns the longest time without a success that ended after kill (up to end if the loop has not succeeded
// again), and when the first success after kill came.
func (a *activity) stall(kill, end time.Time) (longest, first time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	prev, first := kill, time.Duration(-1)
	for _, at := range a.ok {
		if !at.After(kill) {
			prev = at
			continue
		}
		if first < 0 {
			first = at.Sub(kill)
		}
		longest = max(longest, at.Sub(prev))
		prev = at
	}
	return max(longest, end.Sub(prev)), first
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func routerLoss(t *testing.T, victim string, settle time.Duration) {
	n := &lossNet{t: t, c: &cli{t: t, bin: umbraBinary(t), dir: t.TempDir()}, routers: map[string]*daemon{}}
	p := freePorts(t, 3)
	n.c.start("umbra controller ready", "controller", "--data", "ctrl", "--ctrl-port", p[0], "--api-port", p[1],
		"--enroll-port", p[2], "--router-token", "r1:r1.token")
	n.startRouter("r1", "r1.token")
	admin := connectFile(t, n.path("ctrl/admin.json"))
	// The controller's API is on the overlay: it answers once the first router is online.
	n.retryStep("controller API reachable through r1", time.Minute, 10*time.Second, func(ctx context.Context) error {
		_, err := admin.Controller().WhoAmI(ctx)
		return err
	})
	n.step("register router r2", 30*time.Second, func(ctx context.Context) error {
		tok, err := admin.Controller().CreateRouter(ctx, "r2")
		if err != nil {
			return err
		}
		return os.WriteFile(n.path("r2.token"), []byte(tok), 0o600)
	})
	n.startRouter("r2", "r2.token")

	orgAdmins := map[string]*agentsdk.Agent{}
	for _, org := range []string{"acme", "globex"} {
		n.step("create org "+org, 30*time.Second, func(ctx context.Context) error {
			resp, err := admin.Controller().CreateOrg(ctx, org)
			if err != nil {
				return err
			}
			id, err := agentsdk.Enroll(ctx, resp.AdminToken)
			if err != nil {
				return err
			}
			return id.Save(n.path(org + "-admin.json"))
		})
		orgAdmins[org] = connectFile(t, n.path(org+"-admin.json"))
	}
	quoter := n.enroll(orgAdmins["acme"], "acme", "quoter")
	buyer := n.enroll(orgAdmins["globex"], "globex", "buyer")
	var sess, provider *agentsdk.Session
	n.step("workgroup, advertisement and session", time.Minute, func(ctx context.Context) error {
		if _, err := orgAdmins["acme"].Controller().CreateWorkgroup(ctx, "pricing", "globex"); err != nil {
			return fmt.Errorf("create workgroup: %w", err)
		}
		if _, err := orgAdmins["globex"].Controller().AnswerInvitation(ctx, pricingWG(), false); err != nil {
			return fmt.Errorf("accept invitation: %w", err)
		}
		if _, err := orgAdmins["acme"].Controller().AddMember(ctx, pricingWG(), quoter.ID(), ""); err != nil {
			return fmt.Errorf("add quoter: %w", err)
		}
		if _, err := orgAdmins["globex"].Controller().AddMember(ctx, pricingWG(), buyer.ID(), ""); err != nil {
			return fmt.Errorf("add buyer: %w", err)
		}
		ad, err := quoter.Advertise(ctx, workgroups.AgentCard{Name: "Quoter", Version: "1", MessageTypes: []string{"quote.*"}},
			workgroups.Terms{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 1 << 20,
				AllowedMessageTypes: []string{"quote.request"}, MaxEnvelopeBytes: 1024}, pricingWG())
		if err != nil {
			return fmt.Errorf("advertise: %w", err)
		}
		if sess, err = buyer.Propose(ctx, ad.ID, workgroups.Proposal{}); err != nil {
			return fmt.Errorf("propose: %w", err)
		}
		if provider, err = quoter.Session(ctx, sess.ID()); err != nil {
			return fmt.Errorf("provider opens the session: %w", err)
		}
		return nil
	})
	const service = "loss-echo"
	n.step("grant "+service, 30*time.Second, func(ctx context.Context) error {
		return admin.Controller().Grant(ctx, api.GrantRequest{Service: service,
			Bind: []string{quoter.ID().String()}, Dial: []string{buyer.ID().String()}})
	})
	var ln net.Listener
	n.retryStep("listen "+service, 30*time.Second, 10*time.Second, func(context.Context) error {
		var err error
		ln, err = quoter.Listen(service)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go serveEcho(ln)

	time.Sleep(settle)

	// Traffic: a relay sender that retries an envelope with its ID until it is acknowledged, the provider
	// receiving, and new dials with a round trip on the hosted service.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	start := time.Now()
	sender, receiver, dialer := &activity{name: "send"}, &activity{name: "receive"}, &activity{name: "dial"}
	// senderStopped reports why the sender gave up: a refusal by the relay is an answer, not a stall.
	senderStopped := make(chan error, 1)
	wg.Add(3)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			id, err := workgroups.NewEnvelopeID(rand.Reader)
			if err != nil {
				senderStopped <- err
				return
			}
			payload := []byte(fmt.Sprintf(`{"n":%d}`, i))
			h := workgroups.Header{ID: id, Session: sess.ID(), From: buyer.ID(), To: quoter.ID(), Type: "quote.request",
				Time: time.Now().UTC(), ContentType: "application/json"}.WithPayload(payload)
			for ctx.Err() == nil {
				sctx, cancel := context.WithTimeout(ctx, attemptTimeout)
				_, err := sess.SendEnvelope(sctx, h, payload)
				cancel()
				if err == nil {
					sender.success()
					break
				}
				if ctx.Err() != nil {
					return
				}
				if errors.Is(err, agentsdk.ErrContractViolation) {
					senderStopped <- err
					return
				}
				sender.fail(err)
				pause(ctx, 100*time.Millisecond)
			}
			pause(ctx, 20*time.Millisecond)
		}
	}()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			rctx, cancel := context.WithTimeout(ctx, attemptTimeout)
			_, err := provider.Receive(rctx)
			cancel()
			if err == nil {
				receiver.success()
				continue
			}
			if ctx.Err() == nil {
				receiver.fail(err)
				pause(ctx, 100*time.Millisecond)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			dctx, cancel := context.WithTimeout(ctx, attemptTimeout)
			err := echoOnce(dctx, buyer, service, "ping "+strconv.Itoa(i))
			cancel()
			if err == nil {
				dialer.success()
				pause(ctx, 20*time.Millisecond)
				continue
			}
			if ctx.Err() == nil {
				dialer.fail(err)
				pause(ctx, 100*time.Millisecond)
			}
		}
	}()

	loops := []*activity{sender, receiver, dialer}
	// Mid-stream: every loop is going.
	warm := time.Now().Add(time.Minute)
	for slices.ContainsFunc(loops, func(a *activity) bool { return a.count() < 5 }) {
		select {
		case err := <-senderStopped:
			t.Fatalf("sender stopped: %v", err)
		default:
		}
		if time.Now().After(warm) {
			t.Fatalf("traffic did not start within a minute: %d sends, %d receives, %d dials; %s",
				sender.count(), receiver.count(), dialer.count(), errorsOf(loops, start))
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	kill := time.Now()
	n.routers[victim].kill()
	t.Logf("killed %s (SIGKILL) %.1fs into the traffic", victim, kill.Sub(start).Seconds())
	for {
		now := time.Now()
		recovered := !slices.ContainsFunc(loops, func(a *activity) bool { return now.Sub(a.last()) > time.Second })
		if now.Sub(kill) >= observeAfterKill && recovered || now.Sub(kill) >= observeLimit {
			break
		}
		select {
		case err := <-senderStopped:
			t.Fatalf("sender stopped: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	end := time.Now()
	stop()
	wg.Wait()

	var worst time.Duration
	for _, a := range loops {
		longest, first := a.stall(kill, end)
		worst = max(worst, longest)
		firstS := "never"
		if first >= 0 {
			firstS = first.Round(time.Millisecond).String()
		}
		t.Logf("%-7s longest stall %6s, first success after the kill %6s, %d successes", a.name,
			longest.Round(time.Millisecond), firstS, a.count())
	}
	t.Logf("router %s lost: worst stall %s (budget %s)", victim, worst.Round(time.Millisecond), stallBudget)
	if worst > stallBudget {
		t.Errorf("an agent stalled %s after losing router %s, budget %s; failures: %s", worst.Round(time.Millisecond),
			victim, stallBudget, errorsOf(loops, kill))
	} else if testing.Verbose() {
		t.Logf("failures (time from the kill): %s", errorsOf(loops, kill))
	}
}

// errorsOf lists the first failures of each loop, timed from since.
func errorsOf(loops []*activity, since time.Time) string {
	var b strings.Builder
	for _, a := range loops {
		a.mu.Lock()
		for _, f := range a.errs {
			fmt.Fprintf(&b, "\n  %s at %+.2fs: %v", a.name, f.at.Sub(since).Seconds(), f.err)
		}
		a.mu.Unlock()
	}
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}
