package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// clusterStream is one A2A session of the cluster test whose envelopes flow across the death of a member: the
// sender is enrolled at, and authenticated through, the member to be killed; the receiver through another one.
type clusterStream struct {
	t                  *testing.T
	stopSend, stopRecv context.CancelFunc
	sending, receiving sync.WaitGroup
	sender, receiver   *activity
	stopped            chan error // why the sender gave up: a refusal by the relay is an answer, not a stall
	session            string

	mu       sync.Mutex
	acked    map[workgroups.EnvelopeID]bool
	sent     map[workgroups.EnvelopeID]bool // acknowledged or not: the one in flight when sending stops may be stored
	received map[workgroups.EnvelopeID]int
}

// clusterOrg is an organisation of a cluster test, created through the platform administrator, with its own
// administrator and one workgroup, "stream"; each member's data directory is under dir.
type clusterOrg struct {
	t     testing.TB
	dir   string
	name  string
	ms    []*member
	admin *agentsdk.Agent
	wg    workgroups.WorkgroupID
}

// newClusterOrg creates organisation org with the platform administrator, its administrator enrolled at member
// adminAt, and its workgroup.
func newClusterOrg(t testing.TB, dir, org string, platform *agentsdk.Agent, ms []*member, adminAt int) *clusterOrg {
	t.Helper()
	o := &clusterOrg{t: t, dir: dir, name: org, ms: ms, wg: workgroups.WorkgroupID{Org: org, Name: "stream"}}
	var orgResp api.CreateOrgResponse
	o.step("create org "+org, 30*time.Second, func(ctx context.Context) error {
		var err error
		orgResp, err = platform.Controller().CreateOrg(ctx, org)
		return err
	})
	o.admin = o.enroll("admin", orgResp.AdminToken, orgResp.AdminID, ms[adminAt])
	o.step("create workgroup", 30*time.Second, func(ctx context.Context) error {
		_, err := o.admin.Controller().CreateWorkgroup(ctx, o.wg.Name)
		return err
	})
	return o
}

func (o *clusterOrg) step(name string, limit time.Duration, fn func(ctx context.Context) error) {
	o.t.Helper()
	retryFor(o.t, o.name+": "+name, limit, fn)
}

// enroll redeems token for sid at member m and connects the identity.
func (o *clusterOrg) enroll(name, token, sid string, m *member) *agentsdk.Agent {
	o.t.Helper()
	path := filepath.Join(o.dir, o.name+"-"+name+".json")
	o.step("enroll "+name+" at "+m.name, 30*time.Second, func(ctx context.Context) error {
		id, _, err := enrollAt(ctx, filepath.Join(o.dir, m.name), m.enroll, token, sid)
		if err != nil {
			return err
		}
		return id.Save(path)
	})
	return connectFile(o.t, path)
}

// agent creates agent name of the organisation, enrolls it at member at, which it is then authenticated
// through, and adds it to the workgroup.
func (o *clusterOrg) agent(name string, at int) *agentsdk.Agent {
	o.t.Helper()
	var resp api.CreateIdentityResponse
	o.step("create "+name, 30*time.Second, func(ctx context.Context) error {
		var err error
		resp, err = o.admin.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: o.name, Kind: "agent", Name: name})
		return err
	})
	a := o.enroll(name, resp.Token, resp.SPIFFEID, o.ms[at])
	o.step("add "+name+" to the workgroup", 30*time.Second, func(ctx context.Context) error {
		_, err := o.admin.Controller().AddMember(ctx, o.wg, a.ID(), "")
		return err
	})
	return a
}

// clusterSession creates organisation org with the platform administrator, a workgroup, a provider enrolled at
// member other and a consumer enrolled at member via (each member's data directory under dir), advertises the
// provider's service of message type "tick" on terms, and opens a session between them. It returns the two
// agents and their handles on the session.
func clusterSession(t testing.TB, dir, org string, platform *agentsdk.Agent, ms []*member, via, other int, terms workgroups.Terms) (consumer, provider *agentsdk.Agent, sess, prov *agentsdk.Session) {
	t.Helper()
	o := newClusterOrg(t, dir, org, platform, ms, other)
	consumer, provider = o.agent("stream-consumer", via), o.agent("stream-provider", other)
	o.step("advertise, propose, open the session", time.Minute, func(ctx context.Context) error {
		ad, err := provider.Advertise(ctx, workgroups.AgentCard{Name: "Stream", Version: "1", MessageTypes: []string{"tick"}}, terms, o.wg)
		if err != nil {
			return fmt.Errorf("advertise: %w", err)
		}
		if sess, err = consumer.Propose(ctx, ad.ID, workgroups.Proposal{}); err != nil {
			return fmt.Errorf("propose: %w", err)
		}
		if prov, err = provider.Session(ctx, sess.ID()); err != nil {
			return fmt.Errorf("provider opens the session: %w", err)
		}
		return nil
	})
	return consumer, provider, sess, prov
}

// startClusterStream opens a session as clusterSession does and starts sending envelopes on it, each retried
// with its ID until acknowledged, and receiving them. It returns once both have moved a few envelopes.
func startClusterStream(t *testing.T, dir, org string, platform *agentsdk.Agent, ms []*member, via, other int) *clusterStream {
	t.Helper()
	consumer, provider, sess, prov := clusterSession(t, dir, org, platform, ms, via, other, workgroups.Terms{
		MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 1 << 20, AllowedMessageTypes: []string{"tick"}, MaxEnvelopeBytes: 1024})

	ctx, stopSend := context.WithCancel(context.Background())
	rctx, stopRecv := context.WithCancel(context.Background())
	s := &clusterStream{t: t, stopSend: stopSend, stopRecv: stopRecv, sender: &activity{name: "send"}, receiver: &activity{name: "receive"},
		stopped: make(chan error, 1), session: sess.ID().String(), acked: map[workgroups.EnvelopeID]bool{}, sent: map[workgroups.EnvelopeID]bool{}, received: map[workgroups.EnvelopeID]int{}}
	t.Cleanup(func() { stopSend(); stopRecv(); s.sending.Wait(); s.receiving.Wait() })
	s.sending.Add(1)
	go func() {
		defer s.sending.Done()
		for i := 0; ctx.Err() == nil; i++ {
			id, err := workgroups.NewEnvelopeID(rand.Reader)
			if err != nil {
				s.stopped <- err
				return
			}
			payload := []byte(fmt.Sprintf(`{"n":%d}`, i))
			h := workgroups.Header{ID: id, Session: sess.ID(), From: consumer.ID(), To: provider.ID(), Type: "tick",
				Time: time.Now().UTC(), ContentType: "application/json"}.WithPayload(payload)
			s.mu.Lock()
			s.sent[id] = true
			s.mu.Unlock()
			for ctx.Err() == nil {
				sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				_, err := sess.SendEnvelope(sctx, h, payload)
				cancel()
				if err == nil {
					s.mu.Lock()
					s.acked[id] = true
					s.mu.Unlock()
					s.sender.success()
					break
				}
				if ctx.Err() != nil {
					return
				}
				if errors.Is(err, agentsdk.ErrContractViolation) {
					s.stopped <- err
					return
				}
				s.sender.fail(err)
				pause(ctx, 100*time.Millisecond)
			}
			pause(ctx, 20*time.Millisecond)
		}
	}()
	s.receiving.Add(1)
	go func() {
		defer s.receiving.Done()
		for rctx.Err() == nil {
			actx, cancel := context.WithTimeout(rctx, 3*time.Second)
			env, err := prov.Receive(actx)
			cancel()
			if err == nil {
				s.mu.Lock()
				s.received[env.Header.ID]++
				s.mu.Unlock()
				s.receiver.success()
				continue
			}
			if rctx.Err() == nil {
				s.receiver.fail(err)
				pause(rctx, 100*time.Millisecond)
			}
		}
	}()
	warm := time.Now().Add(30 * time.Second)
	for s.sender.count() < 5 || s.receiver.count() < 5 {
		s.checkRunning()
		if time.Now().After(warm) {
			t.Fatalf("stream: no traffic within 30 s: %d sent, %d received; %s", s.sender.count(), s.receiver.count(),
				errorsOf([]*activity{s.sender, s.receiver}, warm.Add(-30*time.Second)))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s
}

func (s *clusterStream) checkRunning() {
	s.t.Helper()
	select {
	case err := <-s.stopped:
		s.t.Fatalf("stream: the sender stopped: %v", err)
	default:
	}
}

// streamRecovery bounds how long after a member's death the session must carry envelopes again. Sending resumes
// within a second (the envelope store publishes again what the dead stream leader did not answer); receiving waits
// for the recipient's cursor to elect a new leader, which JetStream does within 4-9 s (docs/cluster.md). The
// bound leaves room for a loaded machine.
const streamRecovery = 25 * time.Second

// afterKill waits until both the sender and the receiver have moved an envelope after killed, which must happen
// within streamRecovery of it, lets them run one more second, stops sending, and checks that every acknowledged envelope
// is received, each exactly once. It returns what it measured.
func (s *clusterStream) afterKill(killed time.Time) string {
	s.t.Helper()
	loops := []*activity{s.sender, s.receiver}
	for s.sender.last().Before(killed) || s.receiver.last().Before(killed) {
		s.checkRunning()
		if time.Since(killed) > streamRecovery {
			s.t.Fatalf("stream: no envelope sent and received within %s of the kill; failures since: %s", streamRecovery, errorsOf(loops, killed))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second)
	end := time.Now()
	s.stopSend()
	s.sending.Wait()
	missing := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		n := 0
		for id := range s.acked {
			if s.received[id] == 0 {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(10 * time.Second); missing() > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	s.stopRecv()
	s.receiving.Wait()
	var report []string
	for _, a := range loops {
		longest, first := a.stall(killed, end)
		report = append(report, fmt.Sprintf("%s: first after the kill %s, longest stall %s, %d in all", a.name,
			first.Round(time.Millisecond), longest.Round(time.Millisecond), a.count()))
	}
	if n := missing(); n > 0 {
		s.t.Errorf("stream: %d of %d acknowledged envelopes never received", n, len(s.acked))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, n := range s.received {
		if n != 1 {
			s.t.Errorf("stream: envelope %s received %d times", id, n)
		}
	}
	return fmt.Sprintf("%d envelopes acknowledged, %d received, each once; %s", len(s.acked), len(s.received), strings.Join(report, "; "))
}
