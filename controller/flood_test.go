package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/workgroups"
)

// dirBytes is the size of every file under dir.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFloodDiskGrowthIsBounded has one member flood the controller's record path as a misbehaving agent would:
// thousands of refused frames, proposals over its cap, and the same envelope id again and again. The JetStream
// store on disk may grow by what the refusal limiter lets through (refusalsPerWindow records and one summary per
// identity and window), not by the number of bad requests.
func TestFloodDiskGrowthIsBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	const capOpen = 4
	cfg := Config{MaxOpenSessions: capOpen}
	w := openGovWorld(t, dir, cfg)
	var open []workgroups.Session
	for range capOpen {
		open = append(open, w.mustPropose(ctx, false))
	}
	sid := open[0].ID.String()
	if _, err := w.s.gov.env.Append(ctx, envstore.Envelope{ID: "env_1", Session: sid, To: worldProvider.String(), Data: make([]byte, 512)}, 0); err != nil {
		t.Fatal(err)
	}
	// The baseline: everything above on disk, the stores closed as they would be at rest.
	w.close()
	before := dirBytes(t, dir)
	w = openGovWorld(t, dir, cfg)

	const badFrames, overCap, duplicates = 5000, 2000, 5000
	start := time.Now()
	frame := make([]byte, 0, 200)
	for i := range badFrames {
		// What the relay records for a frame it cannot parse: the code and what it read.
		frame = fmt.Appendf(frame[:0], "frame %d: bad magic", i)
		w.s.recordRefusal(ctx, "malformed_frame", audit.Record{Kind: "envelope.rejected", Actor: worldConsumer.String(),
			Session: sid, Decision: audit.DecisionDeny, Reason: "malformed_frame: " + string(frame)})
	}
	for range overCap {
		if _, err := w.propose(ctx, false); err == nil {
			t.Fatal("a proposal over the cap was accepted")
		}
	}
	for range duplicates {
		a, err := w.s.gov.env.Append(ctx, envstore.Envelope{ID: "env_1", Session: sid, To: worldProvider.String(), Data: make([]byte, 512)}, 0)
		if err != nil || !a.Duplicate {
			t.Fatalf("duplicate append: %+v, %v", a, err)
		}
		w.s.recordRefusal(ctx, "duplicate", audit.Record{Kind: "envelope.rejected", Actor: worldConsumer.String(),
			Session: sid, Decision: audit.DecisionDeny, Reason: "duplicate: envelope env_1 already stored"})
	}
	elapsed := time.Since(start)
	// Closing writes the summaries of the windows still open.
	w.close()
	after := dirBytes(t, dir)

	// The budget: per identity and window, refusalsPerWindow records of their own and one summary, each at most
	// refusalRecordBound on disk (checked below), plus the stores' own bookkeeping on a restart (indexes, state
	// files), which does not depend on the flood. Recording every refusal would take megabytes.
	windows := int64(math.Ceil(elapsed.Seconds()/refusalWindow.Seconds())) + 1
	const refusalRecordBound, bookkeeping = 2 << 10, 64 << 10
	budget := windows*(refusalsPerWindow+1)*refusalRecordBound + bookkeeping
	grown := after - before
	requests := badFrames + overCap + duplicates
	t.Logf("flood: %d refused requests (%d bad frames, %d proposals over the cap, %d duplicate envelopes) in %v; store %d → %d bytes, grew %d bytes (%.1f bytes per request); budget %d bytes for %d window(s)",
		requests, badFrames, overCap, duplicates, elapsed.Round(time.Millisecond), before, after, grown, float64(grown)/float64(requests), budget, windows)
	if grown > budget {
		t.Fatalf("the store grew %d bytes under %d refused requests, over the budget of %d", grown, requests, budget)
	}

	// And what was recorded: at most refusalsPerWindow refusals one by one per window, the rest counted.
	w = openGovWorld(t, dir, cfg)
	one, counted := 0, 0
	if _, err := w.s.gov.audit.Scan(ctx, 0, func(r audit.Record) error {
		if b, err := json.Marshal(r); err != nil || len(b) > refusalRecordBound/2 {
			return fmt.Errorf("record %d: %d bytes, want at most %d (err %v)", r.Seq, len(b), refusalRecordBound/2, err)
		}
		switch {
		case r.Kind == kindRefusalSummary:
			var d struct {
				Count int `json:"count"`
			}
			if err := json.Unmarshal(r.Data, &d); err != nil {
				return err
			}
			counted += d.Count
		case r.Decision == audit.DecisionDeny && r.Actor == worldConsumer.String():
			one++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("flood: %d refusals recorded one by one, %d counted in summaries", one, counted)
	if int64(one) > windows*refusalsPerWindow || one+counted != requests {
		t.Fatalf("%d refusals recorded one by one and %d counted in summaries, want at most %d and %d in all", one, counted, windows*refusalsPerWindow, requests)
	}
}

// TestFloodProposeCloseLoopIsBounded has one member propose a session and close it at once, 2,000 times at full
// speed: each proposal frees its place among the caps as soon as it is closed, so only the proposal rate bounds
// what it leaves behind. The store may grow by the proposals the rate admits (each a session record and its
// audit records) and the refusals the limiter records, not by the number of attempts; and once the retention
// has passed, the sessions bucket holds none of them.
func TestFloodProposeCloseLoopIsBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	const retention = 2 * time.Second
	cfg := Config{ClosedSessionRetention: retention} // the default rate: 60 proposals a minute
	w := openGovWorld(t, dir, cfg)
	w.close()
	before := dirBytes(t, dir)
	w = openGovWorld(t, dir, cfg)

	const attempts = 2000
	admitted, limited := 0, 0
	start := time.Now()
	for range attempts {
		sess, err := w.propose(ctx, false)
		var f *fault
		switch {
		case err == nil:
			admitted++
			if _, err := w.s.closeByCaller(ctx, w.consumer, sess.ID.String(), "done"); err != nil {
				t.Fatal(err)
			}
		case errors.As(err, &f) && f.code == api.CodeProposalRateLimited:
			limited++
		default:
			t.Fatalf("propose: %v", err)
		}
	}
	elapsed := time.Since(start)
	windows := int64(math.Ceil(elapsed.Seconds()/proposalWindow.Seconds())) + 1
	if int64(admitted) > windows*defaultProposalsPerMinute || admitted+limited != attempts {
		t.Fatalf("%d proposals admitted and %d refused for the rate in %v, want at most %d admitted", admitted, limited, elapsed, windows*defaultProposalsPerMinute)
	}
	stored := w.storedSessions(ctx)
	w.close()
	after := dirBytes(t, dir)

	// The budget: per window, the admitted sessions at sessionBound each (the session's revisions, its
	// transitions in the audit trail, its consumer's count) and the refusals the limiter records, plus the
	// stores' bookkeeping on a restart.
	const refusalRecordBound, sessionBound, bookkeeping = 2 << 10, 8 << 10, 64 << 10
	budget := windows*(defaultProposalsPerMinute*sessionBound+(refusalsPerWindow+1)*refusalRecordBound) + bookkeeping
	grown := after - before
	t.Logf("propose/close flood: %d attempts in %v, %d admitted (%d sessions stored), %d refused for the rate; store %d → %d bytes, grew %d bytes (%.1f bytes per attempt); budget %d bytes for %d window(s)",
		attempts, elapsed.Round(time.Millisecond), admitted, stored, limited, before, after, grown, float64(grown)/attempts, budget, windows)
	if stored != admitted {
		t.Fatalf("%d sessions stored, want the %d admitted", stored, admitted)
	}
	if grown > budget {
		t.Fatalf("the store grew %d bytes under %d proposals, over the budget of %d", grown, attempts, budget)
	}

	// After the retention the loop removes every one of them, revisions and all.
	w = openGovWorld(t, dir, cfg)
	n, err := w.s.purgeEndedSessions(ctx, time.Now().Add(retention))
	if err != nil || n != admitted {
		t.Fatalf("retention removed %d sessions, err %v; want %d", n, err, admitted)
	}
	info, err := w.s.gov.sessionStream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if left := w.storedSessions(ctx); left != 0 || info.State.Msgs != 0 {
		t.Fatalf("after the retention: %d sessions and %d messages left in the sessions bucket, want none", left, info.State.Msgs)
	}
	w.close()
	t.Logf("propose/close flood: after the retention the sessions bucket is empty; store %d bytes at rest", dirBytes(t, dir))
}

// storedSessions counts the sessions in the session table.
func (w *govWorld) storedSessions(ctx context.Context) int {
	w.t.Helper()
	all, err := w.s.gov.sessions.all(ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	return len(all)
}
