package main

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// restartRecovery is how soon after `umbra dev` is ready again the agents connected before it was killed must
// dial a hosted service and send on a session, with no call from the application.
const restartRecovery = 5 * time.Second

// restartRun is the state of TestAgentsSurviveControllerRestart: each network step has a deadline of its own
// and a failure names the step.
type restartRun struct {
	t     *testing.T
	c     *cli
	admin string // the platform administrator's identity file in the test directory (default data/admin.json)
}

// step runs fn with a deadline of timeout.
func (r *restartRun) step(name string, timeout time.Duration, fn func(ctx context.Context) error) {
	r.t.Helper()
	r.c.limit.Step("%s", name)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := fn(ctx); err != nil {
		r.t.Fatalf("%s: %v", name, err)
	}
}

// retryStep runs fn, each attempt with at most attempt of time, until it succeeds or deadline passes, and
// returns how many attempts it took.
func (r *restartRun) retryStep(name string, deadline time.Time, attempt time.Duration, fn func(ctx context.Context) error) int {
	r.t.Helper()
	r.c.limit.Step("%s", name)
	for n := 1; ; n++ {
		end := time.Now().Add(attempt)
		if deadline.Before(end) {
			end = deadline
		}
		ctx, cancel := context.WithDeadline(context.Background(), end)
		err := fn(ctx)
		cancel()
		if err == nil {
			return n
		}
		if !time.Now().Before(deadline) {
			r.t.Fatalf("%s: not done by its deadline after %d attempts: %v", name, n, err)
		}
		r.t.Logf("%s: attempt %d: %v", name, n, err)
		time.Sleep(100 * time.Millisecond)
	}
}

// enroll creates an identity of org through admin, enrolls it and saves it as name.json.
func (r *restartRun) enroll(admin *agentsdk.Agent, org, name string) {
	r.t.Helper()
	r.step("enroll "+name, 30*time.Second, func(ctx context.Context) error {
		resp, err := admin.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: org, Kind: "agent", Name: name})
		if err != nil {
			return err
		}
		id, err := agentsdk.Enroll(ctx, resp.Token)
		if err != nil {
			return err
		}
		return id.Save(filepath.Join(r.c.dir, name+".json"))
	})
}

// echoOnce dials service, writes line and checks that it comes back.
func echoOnce(ctx context.Context, a *agentsdk.Agent, service, line string) error {
	conn, err := a.Dial(ctx, service)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if _, err := fmt.Fprintln(conn, line); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read the echo: %w", err)
	}
	if strings.TrimSpace(got) != line {
		return fmt.Errorf("echo %q, want %q", got, line)
	}
	return nil
}

// echoAll echoes every connection accepted on ln until ln is closed.
func echoAll(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// TestAgentsSurviveControllerRestart kills `umbra dev` (SIGKILL, so its embedded router dies too) under agents
// that hold a session and host a service, restarts it on the same data directory and ports, and checks that the
// same agents, never reconnected by the test, dial the hosted service and send on the session again within
// restartRecovery of the controller being ready, and that the provider receives everything sent.
func TestAgentsSurviveControllerRestart(t *testing.T) {
	r := &restartRun{t: t, c: newCLI(t, 6*time.Minute)}
	c := r.c
	args, _ := devArgs(t, "data")
	dev := c.start("umbra dev ready", args...)
	p := r.pricingSession(10000)
	admin, quoter, buyer, sess := p.admin, p.quoter, p.buyer, p.sess
	const service = "quotes-live"
	r.step("grant "+service, 30*time.Second, func(ctx context.Context) error {
		return admin.Controller().Grant(ctx, api.GrantRequest{Service: service,
			Bind: []string{quoter.ID().String()}, Dial: []string{buyer.ID().String()}})
	})
	var ln net.Listener
	r.retryStep("host "+service, time.Now().Add(30*time.Second), 10*time.Second, func(ctx context.Context) error {
		var err error
		ln, err = quoter.ListenContext(ctx, service)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go echoAll(ln)

	send := func(ctx context.Context, n int) error {
		_, err := sess.Send(ctx, "quote.request", []byte(fmt.Sprintf(`{"n":%d}`, n)))
		return err
	}
	r.retryStep("dial "+service+" before the kill", time.Now().Add(30*time.Second), 10*time.Second, func(ctx context.Context) error {
		return echoOnce(ctx, buyer, service, "before")
	})
	r.step("send before the kill", 30*time.Second, func(ctx context.Context) error { return send(ctx, 0) })

	r.c.limit.Step("kill umbra dev")
	dev.kill()
	// While the controller is away a send fails, by its deadline.
	r.step("send while the controller is down", 10*time.Second, func(context.Context) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := send(ctx, -1); err == nil {
			return fmt.Errorf("a send succeeded with the controller down")
		}
		return nil
	})

	c.start("umbra dev ready", args...)
	ready := time.Now()
	deadline := ready.Add(restartRecovery)
	r.step("dial "+service+" after the restart", time.Until(deadline), func(ctx context.Context) error {
		return echoOnce(ctx, buyer, service, "after")
	})
	dialAt := time.Since(ready)
	r.step("send after the restart", time.Until(deadline), func(ctx context.Context) error { return send(ctx, 1) })
	sendAt := time.Since(ready)
	t.Logf("after umbra dev was ready again: dial to the hosted service at %s, relay send at %s",
		dialAt.Round(time.Millisecond), sendAt.Round(time.Millisecond))

	// The provider receives what was sent before and after the restart, in order, on a session handle it opens
	// with the same agent.
	var qs *agentsdk.Session
	r.step("quoter opens the session", 10*time.Second, func(ctx context.Context) error {
		var err error
		qs, err = quoter.Session(ctx, sess.ID())
		return err
	})
	for _, want := range []string{`{"n":0}`, `{"n":1}`} {
		r.step("quoter receives "+want, 10*time.Second, func(ctx context.Context) error {
			env, err := qs.Receive(ctx)
			if err != nil {
				return err
			}
			if string(env.Payload) != want {
				return fmt.Errorf("payload %s, want %s", env.Payload, want)
			}
			return nil
		})
	}
}

// TestDevRestartOtherPorts restarts `umbra dev` on its data directory with other control-plane and router edge
// ports, which works (the embedded router follows the controller), and then with another overlay API port, which
// every enrolled identity names: that start fails at once with one line naming the stored address and the flag.
func TestDevRestartOtherPorts(t *testing.T) {
	r := &restartRun{t: t, c: newCLI(t, 5*time.Minute)}
	c := r.c
	free, next := freePorts(t, 9), 0
	port := func() string { next++; return free[next-1] }
	api, enroll := port(), port()
	dev := func(ctrl, api, edge string) []string {
		return []string{"dev", "--data", "data", "--ctrl-port", ctrl, "--api-port", api, "--enroll-port", enroll, "--edge", "127.0.0.1:" + edge}
	}
	// "umbra dev ready" is true when printed: the API answers at once, with no retry.
	whoami := func(when string) {
		admin := connectFile(t, filepath.Join(c.dir, "data/admin.json"))
		defer admin.Close()
		r.step("controller API answers "+when, 30*time.Second, func(ctx context.Context) error {
			_, err := admin.Controller().WhoAmI(ctx)
			return err
		})
	}
	first := c.start("umbra dev ready", dev(port(), api, port())...)
	whoami("on the first start")
	first.stop(t)

	second := c.start("umbra dev ready", dev(port(), api, port())...)
	whoami("after a restart on other control and edge ports")
	second.stop(t)

	other := port()
	start := time.Now()
	_, errs, err := c.run("", dev(port(), other, port())...)
	took := time.Since(start)
	lines := strings.Split(strings.TrimSpace(errs), "\n")
	last := lines[len(lines)-1]
	if err == nil || !strings.HasPrefix(last, "umbra dev: ") || !strings.Contains(last, "127.0.0.1:"+api+", not 127.0.0.1:"+other) ||
		!strings.Contains(last, "--api-port "+api) {
		t.Fatalf("a restart on another API port: err=%v, want one line naming the stored address and --api-port %s:\n%s", err, api, errs)
	}
	if took > 20*time.Second {
		t.Errorf("the refused restart took %s to fail", took.Round(time.Second))
	}
	t.Logf("refused in %s: %s", took.Round(time.Millisecond), last)
}

// pricing is what pricingSession set up: the agents connected and the buyer's session.
type pricing struct {
	admin, acme, globex, quoter, buyer *agentsdk.Agent
	sess                               *agentsdk.Session
}

// pricingSession sets up, on the `umbra dev` r.c started with its data in "data" (its administrator in r.admin), two organisations (acme and
// globex) with an agent each (quoter and buyer, saved in the test directory), a shared workgroup, quoter's
// advertisement of quote.request under maxMessages, and buyer's session on it.
func (r *restartRun) pricingSession(maxMessages uint64) pricing {
	t, c := r.t, r.c
	path := func(n string) string { return filepath.Join(c.dir, n) }
	admin := connectFile(t, path(cmp.Or(r.admin, "data/admin.json")))
	r.retryStep("controller API reachable", time.Now().Add(time.Minute), 10*time.Second, func(ctx context.Context) error {
		_, err := admin.Controller().WhoAmI(ctx)
		return err
	})
	for _, org := range []string{"acme", "globex"} {
		r.step("create organisation "+org, 30*time.Second, func(ctx context.Context) error {
			resp, err := admin.Controller().CreateOrg(ctx, org)
			if err != nil {
				return err
			}
			id, err := agentsdk.Enroll(ctx, resp.AdminToken)
			if err != nil {
				return err
			}
			return id.Save(path(org + "-admin.json"))
		})
	}
	acme, globex := connectFile(t, path("acme-admin.json")), connectFile(t, path("globex-admin.json"))
	r.enroll(acme, "acme", "quoter")
	r.enroll(globex, "globex", "buyer")
	quoter, buyer := connectFile(t, path("quoter.json")), connectFile(t, path("buyer.json"))
	var sess *agentsdk.Session
	r.step("set up workgroup, advertisement and session", time.Minute, func(ctx context.Context) error {
		if _, err := acme.Controller().CreateWorkgroup(ctx, "pricing", "globex"); err != nil {
			return err
		}
		if _, err := globex.Controller().AnswerInvitation(ctx, pricingWG(), false); err != nil {
			return err
		}
		if _, err := acme.Controller().AddMember(ctx, pricingWG(), quoter.ID(), ""); err != nil {
			return err
		}
		if _, err := globex.Controller().AddMember(ctx, pricingWG(), buyer.ID(), ""); err != nil {
			return err
		}
		ad, err := quoter.Advertise(ctx, workgroups.AgentCard{Name: "Quoter", Version: "1", MessageTypes: []string{"quote.*"}},
			workgroups.Terms{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: maxMessages,
				AllowedMessageTypes: []string{"quote.request"}, MaxEnvelopeBytes: 1024}, pricingWG())
		if err != nil {
			return err
		}
		sess, err = buyer.Propose(ctx, ad.ID, workgroups.Proposal{})
		return err
	})
	return pricing{admin: admin, acme: acme, globex: globex, quoter: quoter, buyer: buyer, sess: sess}
}
