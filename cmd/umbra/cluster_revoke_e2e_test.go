package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// clusterRevokeLimit bounds each effect of a revocation in the cluster test: the live connection cut, a new dial
// refused by the overlay, the API refusing the identity.
const clusterRevokeLimit = 20 * time.Second

// checkClusterRevocation revokes an agent while it holds a live overlay connection, in a cluster whose members
// give SDKs OIDC (JWT) API sessions. The host authenticates at member hostAt, the revoked agent at member
// victimAt, and the revocation goes through admins[through] (an administrator authenticated at member through).
// The live connection must be cut, a new dial must be refused by the overlay itself (not only by the host's
// handshake, which refuses a revoked certificate through the revocation feed), and the API must refuse the
// agent, each within clusterRevokeLimit of the revoke call; the host must still serve. Then the host is revoked
// through admins[victimAt] while a third agent (authenticated at member through) holds a connection to it: that
// connection is cut and the third agent's dials no longer reach the host. tag names the agents and the service,
// so that the check can run again in the same cluster (after a member's death). The times are logged.
func checkClusterRevocation(t *testing.T, c *cli, ms []*member, admins []*agentsdk.Agent, hostAt, victimAt, through int, tag string) {
	t.Helper()
	host := clusterAgent(t, c, ms, admins[through], tag+"-host", hostAt)
	victim := clusterAgent(t, c, ms, admins[through], tag+"-victim", victimAt)
	bystander := clusterAgent(t, c, ms, admins[through], tag+"-bystander", through)
	service := "cluster-revoke-echo-" + tag

	c.limit.Step("revocation: %s hosts %s, %s dials it", host.ID(), service, victim.ID())
	hostEcho(t, admins[through], host, service, victim, bystander)
	live := echoConn(t, victim, service)

	c.limit.Step("revoke %s through %s while it is connected at %s", victim.ID(), ms[through].name, ms[victimAt].name)
	// Three watchers start with the revoke call, each timing one effect from just before it.
	start := time.Now()
	var wg sync.WaitGroup
	var connCut, dialRefused, apiRefused time.Duration
	var cutErr, dialErr, apiErr error
	notRefused := 0
	cut := readFails(live, start)
	wg.Add(3)
	go func() {
		defer wg.Done()
		cutErr = <-cut
		connCut = time.Since(start)
	}()
	go func() { // a dial the host refuses in its handshake (the revocation feed) does not count: the overlay must refuse
		defer wg.Done()
		dialRefused, notRefused, dialErr = overlayRefuses(victim, service, start, refusedIdentity)
	}()
	go func() {
		defer wg.Done()
		for time.Since(start) < clusterRevokeLimit {
			wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := victim.Controller().WhoAmI(wctx)
			wcancel()
			if errors.Is(err, agentsdk.ErrNotAuthorized) {
				apiRefused, apiErr = time.Since(start), err
				return
			}
			apiErr = err
			time.Sleep(20 * time.Millisecond)
		}
		apiErr = fmt.Errorf("still answered or failed otherwise: %v", apiErr)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	resp, err := admins[through].Controller().Revoke(ctx, victim.ID(), "cluster revocation test")
	cancel()
	if err != nil {
		t.Fatalf("revoke %s through %s: %v", victim.ID(), ms[through].name, err)
	}
	returned := time.Since(start)
	wg.Wait()
	if !isCut(cutErr) {
		t.Errorf("the revoked %s's live connection was not cut within %s: %v", victim.ID(), clusterRevokeLimit, cutErr)
	}
	if dialRefused == 0 {
		t.Errorf("%s's dials were not refused by the overlay within %s of the revocation (%d not refused; last: %v)",
			victim.ID(), clusterRevokeLimit, notRefused, dialErr)
	}
	if apiRefused == 0 {
		t.Errorf("the API did not refuse the revoked %s within %s: %v", victim.ID(), clusterRevokeLimit, apiErr)
	}
	if t.Failed() {
		t.FailNow()
	}

	// The host was not revoked: it still hosts, and answers the API.
	whoCtx, whoCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer whoCancel()
	if _, err := host.Controller().WhoAmI(whoCtx); err != nil {
		t.Fatalf("the host's API call after another identity's revocation: %v", err)
	}
	t.Logf("revoked %s (connected at %s) through %s: the call returned after %s (%d circuits closed there); live connection cut after %s; "+
		"new dial refused by the overlay after %s (%d not refused by it meanwhile; %v); API refused after %s",
		victim.ID(), ms[victimAt].name, ms[through].name, returned.Round(time.Millisecond), resp.CircuitsClosed,
		connCut.Round(time.Millisecond), dialRefused.Round(time.Millisecond), notRefused, dialErr, apiRefused.Round(time.Millisecond))

	// Then the host, revoked through the member the first agent used, while the bystander (authenticated at the
	// third member) holds a connection to it: the connection is cut and the bystander's new dials fail in the
	// overlay (the host's terminator is gone), not in the handshake with the host's revoked certificate.
	held := echoConn(t, bystander, service)
	c.limit.Step("revoke the host %s through %s while %s is connected to it", host.ID(), ms[victimAt].name, bystander.ID())
	start = time.Now()
	hostCut := readFails(held, start)
	ctx, cancel = context.WithTimeout(context.Background(), 15*time.Second)
	_, err = admins[victimAt].Controller().Revoke(ctx, host.ID(), "cluster revocation test")
	cancel()
	if err != nil {
		t.Fatalf("revoke %s through %s: %v", host.ID(), ms[victimAt].name, err)
	}
	if err := <-hostCut; !isCut(err) {
		t.Fatalf("the bystander's connection to the revoked host was not cut within %s: %v", clusterRevokeLimit, err)
	}
	cutAfter := time.Since(start)
	// A dial that reaches the revoked host, refused only in its handshake, does not count.
	refusedAfter, reached, lastErr := overlayRefuses(bystander, service, start, func(err error) bool {
		return !strings.Contains(err.Error(), "mutual TLS")
	})
	if refusedAfter == 0 {
		t.Fatalf("the bystander's dials still reach the revoked host %s after the revocation (%d reached; last: %v)", clusterRevokeLimit, reached, lastErr)
	}
	t.Logf("revoked the host %s (connected at %s) through %s: the bystander's connection cut after %s, its dials refused by the overlay after %s (%d reached the host meanwhile; %v)",
		host.ID(), ms[hostAt].name, ms[victimAt].name, cutAfter.Round(time.Millisecond), refusedAfter.Round(time.Millisecond), reached, lastErr)
}

// hostEcho grants host the hosting of service and dialers its use, through admin, and has host echo every
// connection until the test ends.
func hostEcho(t *testing.T, admin, host *agentsdk.Agent, service string, dialers ...*agentsdk.Agent) {
	t.Helper()
	req := api.GrantRequest{Service: service, Bind: []string{host.ID().String()}}
	for _, d := range dialers {
		req.Dial = append(req.Dial, d.ID().String())
	}
	retryFor(t, "grant "+service, 30*time.Second, func(ctx context.Context) error { return admin.Controller().Grant(ctx, req) })
	var ln net.Listener
	retryFor(t, "listen on "+service, 30*time.Second, func(context.Context) error {
		var err error
		ln, err = host.Listen(service)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go serveEcho(ln)
}

// readFails reads conn, blocked from start until the overlay cuts it or clusterRevokeLimit passes, and sends the
// read's error.
func readFails(conn net.Conn, start time.Time) <-chan error {
	out := make(chan error, 1)
	go func() {
		_ = conn.SetReadDeadline(start.Add(clusterRevokeLimit))
		_, err := conn.Read(make([]byte, 1))
		out <- err
	}()
	return out
}

// isCut tells whether a readFails error is a cut, not the deadline.
func isCut(err error) bool {
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// refusedIdentity tells whether a dial error is the overlay refusing the dialer or the service to it.
func refusedIdentity(err error) bool {
	return errors.Is(err, agentsdk.ErrNotAuthorized) || errors.Is(err, agentsdk.ErrServiceNotFound)
}

// overlayRefuses dials service as a every 20 ms until a dial fails with an error refused accepts, or
// clusterRevokeLimit has passed since start. It returns when the refusal came (zero if none did), how many dials
// were not refused meanwhile, and the last error.
func overlayRefuses(a *agentsdk.Agent, service string, start time.Time, refused func(error) bool) (time.Duration, int, error) {
	notRefused := 0
	var last error
	for time.Since(start) < clusterRevokeLimit {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := a.Dial(dctx, service)
		dcancel()
		if err == nil {
			conn.Close()
		} else if last = err; refused(err) {
			return time.Since(start), notRefused, err
		}
		notRefused++
		time.Sleep(20 * time.Millisecond)
	}
	return 0, notRefused, last
}

// serveEcho echoes every connection ln accepts, until ln is closed.
func serveEcho(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			_, _ = io.Copy(conn, conn)
		}()
	}
}

// echoConn dials service as a, retrying for up to 30 s, and checks that the connection echoes.
func echoConn(t *testing.T, a *agentsdk.Agent, service string) net.Conn {
	t.Helper()
	var live net.Conn
	retryFor(t, a.ID().String()+" dials "+service, 30*time.Second, func(ctx context.Context) error {
		conn, err := a.Dial(ctx, service)
		if err != nil {
			return err
		}
		if err := echoLine(conn, "before"); err != nil {
			conn.Close()
			return err
		}
		live = conn
		return nil
	})
	t.Cleanup(func() { live.Close() })
	return live
}

// clusterAgent creates an agent identity through admin, enrolls it at member at and connects it there.
func clusterAgent(t *testing.T, c *cli, ms []*member, admin *agentsdk.Agent, name string, at int) *agentsdk.Agent {
	t.Helper()
	c.limit.Step("create %s, enroll and connect it at %s", name, ms[at].name)
	var resp api.CreateIdentityResponse
	retryFor(t, "create "+name, 30*time.Second, func(ctx context.Context) error {
		var err error
		resp, err = admin.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: "acme", Kind: "agent", Name: name})
		return err
	})
	var id *agentsdk.Identity
	retryFor(t, "enroll "+name+" at "+ms[at].name, 30*time.Second, func(ctx context.Context) error {
		var err error
		id, _, err = enrollAt(ctx, filepath.Join(c.dir, ms[at].name), ms[at].enroll, resp.Token, resp.SPIFFEID)
		return err
	})
	path := filepath.Join(c.dir, name+".json")
	if err := id.Save(path); err != nil {
		t.Fatal(err)
	}
	return connectFile(t, path)
}

// retryFor calls fn, each call with a deadline of 10 s, until it succeeds or limit passes.
func retryFor(t testing.TB, what string, limit time.Duration, fn func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := fn(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// echoLine writes line to an echoing connection and checks that it comes back within 10 s.
func echoLine(conn net.Conn, line string) error {
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetDeadline(time.Time{})
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
