package sdktest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// orgAdmin creates an organisation and connects its administrator.
func orgAdmin(t testing.TB, org string) *agentsdk.Agent {
	t.Helper()
	ctx := context.Background()
	resp, err := env.Admin().Controller().CreateOrg(ctx, org)
	if err != nil {
		t.Fatal(err)
	}
	id, err := agentsdk.Enroll(ctx, resp.AdminToken)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agentsdk.Connect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// orgAgent creates and connects an agent of org through its administrator.
func orgAgent(t testing.TB, admin *agentsdk.Agent, org, name string) *agentsdk.Agent {
	t.Helper()
	ctx := context.Background()
	resp, err := admin.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: org, Kind: "agent", Name: name})
	if err != nil {
		t.Fatal(err)
	}
	id, err := agentsdk.Enroll(ctx, resp.Token)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agentsdk.Connect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

type pricingWorld struct {
	acme, globex, initech  *agentsdk.Agent // org admins
	quoter, buyer, outside *agentsdk.Agent
	wg                     workgroups.WorkgroupID
	ad                     workgroups.Advertisement
}

var worldSeq atomic.Int32

// newPricingWorld builds: acme owns inter-org workgroup "pricing" with globex; acme's quoter advertises in it;
// globex's buyer is a member; initech's outsider is in no shared workgroup.
func newPricingWorld(t testing.TB, terms workgroups.Terms) pricingWorld {
	t.Helper()
	ctx := context.Background()
	n := worldSeq.Add(1)
	w := pricingWorld{}
	acmeOrg, globexOrg, initechOrg := fmt.Sprintf("acme%d", n), fmt.Sprintf("globex%d", n), fmt.Sprintf("initech%d", n)
	w.acme, w.globex, w.initech = orgAdmin(t, acmeOrg), orgAdmin(t, globexOrg), orgAdmin(t, initechOrg)
	w.quoter = orgAgent(t, w.acme, acmeOrg, "quoter")
	w.buyer = orgAgent(t, w.globex, globexOrg, "buyer")
	w.outside = orgAgent(t, w.initech, initechOrg, "outsider")

	v, err := w.acme.Controller().CreateWorkgroup(ctx, "pricing", globexOrg)
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != workgroups.StatusPending {
		t.Fatalf("inter-org workgroup before acceptance: status %s", v.Status)
	}
	w.wg = v.ID
	if v, err = w.globex.Controller().AnswerInvitation(ctx, w.wg, false); err != nil || v.Status != workgroups.StatusActive {
		t.Fatalf("accept: %v %v", v.Status, err)
	}
	if _, err := w.acme.Controller().AddMember(ctx, w.wg, w.quoter.ID(), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := w.globex.Controller().AddMember(ctx, w.wg, w.buyer.ID(), ""); err != nil {
		t.Fatal(err)
	}
	card := workgroups.AgentCard{Name: "Quoter", Description: "prices widgets", Version: "1.0",
		Skills: []workgroups.Skill{{ID: "quote", Name: "Quote", Tags: []string{"pricing"}}}, MessageTypes: []string{"quote.*"}}
	if w.ad, err = w.quoter.Advertise(ctx, card, terms, w.wg); err != nil {
		t.Fatal(err)
	}
	return w
}

func defaultTerms() workgroups.Terms {
	return workgroups.Terms{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 10,
		AllowedMessageTypes: []string{"quote.request", "quote.response"}, MaxEnvelopeBytes: 4096}
}

func TestGovernanceDiscoveryIsScoped(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx := context.Background()
	w := newPricingWorld(t, defaultTerms())
	ads, err := w.buyer.Discover(ctx, api.DiscoverRequest{Skill: "quote"})
	if err != nil || len(ads) != 1 || ads[0].ID != w.ad.ID {
		t.Fatalf("member discovery = %v, %v", ads, err)
	}
	ads, err = w.outside.Discover(ctx, api.DiscoverRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ad := range ads {
		if ad.ID == w.ad.ID {
			t.Fatal("outsider discovered an advertisement outside its workgroups")
		}
	}
	// Proposing on an advertisement it cannot see looks exactly like proposing on one that does not exist.
	_, errHidden := w.outside.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	missing, _ := workgroups.NewAdvertisementID(zeroReader{})
	_, errMissing := w.outside.Propose(ctx, missing, workgroups.Proposal{})
	var a, b *agentsdk.APIError
	if !errors.As(errHidden, &a) || !errors.As(errMissing, &b) || a.Code != b.Code || a.Status != b.Status || a.Code != api.CodeNotFound {
		t.Fatalf("hidden: %v; missing: %v", errHidden, errMissing)
	}
	// And the overlay agrees: the advertisement's service is invisible to the outsider, visible to the buyer.
	svcs, err := w.outside.Services()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s == "a2a."+w.ad.ID.String() {
			t.Fatal("outsider sees the advertisement's overlay service")
		}
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 7
	}
	return len(p), nil
}

func TestGovernanceSessionLifecycle(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := newPricingWorld(t, defaultTerms())

	// Outside the terms: rejected with the reason.
	if _, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{MaxMessages: 1000}); !errors.Is(err, agentsdk.ErrRejected) {
		t.Fatalf("proposal over the terms: %v", err)
	}
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{MaxMessages: 4})
	if err != nil {
		t.Fatal(err)
	}
	if sess.Info().State != workgroups.StateAccepted {
		t.Fatalf("state %s", sess.Info().State)
	}
	seq, err := sess.Send(ctx, "quote.request", []byte(`{"sku":"w-1"}`))
	if err != nil || seq != 1 {
		t.Fatalf("send: seq %d err %v", seq, err)
	}
	// A type outside the contract is refused on the wire, and recorded.
	if _, err := sess.Send(ctx, "order.place", []byte(`{}`)); !errors.Is(err, agentsdk.ErrContractViolation) {
		t.Fatalf("disallowed type: %v", err)
	}
	provider, err := w.quoter.Session(ctx, sess.ID())
	if err != nil {
		t.Fatal(err)
	}
	in, err := provider.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if in.Header.From != w.buyer.ID() || string(in.Payload) != `{"sku":"w-1"}` || in.Header.Seq != 1 {
		t.Fatalf("received %+v %s", in.Header, in.Payload)
	}
	if _, err := provider.Send(ctx, "quote.response", []byte(`{"price":42}`), agentsdk.WithCorrelationID(in.Header.ID.String())); err != nil {
		t.Fatal(err)
	}
	out, err := sess.Receive(ctx)
	if err != nil || string(out.Payload) != `{"price":42}` || out.Header.CorrelationID != in.Header.ID.String() {
		t.Fatalf("reply: %+v %v", out, err)
	}
	// Two more reach max_messages 4: the session closes itself.
	for i := 0; i < 2; i++ {
		if _, err := sess.Send(ctx, "quote.request", []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := sess.Send(ctx, "quote.request", []byte(`{}`)); !errors.Is(err, agentsdk.ErrContractViolation) {
		t.Fatalf("over the limit: %v", err)
	}
	view, err := sess.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if view.State != workgroups.StateClosed || view.CloseReason != workgroups.CloseMaxMessages || view.Envelopes != 4 {
		t.Fatalf("after limit: state %s reason %s envelopes %d", view.State, view.CloseReason, view.Envelopes)
	}
	rec, err := w.acme.Controller().AuditSession(ctx, sess.ID())
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Envelopes) != 4 {
		t.Fatalf("audit has %d envelopes", len(rec.Envelopes))
	}
	rep, err := env.Admin().Controller().AuditVerify(ctx)
	if err != nil || !rep.OK {
		t.Fatalf("audit verify: %+v %v", rep, err)
	}
}

func TestGovernanceExactLimitUnderRace(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	terms := defaultTerms()
	terms.MaxMessages = 100
	w := newPricingWorld(t, terms)
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	var ok, refused atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := w.buyer.Session(ctx, sess.ID())
			if err != nil {
				t.Error(err)
				return
			}
			for j := 0; j < 3; j++ {
				_, err := h.Send(ctx, "quote.request", []byte(`{}`))
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, agentsdk.ErrContractViolation):
					refused.Add(1)
				default:
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 100 || refused.Load() != 50 {
		t.Fatalf("accepted %d refused %d, want 100 and 50", ok.Load(), refused.Load())
	}
}

func TestGovernanceDurationExpiry(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	terms := defaultTerms()
	terms.MaxDuration = workgroups.Duration(2 * time.Second)
	w := newPricingWorld(t, terms)
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := sess.Info().Deadline()
	for {
		v, err := sess.Refresh(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v.State == workgroups.StateClosed {
			closedAt := v.History[len(v.History)-1].At
			if v.CloseReason != workgroups.CloseExpired || closedAt.Sub(deadline) > time.Second || closedAt.Before(deadline) {
				t.Fatalf("closed %s at %s, deadline %s", v.CloseReason, closedAt, deadline)
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := sess.Send(ctx, "quote.request", nil); !errors.Is(err, agentsdk.ErrContractViolation) {
		t.Fatalf("send after expiry: %v", err)
	}
}

func TestGovernanceMembershipRemovalClosesSessions(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := newPricingWorld(t, defaultTerms())
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.globex.Controller().RemoveMember(ctx, w.wg, w.buyer.ID()); err != nil {
		t.Fatal(err)
	}
	v, err := sess.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.State != workgroups.StateClosed || v.CloseReason != workgroups.CloseMembershipRemoved {
		t.Fatalf("after removal: %s %s", v.State, v.CloseReason)
	}
	if ads, _ := w.buyer.Discover(ctx, api.DiscoverRequest{}); len(ads) != 0 {
		t.Fatalf("removed member still discovers %d advertisements", len(ads))
	}
}

func TestGovernanceHeldForProvider(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	terms := defaultTerms()
	terms.HoldForProvider = true
	w := newPricingWorld(t, terms)
	// Within the terms: accepted without the provider.
	if s, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{MaxMessages: 2}); err != nil || s.Info().State != workgroups.StateAccepted {
		t.Fatalf("within terms: %v", err)
	}
	// Outside: held for the provider, who decides.
	held, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{MaxMessages: 50})
	if err != nil || held.Info().State != workgroups.StateHeld {
		t.Fatalf("outside terms with hold: %v", err)
	}
	if _, err := held.Send(ctx, "quote.request", []byte(`{}`)); !errors.Is(err, agentsdk.ErrContractViolation) {
		t.Fatalf("send on a held session: %v", err)
	}
	// Only the provider may answer.
	if _, err := w.buyer.Accept(ctx, held.ID(), "me"); err == nil {
		t.Fatal("the consumer accepted its own proposal")
	}
	ctxOn, stop := context.WithCancel(ctx)
	go w.quoter.OnProposal(ctxOn, 100*time.Millisecond, func(s workgroups.Session) (bool, string) {
		return s.Contract.MaxMessages <= 50, "volume approved"
	})
	defer stop()
	for {
		v, err := held.Refresh(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v.State == workgroups.StateAccepted {
			if v.Contract.MaxMessages != 50 {
				t.Fatalf("frozen contract max_messages %d", v.Contract.MaxMessages)
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := held.Send(ctx, "quote.request", []byte(`{}`)); err != nil {
		t.Fatalf("send after the provider accepted: %v", err)
	}
}

func TestGovernanceWorkgroupDeletionClosesSessions(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := newPricingWorld(t, defaultTerms())
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	// Only the owner organisation's administrator deletes it.
	if err := w.globex.Controller().DeleteWorkgroup(ctx, w.wg); err == nil {
		t.Fatal("an invited organisation deleted the workgroup")
	}
	if err := w.acme.Controller().DeleteWorkgroup(ctx, w.wg); err != nil {
		t.Fatal(err)
	}
	v, err := sess.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.State != workgroups.StateClosed || v.CloseReason != workgroups.CloseWorkgroupDeleted {
		t.Fatalf("after deletion: %s %s", v.State, v.CloseReason)
	}
	if ads, _ := w.buyer.Discover(ctx, api.DiscoverRequest{}); len(ads) != 0 {
		t.Fatalf("advertisement still discoverable after its only workgroup was deleted: %d", len(ads))
	}
	svcs, err := w.buyer.Services()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s == "a2a."+w.ad.ID.String() {
			t.Fatal("the advertisement's overlay service is still visible")
		}
	}
}
