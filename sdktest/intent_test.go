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
