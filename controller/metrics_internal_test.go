package controller

import (
	"context"
	"log/slog"
	"maps"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/workgroups"
)

// TestMetricsSessionStatesSurviveRestart checks that sessions by state come from the session store: read
// from it before the watch has caught up, kept current by the watch (a removed session too), and the same after
// the stores are restarted on the same data directory.
func TestMetricsSessionStatesSurviveRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	w := openGovWorld(t, dir, Config{})
	first := w.mustPropose(ctx, false)
	w.mustPropose(ctx, false)
	w.mustPropose(ctx, true)
	if _, err := w.s.closeSession(ctx, first.ID.String(), worldConsumer, workgroups.CloseByConsumer, "done"); err != nil {
		t.Fatal(err)
	}
	want := map[workgroups.State]int{workgroups.StateAccepted: 1, workgroups.StateHeld: 1, workgroups.StateClosed: 1}

	c := newSessionCounts(w.s.gov.sessions, slog.New(slog.DiscardHandler))
	assertCounts(ctx, t, c, false, want) // no watch yet: read from the store
	stop := runCounts(t, c)
	assertCounts(ctx, t, c, true, want)
	w.mustPropose(ctx, false)
	want[workgroups.StateAccepted]++
	assertCounts(ctx, t, c, true, want)
	// A session removed from the table (as retention removes ended ones) is no longer counted.
	if err := w.s.gov.sessions.kv.Delete(ctx, first.ID.String()); err != nil {
		t.Fatal(err)
	}
	want[workgroups.StateClosed]--
	assertCounts(ctx, t, c, true, want)
	stop()
	w.close()

	w = openGovWorld(t, dir, Config{})
	c = newSessionCounts(w.s.gov.sessions, slog.New(slog.DiscardHandler))
	assertCounts(ctx, t, c, false, want)
	defer runCounts(t, c)()
	assertCounts(ctx, t, c, true, want)
}

// runCounts runs c's watch until the returned function is called, which waits for it to end.
func runCounts(t *testing.T, c *sessionCounts) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.run(ctx)
	}()
	return func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the session watch did not end with its context")
		}
	}
}

// assertCounts waits until c counts want (states not in want: none), answered from its watch if watched.
func assertCounts(ctx context.Context, t *testing.T, c *sessionCounts, watched bool, want map[workgroups.State]int) {
	t.Helper()
	want = maps.Clone(want)
	maps.DeleteFunc(want, func(_ workgroups.State, n int) bool { return n == 0 })
	var got map[workgroups.State]int
	var current bool
	for deadline := time.Now().Add(10 * time.Second); ; {
		c.mu.Lock()
		current = c.current
		c.mu.Unlock()
		var err error
		if got, err = c.counts(ctx); err != nil {
			t.Fatal(err)
		}
		maps.DeleteFunc(got, func(_ workgroups.State, n int) bool { return n == 0 })
		if current == watched && maps.Equal(got, want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if current != watched || !maps.Equal(got, want) {
		t.Fatalf("sessions by state %v (from the watch: %v), want %v (from the watch: %v)", got, current, want, watched)
	}
}
