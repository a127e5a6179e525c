package sdktest

import (
	"context"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/workgroups"
)

// BenchmarkProposalNotify measures how soon a provider hears of a proposal held for it: from the consumer's call
// of Propose to the provider's OnProposal callback, with OnProposal listing only once an hour, so that every
// proposal arrives through the session event feed. It reports the p50 and p99 of that latency, and of the Propose
// call alone for comparison. The provider rejects each proposal, so none stays open.
func BenchmarkProposalNotify(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	terms := defaultTerms()
	terms.HoldForProvider = true
	w := newPricingWorld(b, terms)
	notified := make(chan time.Time, 1)
	onCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- w.quoter.OnProposal(onCtx, time.Hour, func(workgroups.Session) (bool, string) {
			notified <- time.Now()
			return false, "benchmark"
		})
	}()
	defer func() {
		stop()
		<-done
	}()
	time.Sleep(time.Second) // OnProposal's first list and the feed's first answer
	var notify, propose []time.Duration
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		held, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{MaxMessages: 50})
		if err != nil || held.Info().State != workgroups.StateHeld {
			b.Fatalf("propose: %v (want it held)", err)
		}
		propose = append(propose, time.Since(start))
		select {
		case at := <-notified:
			notify = append(notify, at.Sub(start))
		case <-time.After(30 * time.Second):
			b.Fatal("the provider was not notified within 30s")
		}
	}
	b.StopTimer()
	b.ReportMetric(millis(percentile(notify, 50)), "notify-p50-ms")
	b.ReportMetric(millis(percentile(notify, 99)), "notify-p99-ms")
	b.ReportMetric(millis(percentile(propose, 50)), "propose-p50-ms")
	b.ReportMetric(millis(percentile(propose, 99)), "propose-p99-ms")
}
