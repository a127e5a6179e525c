package sdktest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// pushDeadline is how soon a change must reach an agent that lists its sessions only once an hour: only the
// session event feed can bring it that fast.
const pushDeadline = 10 * time.Second

// TestOnProposalPushedWithHourInterval answers held proposals with a provider that lists its held proposals
// once an hour: each is decided within seconds, brought by the session event feed.
func TestOnProposalPushedWithHourInterval(t *testing.T) {
	limit := testlimit.Start(t, 4*time.Minute)
	checkNoLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	terms := defaultTerms()
	terms.HoldForProvider = true
	w := newPricingWorld(t, terms)
	decided := make(chan workgroups.SessionID, 4)
	onCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- w.quoter.OnProposal(onCtx, time.Hour, func(s workgroups.Session) (bool, string) {
			decided <- s.ID
			return s.Contract.MaxMessages <= 50, "volume approved"
		})
	}()
	defer func() {
		stop()
		<-done
	}()
	// The first may be found by OnProposal's first list; the later ones only by the feed.
	for i := range 3 {
		limit.Step("held proposal %d", i)
		if i > 0 {
			time.Sleep(500 * time.Millisecond)
		}
		held, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{MaxMessages: uint64(40 + i)})
		if err != nil || held.Info().State != workgroups.StateHeld {
			t.Fatalf("proposal %d: %v (want it held)", i, err)
		}
		select {
		case id := <-decided:
			if id != held.ID() {
				t.Fatalf("decided %s, want %s", id, held.ID())
			}
		case <-time.After(pushDeadline):
			t.Fatalf("held proposal %d not decided within %s by a provider listing once an hour", i, pushDeadline)
		}
		waitState(t, ctx, held, workgroups.StateAccepted)
	}
}

// waitState waits until s is in state want.
func waitState(t *testing.T, ctx context.Context, s *agentsdk.Session, want workgroups.State) {
	t.Helper()
	deadline := time.Now().Add(pushDeadline)
	for {
		v, err := s.Refresh(ctx)
		if err == nil && v.State == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s in state %s (%v), want %s", s.ID(), v.State, err, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestServePushedWithHourInterval serves sessions with a provider that lists its sessions once an hour: each new
// session is answered within seconds, and each closed one stops being served within seconds too.
func TestServePushedWithHourInterval(t *testing.T) {
	limit := testlimit.Start(t, 4*time.Minute)
	checkNoLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := newPricingWorld(t, defaultTerms())
	serveCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	before := goroutines()
	go func() {
		done <- w.quoter.Serve(serveCtx, time.Hour, func(_ context.Context, _ *agentsdk.Session, in agentsdk.Envelope) (string, []byte, error) {
			return "quote.response", fmt.Appendf(nil, `{"re":%s}`, in.Payload), nil
		})
	}()
	defer func() {
		stop()
		<-done
	}()
	for i := range 3 {
		limit.Step("session %d", i)
		if i > 0 {
			time.Sleep(500 * time.Millisecond)
		}
		sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
		if err != nil {
			t.Fatal(err)
		}
		sctx, scancel := context.WithTimeout(ctx, pushDeadline)
		payload := fmt.Sprintf(`{"n":%d}`, i)
		if _, err := sess.Send(sctx, "quote.request", []byte(payload)); err != nil {
			t.Fatal(err)
		}
		in, err := sess.Receive(sctx)
		scancel()
		if err != nil {
			t.Fatalf("session %d not served within %s by a provider listing once an hour: %v", i, pushDeadline, err)
		}
		if want := fmt.Sprintf(`{"re":%s}`, payload); string(in.Payload) != want {
			t.Fatalf("reply %s, want %s", in.Payload, want)
		}
		if err := sess.Close(ctx, "done"); err != nil {
			t.Fatal(err)
		}
	}
	// Each closed session stops being served (by the feed's close event and a short grace), not after an hour.
	limit.Step("closed sessions stop being served")
	waitGoroutinesGone(t, before, "serveSession")
}

// TestSessionEventsOnlyToParties follows the feed as the consumer, the provider and an outsider while a session
// is proposed, used and closed: the parties see each change, the outsider nothing but its first resync.
func TestSessionEventsOnlyToParties(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	checkNoLeaks(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := newPricingWorld(t, defaultTerms())
	feedCtx, stop := context.WithCancel(ctx)
	defer stop()
	follow := func(a *agentsdk.Agent) <-chan api.SessionEvent {
		t.Helper()
		ch, err := a.SessionEvents(feedCtx)
		if err != nil {
			t.Fatal(err)
		}
		if first := <-ch; !first.Resync {
			t.Fatalf("first event %+v, want a resync", first)
		}
		return ch
	}
	buyer, quoter, outsider := follow(w.buyer), follow(w.quoter), follow(w.outside)
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Send(ctx, "quote.request", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := sess.Close(ctx, "done"); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]<-chan api.SessionEvent{"consumer": buyer, "provider": quoter} {
		seen := []workgroups.State{}
		for closed := false; !closed; {
			select {
			case e := <-ch:
				if e.Session.ID != sess.ID() {
					t.Fatalf("the %s was told of session %q, want only %s", name, e.Session.ID, sess.ID())
				}
				seen = append(seen, e.Session.State)
				closed = e.Session.State == workgroups.StateClosed
			case <-time.After(pushDeadline):
				t.Fatalf("the %s saw %v of its session, and not its close within %s", name, seen, pushDeadline)
			}
		}
	}
	// The parties have seen the close: the outsider, asking as often, would have seen anything by now.
	select {
	case e := <-outsider:
		t.Fatalf("an identity that is no party was told %+v", e)
	case <-time.After(time.Second):
	}
	stop()
	for range outsider {
		t.Fatal("an identity that is no party was told of a session")
	}
}
