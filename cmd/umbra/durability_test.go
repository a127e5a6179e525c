package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// connectFile loads and connects an identity file, closing the agent when the test ends.
func connectFile(t testing.TB, path string) *agentsdk.Agent {
	t.Helper()
	id, err := agentsdk.LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var opts []agentsdk.Option
	if os.Getenv("UMBRA_TEST_SDKLOG") != "" {
		opts = append(opts, agentsdk.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("agent", filepath.Base(path))))
	}
	a, err := agentsdk.Connect(ctx, id, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func enrollTo(t *testing.T, token, path string) {
	t.Helper()
	id, err := agentsdk.Enroll(context.Background(), token)
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Save(path); err != nil {
		t.Fatal(err)
	}
}

// retry runs fn until it succeeds or a minute passes (the controller API comes back a moment after restart).
func retry(t *testing.T, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestDurabilityProcessKill kills the controller process (SIGKILL) in the middle of a stream of sends. After a
// restart every envelope the sender saw acknowledged is stored and delivered exactly once, a retry of an
// envelope in flight at the kill is not stored twice, and an envelope that was refused is not stored at all.
func TestDurabilityProcessKill(t *testing.T) {
	c := newCLI(t, 6*time.Minute)
	args, _ := devArgs(t, "data")
	dev := c.start("umbra dev ready", args...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	path := func(n string) string { return filepath.Join(c.dir, n) }

	c.limit.Step("set up organisations, agents and a session")
	admin := connectFile(t, path("data/admin.json"))
	var quoterFile, buyerFile = path("quoter.json"), path("buyer.json")
	retry(t, "setup", func() error {
		_, err := admin.Controller().WhoAmI(ctx)
		return err
	})
	for _, org := range []string{"acme", "globex"} {
		resp, err := admin.Controller().CreateOrg(ctx, org)
		if err != nil {
			t.Fatal(err)
		}
		enrollTo(t, resp.AdminToken, path(org+"-admin.json"))
	}
	acme, globex := connectFile(t, path("acme-admin.json")), connectFile(t, path("globex-admin.json"))
	for _, x := range []struct {
		admin     *agentsdk.Agent
		org, file string
	}{{acme, "acme", quoterFile}, {globex, "globex", buyerFile}} {
		resp, err := x.admin.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: x.org, Kind: "agent", Name: filepath.Base(x.file[:len(x.file)-5])})
		if err != nil {
			t.Fatal(err)
		}
		enrollTo(t, resp.Token, x.file)
	}
	quoter, buyer := connectFile(t, quoterFile), connectFile(t, buyerFile)
	if _, err := acme.Controller().CreateWorkgroup(ctx, "pricing", "globex"); err != nil {
		t.Fatal(err)
	}
	if _, err := globex.Controller().AnswerInvitation(ctx, pricingWG(), false); err != nil {
		t.Fatal(err)
	}
	if _, err := acme.Controller().AddMember(ctx, pricingWG(), quoter.ID(), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := globex.Controller().AddMember(ctx, pricingWG(), buyer.ID(), ""); err != nil {
		t.Fatal(err)
	}
	ad, err := quoter.Advertise(ctx, workgroups.AgentCard{Name: "Quoter", Version: "1", MessageTypes: []string{"quote.*"}},
		workgroups.Terms{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 10000, AllowedMessageTypes: []string{"quote.request"}, MaxEnvelopeBytes: 1024}, pricingWG())
	if err != nil {
		t.Fatal(err)
	}
	sess, err := buyer.Propose(ctx, ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	envelope := func(i int, typ string) (workgroups.Header, []byte) {
		id, err := workgroups.NewEnvelopeID(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		payload := []byte(fmt.Sprintf(`{"n":%d}`, i))
		return workgroups.Header{ID: id, Session: sess.ID(), From: buyer.ID(), To: quoter.ID(), Type: typ,
			Time: time.Now().UTC(), ContentType: "application/json"}.WithPayload(payload), payload
	}
	// A refused envelope must never appear.
	refusedH, refusedP := envelope(-1, "order.place")
	if _, err := sess.SendEnvelope(ctx, refusedH, refusedP); !errors.Is(err, agentsdk.ErrContractViolation) {
		t.Fatalf("disallowed type: %v", err)
	}

	c.limit.Step("send a stream and kill the controller in the middle")
	acked := map[workgroups.EnvelopeID]bool{}
	var inFlight []struct {
		h workgroups.Header
		p []byte
	}
	killed := false
	for i := 0; i < 400 && len(inFlight) == 0; i++ {
		if i == 60 {
			// Kill while the sender keeps going: the next sends fail mid-flight.
			go func() { dev.kill(); killed = true }()
		}
		h, p := envelope(i, "quote.request")
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := sess.SendEnvelope(sctx, h, p)
		scancel()
		if err != nil {
			inFlight = append(inFlight, struct {
				h workgroups.Header
				p []byte
			}{h, p})
			continue
		}
		acked[h.ID] = true
	}
	if len(inFlight) == 0 || len(acked) < 60 {
		t.Fatalf("kill did not interrupt the stream: %d acked, killed %v", len(acked), killed)
	}
	t.Logf("%d envelopes acknowledged before the kill", len(acked))

	c.start("umbra dev ready", args...)
	buyer2, quoter2 := connectFile(t, buyerFile), connectFile(t, quoterFile)
	var bs, qs *agentsdk.Session
	retry(t, "reopen sessions", func() error {
		var err error
		if bs, err = buyer2.Session(ctx, sess.ID()); err != nil {
			return err
		}
		qs, err = quoter2.Session(ctx, sess.ID())
		return err
	})
	// The envelope in flight at the kill is retried with its ID: stored at most once.
	c.limit.Step("retry the envelopes in flight at the kill")
	for _, f := range inFlight {
		retry(t, "retry in-flight envelope", func() error {
			_, err := bs.SendEnvelope(ctx, f.h, f.p)
			return err
		})
		acked[f.h.ID] = true
	}
	c.limit.Step("read the session's audit trail")
	var trail api.SessionAudit
	retry(t, "audit session", func() error {
		var err error
		trail, err = acme.Controller().AuditSession(ctx, sess.ID())
		if err != nil {
			acme = connectFile(t, path("acme-admin.json"))
		}
		return err
	})
	stored := map[workgroups.EnvelopeID]int{}
	for _, h := range trail.Envelopes {
		stored[h.ID]++
	}
	for id := range acked {
		if stored[id] != 1 {
			t.Errorf("acknowledged envelope %s stored %d times", id, stored[id])
		}
	}
	if stored[refusedH.ID] != 0 {
		t.Error("a refused envelope was stored")
	}
	if len(trail.Envelopes) != len(acked) {
		t.Errorf("stream holds %d envelopes, %d were acknowledged", len(trail.Envelopes), len(acked))
	}
	// Every stored envelope has exactly one envelope.accepted record, whatever the kill interrupted.
	audited := map[workgroups.EnvelopeID]int{}
	for _, raw := range trail.Records {
		var r struct {
			Kind string
			Data struct {
				ID workgroups.EnvelopeID `json:"id"`
			}
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		if r.Kind == "envelope.accepted" {
			audited[r.Data.ID]++
		}
	}
	for id, n := range stored {
		if audited[id] != n {
			t.Errorf("stored envelope %s has %d envelope.accepted records", id, audited[id])
		}
	}
	if len(audited) != len(stored) {
		t.Errorf("%d envelopes audited as accepted, %d stored", len(audited), len(stored))
	}
	// Delivery after the restart: every envelope exactly once, in order.
	c.limit.Step("receive every acknowledged envelope")
	got := map[workgroups.EnvelopeID]bool{}
	var last uint64
	for len(got) < len(acked) {
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		env, err := qs.Receive(rctx)
		rcancel()
		if err != nil {
			t.Fatalf("receive after %d: %v", len(got), err)
		}
		if got[env.Header.ID] || env.Header.Seq <= last {
			t.Fatalf("envelope %s (seq %d) delivered twice or out of order", env.Header.ID, env.Header.Seq)
		}
		got[env.Header.ID], last = true, env.Header.Seq
	}
	for id := range acked {
		if !got[id] {
			t.Errorf("acknowledged envelope %s never delivered", id)
		}
	}
}
