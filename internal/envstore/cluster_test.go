package envstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
)

// TestClusterAppendsSurviveStreamLeaderLoss runs the envelope store and the audit trail (single records and atomic batches) R3 on a three-server
// cluster, commits an atomic batch of envelopes on it, and with writers racing through two of the servers, and kills the server leading both streams midway.
// Every acknowledged envelope is stored exactly once with exact per-session counts, every acknowledged audit
// record is in the trail once, and the chain verifies.
func TestClusterAppendsSurviveStreamLeaderLoss(t *testing.T) {
	c := natsdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Second)
	defer cancel()
	const auditStream = "UMBRA_AUDIT_TEST"
	var stores []*Store
	var logs []*audit.Log
	for i := range 2 {
		js := c.JetStream(i)
		stores = append(stores, open(t, js, Options{Replicas: 3}))
		l, err := audit.Open(ctx, js, audit.Options{Stream: auditStream, Replicas: 3})
		if err != nil {
			t.Fatal(err)
		}
		logs = append(logs, l)
	}
	info, err := stores[0].stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 || !info.Config.AllowAtomicPublish {
		t.Fatalf("envelope stream: replicas %d, atomic publish %v", info.Config.Replicas, info.Config.AllowAtomicPublish)
	}
	// An atomic batch of ten envelopes (the group commit's form, commit.go) commits on the R3 stream.
	var batch []*pendingPublish
	for i := range 10 {
		session, id := fmt.Sprintf("batch%d", i), fmt.Sprintf("b%d", i)
		msg := &nats.Msg{Subject: stores[0].envelopeSubject(session, id), Data: []byte(id), Header: nats.Header{}}
		msg.Header.Set(hdrID, id)
		msg.Header.Set(hdrCount, "1")
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
		msg.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, stores[0].sessionWildcard(session))
		batch = append(batch, &pendingPublish{msg: msg, msgID: session + "/" + id, done: make(chan pubDone, 1), lead: make(chan struct{})})
	}
	stores[0].commit.publishBatch(ctx, batch)
	for i, p := range batch {
		if r := <-p.done; r.err != nil || r.seq == 0 {
			t.Fatalf("batched envelope %d: %+v", i, r)
		}
	}
	if stores[0].commit.batches != 1 {
		t.Fatalf("the batch of ten was not committed atomically (%d batches, %d refused)", stores[0].commit.batches, stores[0].commit.refused)
	}
	for i := range 10 {
		if n, err := stores[1].Count(ctx, fmt.Sprintf("batch%d", i)); err != nil || n != 1 {
			t.Fatalf("session batch%d holds %d envelopes (%v), want 1", i, n, err)
		}
	}

	// The writers are attached to n0 and n1; n2 leads both streams and is the one killed.
	c.LeadStream(defaultStream, 2)
	c.LeadStream(auditStream, 2)

	const sessions, writersPerStore, each = 8, 4, 30
	var (
		mu       sync.Mutex
		envelope = map[string]map[string]bool{} // session -> acknowledged ids
		records  = map[string]bool{}            // hashes of acknowledged audit records
		acked    atomic.Int64
		retries  atomic.Int64
		wg       sync.WaitGroup
	)
	// retry repeats op until it succeeds or 15 s pass: an append whose answer was lost is tried again.
	retry := func(what string, op func() error) bool {
		start := time.Now()
		for {
			err := op()
			if err == nil {
				return true
			}
			if time.Since(start) > 15*time.Second || ctx.Err() != nil {
				t.Errorf("%s: not acknowledged within 15 s: %v", what, err)
				return false
			}
			retries.Add(1)
			time.Sleep(50 * time.Millisecond)
		}
	}
	for si, s := range stores {
		for w := range writersPerStore {
			wg.Go(func() {
				for j := range each {
					session := fmt.Sprintf("s%d", (w+j)%sessions)
					id := fmt.Sprintf("n%d-w%d-%d", si, w, j)
					ok := retry("append "+id, func() error {
						actx, acancel := context.WithTimeout(ctx, 3*time.Second)
						defer acancel()
						_, err := s.Append(actx, Envelope{ID: id, Session: session, To: recipientA, Data: []byte(id)}, 0)
						return err
					})
					if !ok {
						return
					}
					mu.Lock()
					if envelope[session] == nil {
						envelope[session] = map[string]bool{}
					}
					envelope[session][id] = true
					mu.Unlock()
					acked.Add(1)
					// Store n0's writers append one record at a time, n1's two per atomic batch (as the recorder does).
					var rs []audit.Record
					ok = retry("audit "+id, func() error {
						actx, acancel := context.WithTimeout(ctx, 3*time.Second)
						defer acancel()
						r := audit.Record{Kind: "envelope.accepted", Actor: recipientA, Session: session,
							Decision: audit.DecisionAllow, Data: json.RawMessage(strconv.Quote(id))}
						if si == 0 {
							stored, err := logs[si].Append(actx, r)
							rs = []audit.Record{stored}
							return err
						}
						var err error
						rs, err = logs[si].AppendBatch(actx, []audit.Record{r, r})
						return err
					})
					if !ok {
						return
					}
					mu.Lock()
					for _, r := range rs {
						records[r.Hash] = true
					}
					mu.Unlock()
				}
			})
		}
	}
	total := int64(len(stores) * writersPerStore * each)
	for acked.Load() < total/3 && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	killedAt := acked.Load()
	c.Kill(2)
	start := time.Now()
	for acked.Load() == killedAt && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("stream leader n2 killed after %d of %d envelopes; the next acknowledged after %v", killedAt, total, time.Since(start).Round(time.Millisecond))
	wg.Wait()
	t.Logf("appends tried again by their callers: %d; publishes published again by the stores: %d, %d", retries.Load(),
		stores[0].commit.republished.Load(), stores[1].commit.republished.Load())
	if t.Failed() {
		t.FailNow()
	}
	for i := range sessions {
		session := fmt.Sprintf("s%d", i)
		for _, s := range stores {
			checkSession(t, s, session, envelope[session])
		}
		msgs, err := stores[1].All(ctx, session)
		if err != nil {
			t.Fatal(err)
		}
		for k, m := range msgs {
			raw, err := stores[1].stream.GetMsg(ctx, m.StreamSeq)
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := strconv.Atoi(raw.Header.Get(hdrCount)); n != k+1 {
				t.Fatalf("session %s envelope %d records count %d", session, k+1, n)
			}
		}
	}
	// A read just after the failover may have its consumer on the lost server and stall until the client gives
	// up on it: each read gets a deadline of its own and is tried again.
	settled := func(what string, read func(context.Context) error) {
		t.Helper()
		var err error
		for attempt := 1; attempt <= 4; attempt++ {
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			err = read(rctx)
			rcancel()
			if err == nil {
				return
			}
			t.Logf("%s, attempt %d: %v", what, attempt, err)
		}
		t.Fatalf("%s: %v", what, err)
	}
	var rep audit.Report
	settled("audit chain", func(rctx context.Context) (err error) {
		rep, err = logs[1].Verify(rctx)
		return err
	})
	seen := map[string]int{}
	settled("audit scan", func(rctx context.Context) error {
		clear(seen)
		_, err := logs[0].Scan(rctx, 0, func(r audit.Record) error { seen[r.Hash]++; return nil })
		return err
	})
	for h := range records {
		if seen[h] != 1 {
			t.Errorf("acknowledged audit record %s is in the trail %d times", h, seen[h])
		}
	}
	var batches, batched, refused uint64
	for _, s := range stores {
		s.commit.mu.Lock()
		batches, batched, refused = batches+s.commit.batches, batched+s.commit.batched, refused+s.commit.refused
		s.commit.mu.Unlock()
	}
	t.Logf("%d envelopes, %d audit records acknowledged (trail: %d records), %d retries; group commit: %d atomic batches (%d envelopes), %d refused",
		total, len(records), rep.Records, retries.Load(), batches-1, batched-10, refused)
}
