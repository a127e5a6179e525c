package sdktest

import (
	"context"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// TestDiscoveryHidesProvidersOtherWorkgroups: a provider advertises in a shared workgroup and in a private one
// of its own organisation, and its terms require the private one. A consumer who discovers the advertisement
// learns neither the private workgroup's name nor that it exists.
func TestDiscoveryHidesProvidersOtherWorkgroups(t *testing.T) {
	limit := testlimit.Start(t, 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	limit.Step("build the pricing world")
	w := newPricingWorld(t, defaultTerms())
	org := orgName(t, w.quoter.ID())
	limit.Step("create a private workgroup and advertise in both")
	private, err := w.acme.Controller().CreateWorkgroup(ctx, "merger")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.acme.Controller().AddMember(ctx, private.ID, w.quoter.ID(), ""); err != nil {
		t.Fatal(err)
	}
	terms := defaultTerms()
	terms.RequiredWorkgroups = []workgroups.WorkgroupID{private.ID}
	card := workgroups.AgentCard{Name: "Merger desk " + org, Version: "1", MessageTypes: []string{"quote.*"}}
	ad, err := w.quoter.Advertise(ctx, card, terms, w.wg, private.ID)
	if err != nil {
		t.Fatal(err)
	}
	limit.Step("discover as the consumer")
	found, err := w.buyer.Discover(ctx, api.DiscoverRequest{Text: card.Name})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].ID != ad.ID {
		t.Fatalf("discovered %d advertisements, want the merger desk's", len(found))
	}
	got := found[0]
	if len(got.Workgroups) != 1 || got.Workgroups[0] != w.wg {
		t.Errorf("the consumer sees the advertisement in workgroups %v, want only the shared %s", got.Workgroups, w.wg)
	}
	for _, wg := range got.Terms.RequiredWorkgroups {
		if wg == private.ID {
			t.Errorf("the consumer learns the provider's private workgroup %s from the terms", wg)
		}
	}
}
