package demo

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/workgroups"
)

func TestFindWindow(t *testing.T) {
	start := time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC)
	hour := func(i int, hs, wind float64) SeaHour {
		return SeaHour{Time: start.Add(time.Duration(i) * time.Hour).Format(time.RFC3339), HsM: hs, WindMS: wind}
	}
	hours := []SeaHour{hour(0, 2.0, 8), hour(1, 1.4, 8), hour(2, 1.2, 9), hour(3, 1.5, 12), hour(4, 1.6, 8), hour(5, 1.0, 5)}
	w, hs, wind := findWindow(hours, 1.5, 12, 3)
	if w == nil || w.Start != hours[1].Time || w.End != hours[4].Time || hs != 1.5 || wind != 12 {
		t.Fatalf("window %+v, hs %v, wind %v", w, hs, wind)
	}
	if w, _, _ := findWindow(hours, 1.5, 12, 4); w != nil {
		t.Fatalf("a 3-hour run made a 4-hour window: %+v", w)
	}
	// The scenario's own forecast has one window tomorrow, long enough for the repair.
	if w, hs, _ := findWindow(seaState(), 1.5, 12, 10); w == nil || hs > 1.5 || !strings.HasPrefix(w.Start, forecastStart().Format("2006-01-02")) {
		t.Fatalf("scenario window %+v (hs %v)", w, hs)
	}
}

// TestScenarioShape: five organisations, at least eight agents, at least four inter-org workgroups, and the
// two vessel operators share none; every offer is valid and scoped to workgroups its provider is in.
func TestScenarioShape(t *testing.T) {
	if len(Orgs) != 5 || len(Agents) < 8 {
		t.Fatalf("%d organisations, %d agents", len(Orgs), len(Agents))
	}
	inter := 0
	member := map[Workload]map[string]bool{}
	for _, wg := range Workgroups {
		if len(wg.Invite) > 0 {
			inter++
		}
		for _, m := range wg.Members {
			if member[m] == nil {
				member[m] = map[string]bool{}
			}
			member[m][wg.ID()] = true
		}
	}
	if inter < 4 {
		t.Fatalf("%d inter-org workgroups", inter)
	}
	for id := range member[Tidewater] {
		if member[Keelson][id] {
			t.Fatalf("Tidewater and Keelson share %s", id)
		}
	}
	for w, o := range offers {
		ad := workgroups.Advertisement{Card: o.card, Terms: o.terms}
		for _, id := range o.workgroups {
			wg, err := workgroups.ParseWorkgroupID(id)
			if err != nil {
				t.Fatal(err)
			}
			ad.Workgroups = append(ad.Workgroups, wg)
			if !member[w][id] {
				t.Errorf("%s advertises in %s, which it is not a member of", w.Label(), id)
			}
		}
		b, _ := json.Marshal(ad)
		if _, err := workgroups.ParseAdvertisement(b); err != nil {
			t.Errorf("%s's offer: %v", w.Label(), err)
		}
	}
	for _, w := range append(append([]Workload{}, Agents...), Services...) {
		if got, ok := WorkloadByKey(w.Key()); !ok || got != w {
			t.Errorf("WorkloadByKey(%q) = %v %v", w.Key(), got, ok)
		}
	}
}

func TestTally(t *testing.T) {
	rec := func(seq uint64, kind, session, reason, decision string, data any) audit.Record {
		b, _ := json.Marshal(data)
		return audit.Record{Seq: seq, Kind: kind, Session: session, Reason: reason, Decision: decision, Data: b}
	}
	parties := map[string]any{"to": "accepted", "consumer": "spiffe://umbra.local/northwind/agent/planner",
		"provider": "spiffe://umbra.local/helix/agent/parts", "contract": map[string]any{"max_messages": 4}}
	closed := maps.Clone(parties)
	closed["to"], closed["close_reason"] = "closed", "max_messages"
	records := []audit.Record{
		rec(1, "envelope.accepted", "ses_old", "", "allow", nil), // before the round
		rec(2, "session.transition", "ses_a", "", "allow", parties),
		rec(3, "envelope.accepted", "ses_a", "", "allow", nil),
		rec(4, "envelope.accepted", "ses_a", "", "allow", nil),
		rec(5, "session.transition", "ses_a", "", "allow", closed),
		rec(6, "envelope.rejected", "ses_a", "session_closed: session ses_a is closed (max_messages)", "deny", nil),
		rec(7, "envelope.rejected", "ses_a", "type_not_allowed: type \"x\" is not allowed", "deny", nil),
		rec(8, "session.propose", "", "not visible to the caller", "deny", nil),
		rec(9, "mcp.denied", "", "tool quarantined", "deny", nil),
		rec(10, "mcp.call", "", "", "allow", nil),
		rec(11, "llm.budget_exceeded", "", "over budget", "deny", nil),
		rec(12, "llm.call", "", "", "allow", nil),
		rec(13, "mcp.outcome", "", "", "", nil), // outcomes do not count their calls again
		rec(14, "llm.outcome", "", "", "", nil),
		rec(15, "llm.unavailable", "", "the call was refused: its audit record could not be written", "deny", nil),
	}
	sum := Tally(records, 1)
	if len(sum.Sessions) != 1 || sum.Envelopes != 2 || sum.AuditRecords != 14 || sum.MCPCalls != 1 || sum.LLMCalls != 1 {
		t.Fatalf("summary %+v", sum)
	}
	s := sum.Sessions[0]
	if s.Consumer != "northwind/planner" || s.Provider != "helix/parts" || s.Envelopes != 2 || s.Refused != 2 ||
		s.CloseReason != "max_messages" || s.MaxMessages != 4 {
		t.Fatalf("session %+v", s)
	}
	want := map[string]int{"a2a max_messages": 1, "a2a type_not_allowed": 1, "a2a propose: not visible to the caller": 1,
		"mcp tool quarantined": 1, "llm budget_exceeded": 1, "llm unavailable": 1}
	if !maps.Equal(sum.Refusals, want) {
		t.Fatalf("refusals %v", sum.Refusals)
	}
}

func TestIndent(t *testing.T) {
	if got := indent("a\n\nb", "  "); got != "  a\n\n  b\n" {
		t.Fatalf("%q", got)
	}
}
