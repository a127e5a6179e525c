package sdktest

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// controllerMaxPendingProposals is the controller's default cap on one identity's proposals awaiting their
// providers; the test network runs with the defaults.
const controllerMaxPendingProposals = 64

// TestProposalFloodIsCapped has a member propose, through the SDK, more held proposals than the controller lets one
// identity have: past the cap every proposal is refused with 429 too_many_proposals, saying what to do, and the
// provider answering one makes room for exactly one more.
func TestProposalFloodIsCapped(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx := context.Background()
	terms := defaultTerms()
	terms.HoldForProvider = true
	w := newPricingWorld(t, terms)
	outside := workgroups.Proposal{MaxMessages: 100} // more than the terms offer: held for the provider

	var held []*agentsdk.Session
	t.Cleanup(func() {
		for _, s := range held {
			_ = w.quoter.Reject(context.Background(), s.ID(), "test over")
		}
	})
	for i := range controllerMaxPendingProposals {
		s, err := w.buyer.Propose(ctx, w.ad.ID, outside)
		if err != nil {
			t.Fatalf("proposal %d of %d: %v", i+1, controllerMaxPendingProposals, err)
		}
		if s.Info().State != workgroups.StateHeld {
			t.Fatalf("proposal %d in state %s, want held", i+1, s.Info().State)
		}
		held = append(held, s)
	}
	over := func() {
		t.Helper()
		_, err := w.buyer.Propose(ctx, w.ad.ID, outside)
		var apiErr *agentsdk.APIError
		if !errors.As(err, &apiErr) || apiErr.Status != http.StatusTooManyRequests || apiErr.Code != api.CodeTooManyProposals ||
			!strings.Contains(apiErr.Message, "ask the operator to raise the limit") {
			t.Fatalf("proposal over the cap: %v, want 429 too_many_proposals saying what to do", err)
		}
	}
	for range 20 {
		over()
	}
	// Proposals within the terms are not pending: the other cap (open sessions) still has room.
	ok, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil || ok.Info().State != workgroups.StateAccepted {
		t.Fatalf("proposal within the terms: %v", err)
	}
	if err := ok.Close(ctx, "done"); err != nil {
		t.Fatal(err)
	}
	// The provider rejects one held proposal: one place, taken at once.
	if err := w.quoter.Reject(ctx, held[0].ID(), "no"); err != nil {
		t.Fatal(err)
	}
	held = held[1:]
	s, err := w.buyer.Propose(ctx, w.ad.ID, outside)
	if err != nil {
		t.Fatalf("proposal after the provider answered one: %v", err)
	}
	held = append(held, s)
	over()
}
