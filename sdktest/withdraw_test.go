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

// TestWithdrawHeldProposalThroughTheSDK withdraws a held proposal through the SDK, over the overlay: the provider
// may not, the consumer may once, the proposal no longer awaits the provider, and a second withdrawal says it
// was withdrawn already.
func TestWithdrawHeldProposalThroughTheSDK(t *testing.T) {
	testlimit.Start(t, 2*time.Minute)
	ctx := context.Background()
	terms := defaultTerms()
	terms.HoldForProvider = true
	w := newPricingWorld(t, terms)
	s, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{MaxMessages: 100})
	if err != nil || s.Info().State != workgroups.StateHeld {
		t.Fatalf("proposal outside the terms: %v, want held", err)
	}
	refused := func(err error, status int, code, want string) {
		t.Helper()
		var apiErr *agentsdk.APIError
		if !errors.As(err, &apiErr) || apiErr.Status != status || apiErr.Code != code || !strings.Contains(apiErr.Message, want) {
			t.Fatalf("withdraw: %v, want %d %s containing %q", err, status, code, want)
		}
	}
	refused(w.quoter.Withdraw(ctx, s.ID(), ""), http.StatusForbidden, api.CodeForbidden, "only the consumer that proposed")
	refused(w.outside.Withdraw(ctx, s.ID(), ""), http.StatusNotFound, api.CodeNotFound, "no session")

	if err := w.buyer.Withdraw(ctx, s.ID(), "changed my mind"); err != nil {
		t.Fatal(err)
	}
	held, err := w.quoter.Sessions(ctx, workgroups.StateHeld)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range held {
		if v.ID == s.ID() {
			t.Fatal("the withdrawn proposal still awaits the provider")
		}
	}
	refused(w.buyer.Withdraw(ctx, s.ID(), ""), http.StatusConflict, api.CodeConflict, "was already withdrawn at")
	// The provider can no longer accept it.
	if _, err := w.quoter.Accept(ctx, s.ID(), "too late"); err == nil {
		t.Fatal("the provider accepted a withdrawn proposal")
	}
}
