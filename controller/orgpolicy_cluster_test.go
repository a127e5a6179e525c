package controller

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
)

// policyReach bounds how long a policy set or removed through one controller may take to apply at another: a
// watch update on a replicated bucket, or, when the watch's consumer was on the server that went, the watch given
// up and watched anew (watchGuard: 3-4 s; the client alone took 10-20 s).
const policyReach = 8 * time.Second

// TestOrgPoliciesApplyOnEveryController: three controllers' authorisers, each on its own server of a
// three-server cluster with the bucket in three copies. A policy set through one applies to the decisions of the
// others within policyReach; one removed through another is lifted everywhere; and after the server leading the
// bucket is shut down, a change through a survivor still reaches the other survivor.
func TestOrgPoliciesApplyOnEveryController(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c := natsdtest.StartCluster(t, 3)
	ps := make([]*orgPolicies, 3)
	for i := range ps {
		js := replicated{JetStream: c.JetStream(i), n: 3}
		p, err := openOrgPolicies(ctx, js, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("controller %d: %v", i, err)
		}
		pctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); p.copy.run(pctx) }()
		t.Cleanup(func() { stop(); <-done })
		ps[i] = p
	}

	propose := proposals(t)
	// decides waits until controller i allows (or refuses) the proposal.
	decides := func(i int, allowed bool, after string) {
		t.Helper()
		began := time.Now()
		for {
			d := propose(ps[i], "exfiltration")
			if d.Allow == allowed {
				t.Logf("controller %d %s the proposal %s after %s", i, map[bool]string{true: "allows", false: "refuses"}[allowed],
					time.Since(began).Round(time.Millisecond), after)
				return
			}
			if time.Since(began) > policyReach {
				t.Fatalf("controller %d still decides %+v %s after %s", i, d, policyReach, after)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	set := func(i int, name string) {
		t.Helper()
		b, err := json.Marshal(orgPolicyRecord{Org: "acme", Name: name, Text: noExfiltration, SetBy: "test", SetAt: time.Now().UTC()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ps[i].t.kv.Put(ctx, orgPolicyKey("acme", name), b); err != nil {
			t.Fatalf("set %s through controller %d: %v", name, i, err)
		}
	}
	remove := func(i int, name string) {
		t.Helper()
		if err := ps[i].t.kv.Delete(ctx, orgPolicyKey("acme", name)); err != nil {
			t.Fatalf("remove %s through controller %d: %v", name, i, err)
		}
	}

	for i := range ps {
		decides(i, true, "before any policy")
	}
	set(0, "no-exfil")
	decides(1, false, "the set through controller 0")
	decides(2, false, "the set through controller 0")
	remove(2, "no-exfil")
	decides(0, true, "the removal through controller 2")
	decides(1, true, "the removal through controller 2")

	// The bucket's leader goes; a change through one survivor reaches the other.
	status, err := ps[0].t.kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream := status.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Name
	dead := c.StreamLeader(stream)
	c.Kill(dead)
	a, b := (dead+1)%3, (dead+2)%3
	again, err := json.Marshal(orgPolicyRecord{Org: "acme", Name: "again", Text: noExfiltration, SetBy: "test", SetAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := ps[a].t.kv.Put(pctx, orgPolicyKey("acme", "again"), again)
		pcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("set through controller %d after the bucket's leader (%d) went: %v", a, dead, err)
		}
	}
	decides(b, false, "a set through a survivor after the bucket's leader went")
	decides(a, false, "its own set")
}
