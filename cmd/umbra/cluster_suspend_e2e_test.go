package main

import (
	"context"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
)

// checkClusterSuspension suspends an agent while it holds a live overlay connection, in a cluster whose members
// give SDKs OIDC (JWT) API sessions, which OpenZiti does not end when it disables an identity: the host
// authenticates at member hostAt, the suspended agent at member victimAt, and the suspension and the resumption
// go through admins[through]. The live connection must be cut and a new dial refused by the overlay itself (not
// only by the host's handshake, which refuses a suspended certificate through the revocation feed) within
// clusterRevokeLimit; after the resumption the same agent, without re-enrolling, must reach the host again within
// clusterResumeLimit. The times are logged.
func checkClusterSuspension(t *testing.T, c *cli, ms []*member, admins []*agentsdk.Agent, hostAt, victimAt, through int, tag string) {
	t.Helper()
	host := clusterAgent(t, c, ms, admins[through], tag+"-host", hostAt)
	victim := clusterAgent(t, c, ms, admins[through], tag+"-victim", victimAt)
	service := "cluster-suspend-echo-" + tag
	c.limit.Step("suspension: %s hosts %s, %s dials it", host.ID(), service, victim.ID())
	hostEcho(t, admins[through], host, service, victim)
	live := echoConn(t, victim, service)

	c.limit.Step("suspend %s (connected at %s) through %s", victim.ID(), ms[victimAt].name, ms[through].name)
	start := time.Now()
	cut := readFails(live, start)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	_, err := admins[through].Controller().Suspend(ctx, victim.ID(), "cluster suspension test")
	cancel()
	if err != nil {
		t.Fatalf("suspend %s through %s: %v", victim.ID(), ms[through].name, err)
	}
	if err := <-cut; !isCut(err) {
		t.Fatalf("the suspended %s's live connection was not cut within %s: %v", victim.ID(), clusterRevokeLimit, err)
	}
	cutAfter := time.Since(start)
	// A dial the host refuses in its handshake does not count: the overlay must refuse it.
	refusedAfter, admitted, dialErr := overlayRefuses(victim, service, start, refusedIdentity)
	if refusedAfter == 0 {
		t.Fatalf("%s's dials were not refused by the overlay within %s of its suspension (%d admitted; last: %v)",
			victim.ID(), clusterRevokeLimit, admitted, dialErr)
	}

	c.limit.Step("resume %s through %s", victim.ID(), ms[through].name)
	resumed := time.Now()
	ctx, cancel = context.WithTimeout(context.Background(), 15*time.Second)
	_, err = admins[through].Controller().Resume(ctx, victim.ID(), "cluster suspension test")
	cancel()
	if err != nil {
		t.Fatalf("resume %s through %s: %v", victim.ID(), ms[through].name, err)
	}
	var lastErr error
	for {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := victim.Dial(dctx, service)
		dcancel()
		if err == nil {
			err = echoLine(conn, "after the resumption")
			conn.Close()
			if err == nil {
				break
			}
		}
		lastErr = err
		if time.Since(resumed) > clusterResumeLimit {
			t.Fatalf("the resumed %s did not reach %s within %s: %v", victim.ID(), service, clusterResumeLimit, lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("suspended %s (connected at %s) through %s: live connection cut after %s; new dial refused by the overlay after %s (%d not refused by it meanwhile; %v); reached the host again %s after the resumption",
		victim.ID(), ms[victimAt].name, ms[through].name, cutAfter.Round(time.Millisecond), refusedAfter.Round(time.Millisecond),
		admitted, dialErr, time.Since(resumed).Round(time.Millisecond))
}

// clusterResumeLimit bounds how long a resumed agent takes to reach its host again in the cluster test: its SDK,
// refused with the tokens the suspension revoked, authenticates again.
const clusterResumeLimit = 30 * time.Second
