package natsd_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/natsd"
	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
)

// failoverWithin bounds how long the survivors may take to accept writes again after a server is killed: a
// leader's replicas elect a new one after NATS's raft election timeout (4 to 9 s, randomised) when the leader did
// not hand over, plus a write's own 1 s timeout; the rest is room for a loaded machine.
const failoverWithin = 15 * time.Second

// TestClusterSurvivesLeaderLoss runs a three-server cluster with an R3 stream, kills the JetStream meta leader,
// restarts it, then kills the stream's leader: each time the other two accept writes again within seconds, and
// the stream ends up holding every acknowledged write exactly once.
func TestClusterSurvivesLeaderLoss(t *testing.T) {
	c := natsdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	defer cancel()
	js := c.JetStream(0)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	acked := 0
	write := func(js jetstream.JetStream) time.Duration {
		t.Helper()
		start := time.Now()
		id := fmt.Sprintf("m%d", acked)
		for {
			pctx, pcancel := context.WithTimeout(ctx, time.Second)
			_, err := js.Publish(pctx, "t.x", []byte(id), jetstream.WithMsgID(id))
			pcancel()
			if err == nil {
				acked++
				return time.Since(start)
			}
			if time.Since(start) > failoverWithin {
				t.Fatalf("write %s not acknowledged %v after the kill: %v", id, failoverWithin, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for range 20 {
		write(js)
	}

	meta := c.MetaLeader()
	c.Kill(meta)
	survivor := (meta + 1) % 3
	took := write(c.JetStream(survivor))
	t.Logf("meta leader n%d killed: first write acknowledged after %v", meta, took.Round(time.Millisecond))
	for range 20 {
		write(c.JetStream(survivor))
	}
	if again := c.MetaLeader(); again == meta {
		t.Fatalf("the killed server n%d is still meta leader", meta)
	}

	c.Restart(meta)
	if err := c.Server(meta).WaitJetStream(ctx); err != nil {
		t.Fatal(err)
	}
	c.WaitStreamCurrent("T", meta)
	leader := c.StreamLeader("T")
	c.Kill(leader)
	survivor = (leader + 1) % 3
	sjs := c.JetStream(survivor)
	took = write(sjs)
	t.Logf("stream leader n%d killed: first write acknowledged after %v", leader, took.Round(time.Millisecond))
	for range 20 {
		write(sjs)
	}
	if again := c.StreamLeader("T"); again == leader {
		t.Fatalf("the killed server n%d still leads the stream", leader)
	}

	stream, err := sjs.Stream(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(acked) {
		t.Fatalf("stream holds %d messages, %d writes were acknowledged", info.State.Msgs, acked)
	}
	seen := map[string]bool{}
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		if seen[string(m.Data)] {
			t.Fatalf("%s stored twice", m.Data)
		}
		seen[string(m.Data)] = true
	}
	if len(seen) != acked {
		t.Fatalf("%d distinct writes stored, %d acknowledged", len(seen), acked)
	}
}

// TestRemoveAndReplaceServer replaces a dead server of a three-server cluster: a fourth server joins, the dead one
// is removed from the meta group through a survivor, and the R3 stream's replicas move to the new server, which
// catches up; the meta group then knows three servers, none of them the dead one, and writes go on.
func TestRemoveAndReplaceServer(t *testing.T) {
	c := natsdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	js := c.JetStream(0)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err := js.Publish(ctx, "t.x", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Server(0).RemovePeer(ctx, "nowhere", "nowhere1"); !errors.Is(err, natsd.ErrNotMember) {
		t.Fatalf("removing a server the cluster does not know: %v, want ErrNotMember", err)
	}
	dead := 2
	deadID := c.Server(dead).PeerID()
	c.Kill(dead)
	added := c.Add()
	if err := c.Server(added).WaitJetStream(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// Through the new server, which never heard of n2 by name.
	if err := c.Server(added).RemovePeer(ctx, "n2", deadID); err != nil {
		t.Fatal(err)
	}
	c.WaitStreamCurrent("T", added)
	t.Logf("n2 removed: the new server n%d holds a current replica of the stream %v later", added, time.Since(start).Round(time.Millisecond))
	for {
		size, peers, err := c.Server(c.MetaLeader()).MetaGroup()
		if err != nil {
			t.Fatal(err)
		}
		ids := []string{}
		for _, p := range peers {
			ids = append(ids, p.ID)
		}
		if size == 3 && len(peers) == 3 && !slices.Contains(ids, deadID) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("meta group after the removal: size %d, peers %v; want n0, n1 and n%d, not %s", size, peers, added, deadID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	info, err := func() (*jetstream.StreamInfo, error) {
		s, err := c.JetStream(added).Stream(ctx, "T")
		if err != nil {
			return nil, err
		}
		if _, err := c.JetStream(added).Publish(ctx, "t.x", []byte("after")); err != nil {
			return nil, err
		}
		return s.Info(ctx)
	}()
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 11 {
		t.Fatalf("the stream holds %d messages, want 11", info.State.Msgs)
	}
}

// TestClusterConfigRefused checks that a cluster without what it needs is refused before anything starts.
func TestClusterConfigRefused(t *testing.T) {
	tlsCfg, err := natsdtest.RouteTLS()
	if err != nil {
		t.Fatal(err)
	}
	ok := natsd.Cluster{Name: "c", Listen: "127.0.0.1:0", Routes: []string{"127.0.0.1:1"}, TLS: tlsCfg}
	noTLS, noName, noRoutes, badRoute := ok, ok, ok, ok
	noTLS.TLS, noName.Name, noRoutes.Routes, badRoute.Routes = nil, "", nil, []string{"127.0.0.1"}
	for name, cl := range map[string]natsd.Cluster{"no TLS": noTLS, "no name": noName, "no routes": noRoutes, "bad route": badRoute} {
		srv, err := natsd.Start(natsd.Config{StoreDir: t.TempDir(), ServerName: "x", Cluster: &cl})
		if err == nil {
			srv.Shutdown()
			t.Errorf("%s: started", name)
		} else if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
