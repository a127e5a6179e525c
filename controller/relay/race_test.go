package relay_test

import (
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
	"github.com/umbra-mesh/umbra/workgroups"
)

// sender is a send connection of a party to the session, sending to the other party.
type sender struct {
	c        *client
	from, to spiffeid.ID
}

// race sends per envelopes from each sender at once, each waiting for one answer before its next envelope, and
// returns every answer.
func race(t *testing.T, s workgroups.Session, senders []sender, per int) []api.RelayAck {
	t.Helper()
	payload := []byte(`{}`)
	var mu sync.Mutex
	var acks []api.RelayAck
	var wg sync.WaitGroup
	for _, snd := range senders {
		c, from, to := snd.c, snd.from, snd.to
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				frame, _ := workgroups.AppendFrame(nil, header(s, from, to, "quote.request", payload), payload)
				_ = c.conn.SetWriteDeadline(time.Now().Add(step))
				if _, err := c.conn.Write(frame); err != nil {
					t.Error(err)
					return
				}
				_ = c.conn.SetReadDeadline(time.Now().Add(step))
				line, err := c.r.ReadBytes('\n')
				if err != nil {
					t.Error(err)
					return
				}
				var ack api.RelayAck
				if err := json.Unmarshal(line, &ack); err != nil {
					t.Errorf("ack %q: %v", line, err)
					return
				}
				mu.Lock()
				acks = append(acks, ack)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return acks
}

// tally counts the acknowledged answers and checks that every other one refuses at the session's limit.
func tally(t *testing.T, acks []api.RelayAck) (ok int, refused map[string]int) {
	t.Helper()
	refused = map[string]int{}
	for _, ack := range acks {
		if ack.OK {
			ok++
			continue
		}
		refused[ack.Code]++
		if ack.Code != string(workgroups.ViolationSessionClosed) && ack.Code != string(workgroups.ViolationMaxMessages) {
			t.Errorf("refused with %+v", ack)
		}
	}
	return ok, refused
}

func TestExactLimitUnderRacingConnections(t *testing.T) {
	w := newWorld(t)
	c2 := contract()
	c2.MaxMessages = 100
	s := w.session(c2)
	var senders []sender
	for range 50 {
		senders = append(senders, sender{w.dial(consumer, api.RelayHello{Mode: "send"}), consumer, provider})
	}
	ok, refused := tally(t, race(t, s, senders, 3))
	if n := refused[string(workgroups.ViolationSessionClosed)] + refused[string(workgroups.ViolationMaxMessages)]; ok != 100 || n != 50 {
		t.Fatalf("accepted %d refused %v, want 100 and 50", ok, refused)
	}
}

// ownLock is the sessions as another controller sees them: the same sessions (the controllers share them in a
// replicated bucket), but a lock of its own.
type ownLock struct {
	*fakeSessions
	mu sync.Mutex
}

func (o *ownLock) Lock(string) func() {
	o.mu.Lock()
	return o.mu.Unlock
}

// TestExactLimitAcrossControllers races senders attached to three relays, as three controllers run them: each
// relay has its own NATS connection to a different server of a three-server JetStream cluster, its own envelope
// store on the stream replicated three times, and its own session lock. Nothing but the store's compare-and-set
// orders their appends, and the session's limit holds exactly: every position is stamped once, by the store.
func TestExactLimitAcrossControllers(t *testing.T) {
	const limit, conns, per = 100, 60, 3
	cl := natsdtest.StartCluster(t, 3)
	opts := envstore.Options{Stream: "RELAYTEST", Replicas: 3}
	w := newWorldOn(t, cl.JetStream(0), opts, nil)
	listeners := []*chanListener{w.ln}
	for i := 1; i < cl.Len(); i++ {
		store, err := envstore.Open(w.ctx, cl.JetStream(i), opts)
		if err != nil {
			t.Fatal(err)
		}
		ln, _, _ := w.serve(store, &ownLock{fakeSessions: w.sessions}, nil)
		listeners = append(listeners, ln)
	}
	c2 := contract()
	c2.MaxMessages = limit
	s := w.session(c2)
	// Both parties send, each through every relay.
	var senders []sender
	for i := range conns {
		from, to := consumer, provider
		if i%2 == 1 {
			from, to = provider, consumer
		}
		senders = append(senders, sender{w.dialVia(listeners[i%len(listeners)], from, api.RelayHello{Mode: "send"}), from, to})
	}
	began := time.Now()
	acks := race(t, s, senders, per)
	took := time.Since(began)
	ok, refused := tally(t, acks)
	if len(acks) != conns*per || ok != limit {
		t.Fatalf("%d answers, %d acknowledged, refused %v; want %d answers, %d acknowledged", len(acks), ok, refused, conns*per, limit)
	}
	acked := map[string]uint64{}
	var positions []uint64
	for _, ack := range acks {
		if !ack.OK {
			continue
		}
		if ack.Duplicate {
			t.Errorf("a fresh envelope acknowledged as a duplicate: %+v", ack)
		}
		if _, twice := acked[ack.ID]; twice {
			t.Errorf("envelope %s acknowledged twice", ack.ID)
		}
		acked[ack.ID] = ack.Seq
		positions = append(positions, ack.Seq)
	}
	slices.Sort(positions)
	for i, p := range positions {
		if p != uint64(i+1) {
			t.Fatalf("acknowledged positions %v, want 1..%d each once", positions, limit)
		}
	}
	stored := w.stored(s)
	if len(stored) != limit {
		t.Fatalf("%d envelopes stored, want %d", len(stored), limit)
	}
	seen := map[uint64]bool{}
	for _, h := range stored {
		seq, ok := acked[h.ID.String()]
		switch {
		case !ok:
			t.Errorf("stored envelope %s at %d was not acknowledged", h.ID, h.Seq)
		case seq != h.Seq:
			t.Errorf("envelope %s acknowledged at %d, stored at %d", h.ID, seq, h.Seq)
		}
		if h.Seq < 1 || h.Seq > limit || seen[h.Seq] {
			t.Errorf("stored position %d out of range or twice", h.Seq)
		}
		seen[h.Seq] = true
		delete(acked, h.ID.String())
	}
	if len(acked) > 0 {
		t.Errorf("%d acknowledged envelopes not stored", len(acked))
	}
	t.Logf("%d senders through %d relays on an R3 stream, %d envelopes in %s: %d acknowledged at positions 1..%d, refused %v",
		conns, len(listeners), len(acks), took.Round(time.Millisecond), ok, limit, refused)
}
