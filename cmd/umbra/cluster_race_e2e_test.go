package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/workgroups"
)

// raceThroughMembers opens a session of max messages between a consumer enrolled at, and authenticated through,
// member via and a provider through member other, and has both parties send at once, each from two connections
// of its own, until the relay refuses them. Exactly max envelopes are acknowledged, at positions 1..max; every
// refusal is max_messages or session_closed; each party receives exactly the other's acknowledged envelopes,
// once; the audit trail, read through the platform administrator's file admin, holds exactly one
// envelope.accepted record per acknowledged envelope and no other for the session, and its chain verifies. It
// returns what it measured.
func raceThroughMembers(t *testing.T, c *cli, ms []*member, platform *agentsdk.Agent, admin string, via, other int) string {
	t.Helper()
	const max, senders, each = 60, 2, 40
	began := time.Now()
	consumer, provider, sess, prov := clusterSession(t, c.dir, "raceco", platform, ms, via, other, workgroups.Terms{
		MaxDuration: workgroups.Duration(time.Hour), MaxMessages: max, AllowedMessageTypes: []string{"tick"}, MaxEnvelopeBytes: 1024})
	opened := time.Since(began)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		mu       sync.Mutex
		acked    = map[workgroups.EnvelopeID]uint64{} // → its position
		from     = map[workgroups.EnvelopeID]*agentsdk.Agent{}
		refused  = map[string]int{}
		received = map[*agentsdk.Agent]map[workgroups.EnvelopeID]int{consumer: {}, provider: {}}
		wg       sync.WaitGroup
	)
	// Each sender has a handle on the session of its own, so a relay connection of its own.
	for _, party := range []*agentsdk.Agent{consumer, provider} {
		peer := provider
		if party == provider {
			peer = consumer
		}
		for range senders {
			h, err := party.Session(ctx, sess.ID())
			if err != nil {
				t.Fatalf("race: a handle on the session: %v", err)
			}
			wg.Go(func() {
				for i := range each {
					id, err := workgroups.NewEnvelopeID(rand.Reader)
					if err != nil {
						t.Error(err)
						return
					}
					payload := []byte(fmt.Sprintf(`{"n":%d}`, i))
					env := workgroups.Header{ID: id, Session: sess.ID(), From: party.ID(), To: peer.ID(), Type: "tick",
						Time: time.Now().UTC(), ContentType: "application/json"}.WithPayload(payload)
					seq, err := h.SendEnvelope(ctx, env, payload)
					var re *agentsdk.RelayError
					mu.Lock()
					switch {
					case err == nil:
						acked[id], from[id] = seq, party
					case errors.As(err, &re) && (re.Code == string(workgroups.ViolationMaxMessages) || re.Code == string(workgroups.ViolationSessionClosed)):
						refused[re.Code]++
					default:
						t.Errorf("race: %s's envelope %d: %v, want an acknowledgement or a refusal at the limit", party.ID().Path(), i, err)
					}
					mu.Unlock()
					if err != nil {
						return
					}
				}
			})
		}
	}
	// Each party receives on one handle of its own.
	rctx, stopRecv := context.WithCancel(ctx)
	var receiving sync.WaitGroup
	for _, party := range []*agentsdk.Agent{consumer, provider} {
		h := sess
		if party == provider {
			h = prov
		}
		receiving.Go(func() {
			for rctx.Err() == nil {
				actx, cancel := context.WithTimeout(rctx, 3*time.Second)
				env, err := h.Receive(actx)
				cancel()
				if err != nil {
					continue // a timeout, or the end; a broken connection is opened again by the next Receive
				}
				mu.Lock()
				received[party][env.Header.ID]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	sent := time.Since(began) - opened
	// received reports whether each party has every envelope the other had acknowledged.
	complete := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for id, p := range from {
			to := consumer
			if p == consumer {
				to = provider
			}
			if received[to][id] == 0 {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(15 * time.Second); !complete() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	// A moment more for anything that should not come.
	time.Sleep(500 * time.Millisecond)
	stopRecv()
	receiving.Wait()

	mu.Lock()
	var positions []uint64
	for _, seq := range acked {
		positions = append(positions, seq)
	}
	slices.Sort(positions)
	if len(acked) != max {
		t.Errorf("race: %d envelopes acknowledged, refused %v; want exactly %d", len(acked), refused, max)
	}
	for i, p := range positions {
		if p != uint64(i+1) {
			t.Errorf("race: acknowledged positions %v, want 1..%d each once", positions, max)
			break
		}
	}
	for party, got := range received {
		for id, n := range got {
			switch {
			case from[id] == nil:
				t.Errorf("race: %s received envelope %s, which was never acknowledged", party.ID().Path(), id)
			case from[id] == party:
				t.Errorf("race: %s received its own envelope %s", party.ID().Path(), id)
			case n != 1:
				t.Errorf("race: %s received envelope %s %d times", party.ID().Path(), id, n)
			}
		}
	}
	missing := 0
	for id, p := range from {
		to := consumer
		if p == consumer {
			to = provider
		}
		if received[to][id] == 0 {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("race: %d acknowledged envelopes not received within 15 s", missing)
	}
	mu.Unlock()

	accepted, _ := acceptedRecords(t, c, admin, sess.ID().String(), 30*time.Second)
	ackedIDs := map[string]bool{}
	for id := range acked {
		ackedIDs[id.String()] = true
	}
	n := 0
	for id, k := range accepted {
		n += k
		if !ackedIDs[id] {
			t.Errorf("race: envelope %s recorded as accepted but not acknowledged", id)
		}
		if k != 1 {
			t.Errorf("race: envelope %s has %d envelope.accepted records", id, k)
		}
	}
	if n != max {
		t.Errorf("race: %d envelope.accepted records for the session, want %d", n, max)
	}
	return fmt.Sprintf("session opened in %s; %d senders through %s and %s sent %d envelopes in %s: %d acknowledged at positions 1..%d, refused %v; each party received the other's once; %d envelope.accepted records, the chain verifies; %s in all",
		opened.Round(time.Millisecond), 2*senders, ms[via].name, ms[other].name, len(acked)+refused[string(workgroups.ViolationMaxMessages)]+refused[string(workgroups.ViolationSessionClosed)],
		sent.Round(time.Millisecond), len(acked), max, refused, n, time.Since(began).Round(time.Millisecond))
}
