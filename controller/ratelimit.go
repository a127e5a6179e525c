package controller

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
)

// The caps on open sessions (quota.go) bound what one identity holds at a time, not how fast it churns: a
// member proposing and closing at once frees its place each time, and every proposal leaves a session record
// (until the retention removes it, retention.go) and audit records behind. So each identity may also make only
// Config.ProposalsPerMinute proposals in a minute. The count is kept in JetStream, one record per identity
// (proposalRate), written by compare-and-set, so that every controller sharing the store counts the same
// proposals; the bucket forgets an identity that has been quiet for two windows.

const (
	defaultProposalsPerMinute = 60
	proposalWindow            = time.Minute
	// proposalRateBucket holds one proposalRate per identity.
	proposalRateBucket = "umbra_proposal_rates"
)

// proposalRate is one identity's proposals in its current window.
type proposalRate struct {
	Start time.Time `json:"start"` // when the window began: it ends proposalWindow later
	Count int       `json:"count"`
}

// openProposalRates opens the rate bucket: one revision per key, and a key left alone for two windows expires.
func openProposalRates(ctx context.Context, js jetstream.JetStream) (table[proposalRate], error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: proposalRateBucket, History: 1,
		TTL: 2 * proposalWindow, Storage: jetstream.FileStorage, MaxBytes: tableMaxBytes, MaxValueSize: 4 << 10})
	if err != nil {
		return table[proposalRate]{}, fmt.Errorf("bucket %s: %w", proposalRateBucket, noRoom(err, tableMaxBytes))
	}
	return table[proposalRate]{kv: kv}, nil
}

// admitProposal counts one proposal by id in its window, or refuses it with HTTP 429 and a Retry-After of the
// time left in the window, recording the refusal through the refusal limiter. A refused proposal is not counted.
func (s *Server) admitProposal(ctx context.Context, id spiffeid.ID, adID string) error {
	limit := s.cfg.ProposalsPerMinute
	if limit < 0 {
		return nil
	}
	key := idKey(id)
	// The lock spares this controller's own proposals from losing compare-and-set races to each other; the
	// compare-and-set is what makes other controllers agree.
	unlock := s.gov.lockSession("rate/" + key)
	defer unlock()
	for range 20 {
		r, rev, err := s.gov.rates.get(ctx, key)
		if err != nil && !errors.Is(err, errNotFound) {
			return internal(fmt.Errorf("proposal rate of %s: %w", id, err))
		}
		now := time.Now().UTC()
		// A window that ended starts over; so does one that starts in the future (another controller's clock
		// ahead of ours), which would otherwise hold the identity back for longer than a window.
		if now.Sub(r.Start) >= proposalWindow || r.Start.After(now) {
			r = proposalRate{Start: now}
		}
		if r.Count >= limit {
			retry := r.Start.Add(proposalWindow).Sub(now)
			f := failf(http.StatusTooManyRequests, api.CodeProposalRateLimited,
				"you made %d proposals in the last minute, the most one identity may: retry in %ds, or ask the operator to raise the limit (umbra controller --proposals-per-minute)",
				r.Count, int(math.Ceil(retry.Seconds())))
			f.retryAfter = retry
			s.recordRefusal(ctx, f.code, audit.Record{Kind: "session.propose", Actor: id.String(), Decision: audit.DecisionDeny,
				Reason: f.code + ": " + f.message, Data: jsonRaw(map[string]any{
					"advertisement": adID, "proposals": r.Count, "proposals_per_minute": limit, "window_start": r.Start,
				})})
			return f
		}
		r.Count++
		if err := s.gov.rates.put(ctx, key, r, rev); errors.Is(err, errConflict) {
			continue
		} else if err != nil {
			return internal(fmt.Errorf("proposal rate of %s: %w", id, err))
		}
		return nil
	}
	return internal(fmt.Errorf("proposal rate of %s: too many concurrent updates", id))
}
