package demo

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/umbra-mesh/umbra/workgroups"
)

// ledger is what the agents themselves saw in a round: the envelopes the relay acknowledged to their senders and
// the envelopes delivered to their recipients. After the round it is reconciled with the audit trail, so a lost,
// duplicated or unrecorded envelope fails the round. A nil ledger records nothing.
type ledger struct {
	mu        sync.Mutex
	acked     map[workgroups.EnvelopeID]bool
	delivered map[workgroups.EnvelopeID]bool
}

func newLedger() *ledger {
	return &ledger{acked: map[workgroups.EnvelopeID]bool{}, delivered: map[workgroups.EnvelopeID]bool{}}
}

func (l *ledger) ack(id workgroups.EnvelopeID) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.acked[id] = true
}

func (l *ledger) deliver(id workgroups.EnvelopeID) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.delivered[id] = true
}

// reset starts a new round and returns what the last one saw.
func (l *ledger) reset() (acked, delivered map[workgroups.EnvelopeID]bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	acked, delivered = l.acked, l.delivered
	l.acked, l.delivered = map[workgroups.EnvelopeID]bool{}, map[workgroups.EnvelopeID]bool{}
	return acked, delivered
}

// reconcile checks that the envelopes acknowledged to senders, the envelopes the audit trail records as accepted
// and the envelopes delivered to recipients are the same set.
func reconcile(acked, delivered map[workgroups.EnvelopeID]bool, recorded []string) error {
	stored := map[string]bool{}
	var problems []string
	for _, id := range recorded {
		if stored[id] {
			problems = append(problems, "recorded twice: "+id)
		}
		stored[id] = true
	}
	for id := range acked {
		if !stored[id.String()] {
			problems = append(problems, "acknowledged but not recorded: "+id.String())
		}
	}
	for id := range delivered {
		if !stored[id.String()] {
			problems = append(problems, "delivered but not recorded: "+id.String())
		}
	}
	for id := range stored {
		eid, err := workgroups.ParseEnvelopeID(id)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("recorded envelope with a malformed id %q", id))
		case !acked[eid]:
			problems = append(problems, "recorded but never acknowledged: "+id)
		case !delivered[eid]:
			problems = append(problems, "recorded but never delivered: "+id)
		}
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return fmt.Errorf("demo: %d acknowledged, %d recorded, %d delivered: %s", len(acked), len(stored), len(delivered),
			strings.Join(problems, "; "))
	}
	return nil
}
