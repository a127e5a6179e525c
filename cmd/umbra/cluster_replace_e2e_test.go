package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// replaceMember replaces the cluster test's killed member ms[dead]: a new controller joins through a survivor
// with the cluster's secrets, `umbra cluster remove` (as the platform administrator, through a survivor) removes
// the dead one from the overlay's raft configuration and its NATS server from the JetStream meta group, and the
// cluster is then three connected members, the new one among them, and a meta group of three NATS servers. A
// removal of a live member is refused. It returns the new member.
func replaceMember(t *testing.T, c *cli, ms []*member, dead int, survivors []int) *member {
	t.Helper()
	start := time.Now()
	p := freePorts(t, 5)
	m := &member{name: "c4", ctrl: p[0], apiPort: p[1], enroll: p[2], route: p[3], metrics: p[4]}
	var routes []string
	for _, i := range survivors {
		routes = append(routes, "127.0.0.1:"+ms[i].route)
	}
	c.limit.Step("start c4 to replace %s, joining through %s", ms[dead].name, ms[survivors[0]].name)
	c.launch(m, "controller", "--data", m.name, "--ctrl-port", m.ctrl, "--api-port", m.apiPort, "--enroll-port", m.enroll,
		"--nats-cluster-listen", "127.0.0.1:"+m.route, "--nats-routes", strings.Join(routes, ","), "--replicas", "3",
		"--metrics-listen", "127.0.0.1:"+m.metrics, "--log-level", "info",
		"--cluster-join", "tls:127.0.0.1:"+ms[survivors[0]].ctrl, "--cluster-secrets", "secrets.json")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- c4 (tail) ---\n%s", lastLines(m.d.errb.String(), 25))
		}
	})
	select {
	case err := <-m.ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(150 * time.Second):
		t.Fatal("c4 not ready within 150 s")
	}
	joined := time.Since(start)

	admin := filepath.Join(c.dir, "admin-"+ms[survivors[1]].name+".json")
	status := func() api.ClusterStatus {
		t.Helper()
		var st api.ClusterStatus
		if err := json.Unmarshal([]byte(c.must("", "cluster", "status", "--as", admin, "--json")), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	// waitStatus polls the status until ok holds, for at most limit.
	waitStatus := func(what string, limit time.Duration, ok func(api.ClusterStatus) bool) api.ClusterStatus {
		t.Helper()
		deadline := time.Now().Add(limit)
		for {
			st := status()
			if ok(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %s; the cluster is %+v", what, limit, st)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	c4Addr := "tls:127.0.0.1:" + m.ctrl
	deadAddr := "tls:127.0.0.1:" + ms[dead].ctrl
	var deadID, deadNATS, c4ID string
	// A member is online while its NATS server is routed to the answering member's or was seen lately by the
	// meta group; the killed one's routes dropped with it.
	waitStatus("c4 online and the dead member offline", 60*time.Second, func(st api.ClusterStatus) bool {
		deadID, c4ID = "", ""
		for _, cm := range st.Members {
			switch {
			case cm.Addr == c4Addr && cm.Online && cm.NATS != "":
				c4ID = cm.ID
			case cm.Addr == deadAddr && !cm.Online && !cm.Connected:
				deadID, deadNATS = cm.ID, cm.NATS
			}
		}
		return len(st.Members) == 4 && deadID != "" && c4ID != "" && deadNATS != ""
	})
	// The API is hosted by every member, so c4 itself may answer: refused either way.
	if _, errs, err := c.run("", "cluster", "remove", "--as", admin, "--member", c4ID); err == nil ||
		!strings.Contains(errs, "is connected") && !strings.Contains(errs, "is running") && !strings.Contains(errs, "answered this request itself") {
		t.Fatalf("removing the connected member c4: err %v, stderr %q; want a refusal", err, errs)
	}
	// The member answering may see the dead NATS server a moment later than the one that answered the status.
	var out string
	retryFor(t, "remove the dead member", 30*time.Second, func(context.Context) error {
		o, errs, err := c.run("", "cluster", "remove", "--as", admin, "--member", deadID)
		if err != nil {
			if strings.Contains(errs, "is running") {
				return fmt.Errorf("%v: %s", err, errs)
			}
			t.Fatalf("umbra cluster remove --member %s: %v: %s", deadID, err, errs)
		}
		out = o
		return nil
	})
	if !strings.Contains(out, "removed member "+deadID+" and its NATS server "+deadNATS) {
		t.Fatalf("cluster remove said %q", out)
	}
	removed := time.Now()
	st := waitStatus("three online members and three NATS servers without the dead one", 60*time.Second, func(st api.ClusterStatus) bool {
		if len(st.Members) != 3 || st.NATSSize != 3 || len(st.NATS) != 3 {
			return false
		}
		for _, cm := range st.Members {
			if !cm.Online || cm.ID == deadID {
				return false
			}
		}
		for _, p := range st.NATS {
			if p.Name == deadNATS || p.Offline {
				return false
			}
		}
		return true
	})
	t.Logf("%s replaced by c4 (member %s): c4 ready %s after its start; the cluster had three online members and three NATS servers %s after the removal: %+v",
		ms[dead].name, c4ID, joined.Round(time.Millisecond), time.Since(removed).Round(time.Millisecond), st.Members)
	if _, errs, err := c.run("", "cluster", "remove", "--as", admin, "--member", deadID); err == nil || !strings.Contains(errs, "no member "+deadID) {
		t.Fatalf("removing %s again: err %v, stderr %q; want no such member", deadID, err, errs)
	}
	return m
}
