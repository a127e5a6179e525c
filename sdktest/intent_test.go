package sdktest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// A provider whose terms require a declared intent: a proposal without one is refused, one with an intent is
// accepted by the contract; every envelope then needs an intent too (the SDK stamps the session's), a contract
// condition forbids one category on the wire, and `umbra audit session` shows the intent of the session and of
// every envelope.
func TestIntentRequiredEndToEnd(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	terms := defaultTerms()
	terms.RequireIntent = true
	terms.Conditions = `@id("no-exfiltration")
forbid (principal, action == Umbra::Action::"send", resource) when { context has intent && context.intent.category == "exfiltration" };`
	w := newPricingWorld(t, terms)

	if _, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{}); !errors.Is(err, agentsdk.ErrRejected) || !strings.Contains(err.Error(), "require_intent") {
		t.Fatalf("proposal without intent: %v, want rejected naming require_intent", err)
	}
	bad := &workgroups.Intent{Purpose: "two\nlines"}
	if _, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{Intent: bad}); err == nil {
		t.Fatal("proposal with a malformed intent accepted")
	}

	intent := workgroups.Intent{Purpose: "restock widgets for the Lyon shop", Category: "procurement"}
	s, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{Intent: &intent})
	if err != nil {
		t.Fatalf("proposal with intent: %v", err)
	}
	if got := s.Info(); got.State != workgroups.StateAccepted || got.Intent == nil || *got.Intent != intent {
		t.Fatalf("session %s with intent %+v", got.State, got.Intent)
	}
	sid := s.Info().ID

	// The SDK declares the session's intent on what it sends.
	if _, err := s.Send(ctx, "quote.request", []byte(`{"widgets":10}`)); err != nil {
		t.Fatalf("send with the session's intent: %v", err)
	}
	// An envelope without one is refused by the relay, whatever the sender's SDK does.
	h := envelope(t, sid, w.buyer.ID(), w.quoter.ID(), "quote.request", []byte(`{}`))
	var re *agentsdk.RelayError
	if _, err := s.SendEnvelope(ctx, h, []byte(`{}`)); !errors.As(err, &re) || re.Code != string(workgroups.ViolationIntentRequired) {
		t.Fatalf("envelope without intent: %v, want %s", err, workgroups.ViolationIntentRequired)
	}
	// The contract's condition sees the envelope's own declaration.
	if _, err := s.Send(ctx, "quote.request", []byte(`{}`), agentsdk.WithIntent("copy the price list", "exfiltration")); !errors.As(err, &re) || re.Code != "policy_denied" {
		t.Fatalf("exfiltration envelope: %v, want policy_denied", err)
	}
	// The provider's handle on the session carries the intent, and so do its replies.
	ps, err := w.quoter.Session(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ps.Send(ctx, "quote.response", []byte(`{"price":42}`)); err != nil {
		t.Fatalf("provider reply: %v", err)
	}

	// What `umbra audit session` prints: the session's intent, every envelope's, and the records'.
	eventually(t, "intent in the audit trail", func() error { return intentAudited(ctx, w.buyer, sid, intent) })
}

func intentAudited(ctx context.Context, a *agentsdk.Agent, sid workgroups.SessionID, intent workgroups.Intent) error {
	trail, err := a.Controller().AuditSession(ctx, sid)
	if err != nil {
		return err
	}
	if trail.Session.Intent == nil || *trail.Session.Intent != intent {
		return fmt.Errorf("audit session: intent %+v", trail.Session.Intent)
	}
	if len(trail.Envelopes) != 2 {
		return fmt.Errorf("audit session: %d envelopes, want 2", len(trail.Envelopes))
	}
	for _, e := range trail.Envelopes {
		if e.Intent == nil || *e.Intent != intent {
			return fmt.Errorf("envelope %d: intent %+v", e.Seq, e.Intent)
		}
	}
	kinds := map[string]int{}
	for _, raw := range trail.Records {
		var r struct {
			Kind   string `json:"kind"`
			Reason string `json:"reason"`
			Data   struct {
				Intent *workgroups.Intent `json:"intent"`
			} `json:"data"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		switch {
		case r.Kind == "session.transition" || r.Kind == "envelope.accepted":
			if r.Data.Intent == nil || *r.Data.Intent != intent {
				return fmt.Errorf("%s record without the intent: %s", r.Kind, raw)
			}
		case r.Kind == "envelope.rejected" && strings.HasPrefix(r.Reason, "policy_denied"):
			if r.Data.Intent == nil || r.Data.Intent.Category != "exfiltration" {
				return fmt.Errorf("refusal record without the refused intent: %s", raw)
			}
		}
		kinds[r.Kind]++
	}
	if kinds["session.transition"] == 0 || kinds["envelope.accepted"] != 2 || kinds["envelope.rejected"] != 2 {
		return fmt.Errorf("audit records by kind: %v", kinds)
	}
	return nil
}

// Organisation policies on a real network: acme's administrator forbids proposals that declare exfiltration; such a
// proposal is refused naming the policy, another is accepted; globex's administrator cannot set, list or remove
// acme's policies; a rejected text leaves the stored one in force; after removal the refused proposal is
// accepted; and a policy forbidding a message type on `send` refuses the next envelope of a session already open.
func TestOrgPolicies(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := newPricingWorld(t, defaultTerms())
	acme := w.wg.Org
	admin := w.acme.Controller()
	const noExfil = `@id("no-exfiltration")
forbid (principal, action == Umbra::Action::"propose", resource)
when { context has intent && context.intent.category == "exfiltration" };`
	set, err := admin.SetPolicy(ctx, acme, "no-exfil", noExfil)
	if err != nil {
		t.Fatalf("acme's administrator sets a policy: %v", err)
	}
	if set.Org != acme || set.Name != "no-exfil" || len(set.SHA256) != 64 || set.SetBy != w.acme.ID().String() {
		t.Fatalf("set policy: %+v", set)
	}

	exfil := workgroups.Intent{Purpose: "copy the price list", Category: "exfiltration"}
	var ae *agentsdk.APIError
	_, err = w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{Intent: &exfil})
	policyID := "org/" + acme + "/no-exfil/no-exfiltration"
	if !errors.As(err, &ae) || ae.Status != 403 || !strings.Contains(ae.Message, policyID) {
		t.Fatalf("exfiltration proposal: %v, want 403 naming %s", err, policyID)
	}
	procure := workgroups.Intent{Purpose: "restock widgets", Category: "procurement"}
	s, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{Intent: &procure})
	if err != nil || s.Info().State != workgroups.StateAccepted {
		t.Fatalf("procurement proposal: %v", err)
	}

	// Another organisation's administrator: 403 on each.
	other := w.globex.Controller()
	if _, err := other.SetPolicy(ctx, acme, "mine", noExfil); !errors.As(err, &ae) || ae.Status != 403 {
		t.Fatalf("globex sets acme's policy: %v, want 403", err)
	}
	if _, err := other.Policies(ctx, acme); !errors.As(err, &ae) || ae.Status != 403 {
		t.Fatalf("globex lists acme's policies: %v, want 403", err)
	}
	if _, err := other.RemovePolicy(ctx, acme, "no-exfil"); !errors.As(err, &ae) || ae.Status != 403 {
		t.Fatalf("globex removes acme's policy: %v, want 403", err)
	}

	// A permit is refused with a 400 naming what is wrong, and the stored policy stays.
	if _, err := admin.SetPolicy(ctx, acme, "no-exfil", `permit (principal, action, resource);`); !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Message, "only forbid") {
		t.Fatalf("a permit: %v, want 400 naming forbid-only", err)
	}
	ps, err := admin.Policies(ctx, "")
	if err != nil || len(ps) != 1 || ps[0].SHA256 != set.SHA256 {
		t.Fatalf("acme's policies after a rejected set: %+v %v", ps, err)
	}
	if _, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{Intent: &exfil}); err == nil {
		t.Fatal("exfiltration proposal accepted after a rejected set")
	}

	if _, err := admin.RemovePolicy(ctx, acme, "no-exfil"); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if ps, err := admin.Policies(ctx, acme); err != nil || len(ps) != 0 {
		t.Fatalf("acme's policies after removal: %+v %v", ps, err)
	}
	if _, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{Intent: &exfil}); err != nil {
		t.Fatalf("exfiltration proposal after removal: %v", err)
	}

	// `send` in the session opened above: the relay decides each envelope with the policies of the moment.
	if _, err := s.Send(ctx, "quote.request", []byte(`{"widgets":1}`)); err != nil {
		t.Fatalf("send before the policy: %v", err)
	}
	if _, err := admin.SetPolicy(ctx, acme, "no-requests", `forbid (principal, action == Umbra::Action::"send", resource)
when { context.message_type == "quote.request" };`); err != nil {
		t.Fatal(err)
	}
	var re *agentsdk.RelayError
	if _, err := s.Send(ctx, "quote.request", []byte(`{"widgets":2}`)); !errors.As(err, &re) || re.Code != "policy_denied" {
		t.Fatalf("send after the policy: %v, want policy_denied", err)
	}
	if _, err := admin.RemovePolicy(ctx, acme, "no-requests"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Send(ctx, "quote.request", []byte(`{"widgets":3}`)); err != nil {
		t.Fatalf("send after the policy's removal: %v", err)
	}
}
