package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// killNATSLeader SIGKILLs the member of live whose NATS server leads the JetStream meta group, in the middle of
// an A2A session whose consumer is enrolled at and authenticated through that member. The session must carry on
// through the others within streamRecovery, every acknowledged envelope received exactly once and recorded
// exactly once (one envelope.accepted record per acknowledged envelope id), and the audit chain must verify; then
// a revocation must cut a live connection and be refused by the overlay and the API (checkClusterRevocation).
// platform is the platform administrator, reaching the API through a member that stays.
func killNATSLeader(t *testing.T, c *cli, live []*member, platform *agentsdk.Agent) {
	t.Helper()
	c.limit.Step("find the JetStream meta leader among %s, %s, %s", live[0].name, live[1].name, live[2].name)
	leader := -1
	var st api.ClusterStatus
	deadline := time.Now().Add(30 * time.Second)
	for leader < 0 {
		// Any member's administrator file answers; the status is the same from each.
		out, _, err := c.run("", "cluster", "status", "--as", adminFileOf(c, live[0]), "--json")
		if err == nil && json.Unmarshal([]byte(out), &st) == nil {
			leader = metaLeaderOf(st, live)
		}
		if leader < 0 {
			if time.Now().After(deadline) {
				t.Fatalf("no JetStream meta leader among the live members within 30 s: %+v (%v)", st, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	other := (leader + 1) % 3
	stays := (leader + 2) % 3
	dead := live[leader]
	c.limit.Step("an A2A session from an agent authenticated through %s (the meta leader) to one through %s", dead.name, live[other].name)
	stream := startClusterStream(t, c.dir, "metaco", platform, live, leader, other)

	c.limit.Step("SIGKILL the JetStream meta leader %s", dead.name)
	killed := time.Now()
	if err := dead.d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-dead.d.done
	c.limit.Step("the session carries on")
	streamed := stream.afterKill(killed)

	c.limit.Step("the audit trail through %s: every acknowledged envelope recorded once, the chain verifies", live[stays].name)
	// The member that joined last has no administrator file of its own.
	admin := adminFileOf(c, live[stays])
	if _, err := os.Stat(admin); err != nil {
		admin = adminFileOf(c, live[other])
	}
	accepted, records := acceptedRecords(t, c, admin, stream.session, 60*time.Second)
	stream.mu.Lock()
	for id := range stream.acked {
		if n := accepted[id.String()]; n != 1 {
			t.Errorf("acknowledged envelope %s has %d envelope.accepted records, want 1", id, n)
		}
	}
	// Beyond the acknowledged ones, only the envelope in flight when sending stopped may have been stored (and so
	// recorded) without its acknowledgement reaching the sender; nothing the sender did not send.
	for id, n := range accepted {
		eid, err := workgroups.ParseEnvelopeID(id)
		if err != nil || !stream.sent[eid] || n != 1 {
			t.Errorf("envelope %s: %d envelope.accepted records, sent by the stream: %v", id, n, err == nil && stream.sent[eid])
		}
	}
	if extra := len(accepted) - len(stream.acked); extra > 1 {
		t.Errorf("%d envelopes recorded as accepted, %d acknowledged: more than the one in flight", len(accepted), len(stream.acked))
	}
	stream.mu.Unlock()
	t.Logf("JetStream meta leader %s killed: session across the kill: %s; %d records in the trail, the chain verifies",
		dead.name, streamed, records)

	// Revocation with the meta leader dead, through the administrator of a member with a file of its own (the
	// agents of the check on the two members left).
	through, victimAt := stays, other
	if admin != adminFileOf(c, live[stays]) {
		through, victimAt = other, stays
	}
	admins := make([]*agentsdk.Agent, len(live))
	admins[through] = connectFile(t, admin)
	admins[victimAt] = admins[through]
	checkClusterRevocation(t, c, live, admins, through, victimAt, through, "rm")
}

// acceptedRecords verifies the audit chain through the administrator file admin and exports the trail, tried
// again for up to limit (a read just after a failover may wait on a consumer of the lost server), and counts
// the envelope.accepted records of session by envelope id. It also returns how many records the trail holds.
func acceptedRecords(t *testing.T, c *cli, admin, session string, limit time.Duration) (map[string]int, int) {
	t.Helper()
	var export []byte
	retryFor(t, "audit verify and export", limit, func(context.Context) error {
		out, errs, err := c.run("", "audit", "verify", "--as", admin)
		if err != nil || !strings.Contains(out, "audit chain verified") {
			return fmt.Errorf("%v: %s%s", err, out, errs)
		}
		out, errs, err = c.run("", "audit", "export", "--as", admin)
		if err != nil {
			return fmt.Errorf("export: %v: %s", err, errs)
		}
		export = []byte(out)
		return nil
	})
	records, err := audit.ReadJSONLines(bytes.NewReader(export))
	if err != nil {
		t.Fatal(err)
	}
	accepted := map[string]int{}
	for _, r := range records {
		if r.Kind != "envelope.accepted" || r.Session != session {
			continue
		}
		var h struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(r.Data, &h); err != nil {
			t.Fatalf("an envelope.accepted record's data: %v", err)
		}
		accepted[h.ID]++
	}
	return accepted, len(records)
}

// adminFileOf is the platform administrator's identity file naming m's overlay API first (the cluster test
// writes one per first member, and none for a member that joined later).
func adminFileOf(c *cli, m *member) string { return filepath.Join(c.dir, "admin-"+m.name+".json") }

// metaLeaderOf returns the index in live of the member whose NATS server leads the meta group, or -1.
func metaLeaderOf(st api.ClusterStatus, live []*member) int {
	for _, p := range st.NATS {
		if !p.Leader {
			continue
		}
		for _, cm := range st.Members {
			if cm.NATS != p.Name {
				continue
			}
			for i, m := range live {
				if cm.Addr == "tls:127.0.0.1:"+m.ctrl {
					return i
				}
			}
		}
	}
	return -1
}
