package demo

import (
	"context"
	"fmt"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
)

// The containerised demo runs every workload in a container of its own; these are its entry points.

// WorkloadByKey finds a workload of the scenario by its Key, e.g. "northwind-planner".
func WorkloadByKey(key string) (Workload, bool) {
	for _, w := range append(append([]Workload{}, Agents...), Services...) {
		if w.Key() == key {
			return w, true
		}
	}
	return Workload{}, false
}

// RunAgent runs one agent of the scenario on its own: it publishes the agent's offer, plays rounds rounds and
// returns. a is connected with the agent's identity; the planner writes the brief into out and pauses pace
// between its steps.
func RunAgent(ctx context.Context, a *agentsdk.Agent, w Workload, rounds int, out string, pace time.Duration, feed *Feed) error {
	r, ok := roles[w]
	if !ok {
		return fmt.Errorf("demo: %s is not an agent of the scenario", w.Label())
	}
	if feed == nil {
		feed = NewFeed(nil)
	}
	n := newNode(w, a, feed, out, nil)
	n.pace = pace
	defer n.close()
	if err := n.advertise(ctx); err != nil {
		return fmt.Errorf("demo: %s: %w", w.Label(), err)
	}
	for round := 1; round <= rounds; round++ {
		if err := r(ctx, n, round); err != nil {
			return fmt.Errorf("demo: %s: round %d: %w", w.Label(), round, err)
		}
		n.say("round %d complete", round)
	}
	return nil
}
