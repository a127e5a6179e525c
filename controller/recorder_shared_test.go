package controller

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// recorderNode is one controller's part of a shared record path: its own connection and stores on the common
// JetStream, its recorder sharing the trail, and its lease (none: it always writes).
type recorderNode struct {
	name string
	w    *recorderWorld
	rec  *envelopeRecorder
	lead *leadership
	stop context.CancelFunc
	done chan struct{}
}

// startRecorderNode starts a node on js with a lease of the given term (0: no lease). A node's lease is
// abandoned when it stops, as in a crash: another node takes over only once the term has run out.
func startRecorderNode(t *testing.T, name string, js jetstream.JetStream, term time.Duration) *recorderNode {
	t.Helper()
	n := &recorderNode{name: name, w: &recorderWorld{t: t}, done: make(chan struct{})}
	n.w.openStores(js)
	n.rec = newEnvelopeRecorder(n.w.env, n.w.trail, n.w.hints, n.w.strm)
	n.rec.actor, n.rec.shared = "spiffe://test.local/controller/api/"+name, true
	if term > 0 {
		n.lead = newLeadership(n.w.hints.kv, "spiffe://test.local/controller/api/"+name, term, nil)
		n.lead.abandon = true
		n.rec.lead = n.lead
	}
	return n
}

// run starts the node's lease and recorder; crashAt, if set, is the recorder's crash hook.
func (n *recorderNode) run(crashAt func(step string, envSeq uint64) error) {
	n.rec.crashAt = crashAt
	ctx, cancel := context.WithCancel(context.Background())
	n.stop = cancel
	var wg sync.WaitGroup
	if n.lead != nil {
		wg.Go(func() { n.lead.run(ctx) })
	}
	wg.Go(func() { n.rec.run(ctx) })
	go func() {
		wg.Wait()
		close(n.done)
	}()
}

// kill stops the node as a crash would (its lease is abandoned, not released) and waits until it has stopped.
func (n *recorderNode) kill() {
	n.stop()
	<-n.done
}

// waitAll waits until every node's wait says envelope seq is recorded.
func waitAll(t *testing.T, ctx context.Context, seq uint64, nodes ...*recorderNode) {
	t.Helper()
	for _, n := range nodes {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := n.rec.wait(wctx, seq)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
	}
}

// leaders are the nodes that lead now.
func leaders(nodes ...*recorderNode) []*recorderNode {
	var out []*recorderNode
	for _, n := range nodes {
		if n.lead != nil && n.lead.leads() {
			out = append(out, n)
		}
	}
	return out
}

// waitLeader waits up to 20 s until exactly one of nodes leads, and returns it.
func waitLeader(t *testing.T, nodes ...*recorderNode) *recorderNode {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if l := leaders(nodes...); len(l) == 1 {
			return l[0]
		} else if len(l) > 1 {
			t.Fatalf("%d nodes lead at once", len(l))
		}
		if time.Now().After(deadline) {
			t.Fatal("no node leads after 20 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// appendConcurrently has writers×each envelopes stored, each writer through the next node's store, each envelope
// followed by an unrelated audit record through that node's trail (another controller's API at work).
func appendConcurrently(t *testing.T, ctx context.Context, writers, each int, nodes ...*recorderNode) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range writers {
		n := nodes[i%len(nodes)]
		wg.Go(func() {
			for range each {
				n.w.appendEnvelopes(ctx, 1)
				if _, err := n.w.trail.Append(ctx, audit.Record{Kind: "session.transition", Actor: "spiffe://test.local/controller/api/" + n.name,
					Decision: audit.DecisionAllow}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
}

// checkTrail checks that envelopes 1 to total each have exactly one record (records fails on a second) and that
// the chain verifies.
func checkTrail(t *testing.T, ctx context.Context, w *recorderWorld, total int) {
	t.Helper()
	recs := w.records(ctx)
	if len(recs) != total {
		t.Fatalf("%d envelopes recorded, want %d", len(recs), total)
	}
	for i := 1; i <= total; i++ {
		if _, ok := recs[uint64(i)]; !ok {
			t.Fatalf("envelope %d has no record", i)
		}
	}
	if _, err := w.trail.Verify(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRecordersShareOneTrail runs three controllers' recorders over one JetStream: one records, every one's
// wait returns, each envelope has exactly one record; then the recording one is killed mid-stream (its lease
// abandoned) and another takes over within the lease's term with nothing missed or doubled.
func TestRecordersShareOneTrail(t *testing.T) {
	limit := testlimit.Start(t, 2*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const term = 600 * time.Millisecond
	w := openRecorderWorld(t, t.TempDir())
	var nodes []*recorderNode
	for i := range 3 {
		js := natsdtest.Connect(t, w.ns, fmt.Sprintf("c%d", i))
		n := startRecorderNode(t, fmt.Sprintf("c%d", i), js, term)
		n.run(nil)
		t.Cleanup(n.kill)
		nodes = append(nodes, n)
	}

	limit.Step("three writers of 20 envelopes through three controllers, with other records between")
	leader := waitLeader(t, nodes...)
	appendConcurrently(t, ctx, 3, 20, nodes...)
	waitAll(t, ctx, 60, nodes...)
	checkTrail(t, ctx, w, 60)
	if l := leaders(nodes...); len(l) != 1 || l[0] != leader {
		t.Fatalf("leadership moved without a failure: %v", l)
	}

	limit.Step("kill %s, which records, while envelopes arrive", leader.name)
	survivors := killLeaderWhileSending(t, ctx, nodes, leader, 20, 70, term)
	waitAll(t, ctx, 100, survivors...)
	checkTrail(t, ctx, w, 100)
}

// TestRecordersWithoutLeaseNeverRecordTwice lets three recorders write at once, no lease between them (as a
// lease holder paused past its term and its successor would): the conditional appends alone keep every envelope
// at exactly one record.
func TestRecordersWithoutLeaseNeverRecordTwice(t *testing.T) {
	limit := testlimit.Start(t, 2*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	w := openRecorderWorld(t, t.TempDir())
	var nodes []*recorderNode
	for i := range 3 {
		js := natsdtest.Connect(t, w.ns, fmt.Sprintf("c%d", i))
		n := startRecorderNode(t, fmt.Sprintf("c%d", i), js, 0)
		n.run(nil)
		t.Cleanup(n.kill)
		nodes = append(nodes, n)
	}
	limit.Step("three writing recorders, four writers of 30 envelopes")
	appendConcurrently(t, ctx, 4, 30, nodes...)
	waitAll(t, ctx, 120, nodes...)
	checkTrail(t, ctx, w, 120)
}

// TestSharedRecorderCrashBoundaries kills the recording controller at each step of recording an envelope (the
// crashAt hook) with another controller following: the other takes over and every envelope ends up with exactly
// one record, including the one being recorded at the crash.
func TestSharedRecorderCrashBoundaries(t *testing.T) {
	for _, step := range []string{stepRead, stepRecorded, stepAdvanced} {
		t.Run(step, func(t *testing.T) {
			limit := testlimit.Start(t, 2*time.Minute)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			w := openRecorderWorld(t, t.TempDir())
			var nodes []*recorderNode
			var crashed atomic.Pointer[recorderNode]
			for i := range 2 {
				js := natsdtest.Connect(t, w.ns, fmt.Sprintf("c%d", i))
				n := startRecorderNode(t, fmt.Sprintf("c%d", i), js, 500*time.Millisecond)
				n.run(func(at string, seq uint64) error {
					if at == step && seq >= 7 && crashed.CompareAndSwap(nil, n) {
						go n.kill()
						return errCrash
					}
					return nil
				})
				t.Cleanup(n.kill)
				nodes = append(nodes, n)
			}
			waitLeader(t, nodes...)

			limit.Step("20 envelopes; the recording controller dies at %q of the 7th", step)
			w.appendEnvelopes(ctx, 20)
			deadline := time.Now().Add(20 * time.Second)
			for crashed.Load() == nil {
				if time.Now().After(deadline) {
					t.Fatal("no recorder reached the crash")
				}
				time.Sleep(10 * time.Millisecond)
			}
			dead := crashed.Load()
			<-dead.done
			var survivor *recorderNode
			for _, n := range nodes {
				if n != dead {
					survivor = n
				}
			}
			waitAll(t, ctx, 20, survivor)

			limit.Step("5 more envelopes, recorded by the survivor")
			w.appendEnvelopes(ctx, 5)
			waitAll(t, ctx, 25, survivor)
			checkTrail(t, ctx, w, 25)
			if !survivor.lead.leads() {
				t.Fatal("the survivor recorded without leading")
			}
		})
	}
}

// TestRecordersShareOneTrailOnNATSCluster is TestRecordersShareOneTrail on a three-server NATS cluster, every
// stream and bucket R3 (so the records go as atomic batches), one controller per server; the recording
// controller is killed (its server stays up: losing a stream's leader is internal/envstore's test).
func TestRecordersShareOneTrailOnNATSCluster(t *testing.T) {
	limit := testlimit.Start(t, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	c := natsdtest.StartCluster(t, 3)
	const term = time.Second
	var nodes []*recorderNode
	for i := range 3 {
		n := startRecorderNode(t, fmt.Sprintf("c%d", i), replicated{JetStream: c.JetStream(i), n: 3}, term)
		n.run(nil)
		t.Cleanup(n.kill)
		nodes = append(nodes, n)
	}
	limit.Step("three writers of 10 envelopes through three controllers")
	leader := waitLeader(t, nodes...)
	appendConcurrently(t, ctx, 3, 10, nodes...)
	waitAll(t, ctx, 30, nodes...)
	checkTrail(t, ctx, nodes[0].w, 30)

	limit.Step("kill %s while envelopes arrive", leader.name)
	survivors := killLeaderWhileSending(t, ctx, nodes, leader, 10, 35, term)
	waitAll(t, ctx, 50, survivors...)
	checkTrail(t, ctx, survivors[0].w, 50)
}

// killLeaderWhileSending has the survivors send two batches of perSender envelopes concurrently, kills leader once
// it has seen the record of envelope seen, waits until a survivor holds the lease and the sends are done, and
// returns the survivors.
func killLeaderWhileSending(t *testing.T, ctx context.Context, nodes []*recorderNode, leader *recorderNode, perSender int, seen uint64, term time.Duration) []*recorderNode {
	t.Helper()
	var survivors []*recorderNode
	for _, n := range nodes {
		if n != leader {
			survivors = append(survivors, n)
		}
	}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		appendConcurrently(t, ctx, 2, perSender, survivors...)
	}()
	waitAll(t, ctx, seen, leader)
	killed := time.Now()
	leader.kill()
	next := waitLeader(t, survivors...)
	t.Logf("%s took over %s after %s was killed (lease term %s)", next.name, time.Since(killed).Round(time.Millisecond), leader.name, term)
	<-sent
	return survivors
}
