package anomaly

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/audit"
)

const (
	agent = "spiffe://umbra.local/acme/agent/buyer"
	peerA = "spiffe://umbra.local/acme/agent/quoter"
	peerB = "spiffe://umbra.local/acme/agent/shipper"
	peerC = "spiffe://umbra.local/evil/agent/exfil"
)

var t0 = time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)

func envelope(at time.Time, to, typ string) audit.Record {
	b, _ := json.Marshal(map[string]any{"from": agent, "to": to, "type": typ, "size": 12})
	return audit.Record{Kind: "envelope.accepted", Actor: agent, Time: at, Decision: audit.DecisionAllow, Data: b}
}

func refusal(at time.Time) audit.Record {
	return audit.Record{Kind: "envelope.rejected", Actor: agent, Time: at, Decision: audit.DecisionDeny,
		Reason: "contract_violation: type order.place is not allowed"}
}

func toolCall(at time.Time, tool string) audit.Record {
	b, _ := json.Marshal(map[string]any{"ref": "r1", "tool": tool, "backend": "files"})
	return audit.Record{Kind: "mcp.call", Actor: agent, Time: at, Decision: audit.DecisionAllow, Data: b}
}

func modelCall(at time.Time, model string) audit.Record {
	b, _ := json.Marshal(map[string]any{"request_id": "q1", "model": model})
	return audit.Record{Kind: "llm.call", Actor: agent, Time: at, Decision: audit.DecisionAllow, Data: b}
}

// feed observes rs and returns every alert, in order.
func feed(t *testing.T, d *Detector, rs []audit.Record) []Alert {
	t.Helper()
	var out []Alert
	for _, r := range rs {
		out = append(out, d.Observe(r)...)
	}
	return out
}

func detector(t *testing.T, cfg Config) *Detector {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// steady is a well-behaved agent from start for dur: about perMinute envelopes a minute (at random instants),
// to two peers, of two types, with one of two tools every ten records and a model call every twenty, and a refusal
// every twenty minutes: what it uses in the long run, it uses while it is learned.
func steady(rng *rand.Rand, start time.Time, dur time.Duration, perMinute int) []audit.Record {
	var rs []audit.Record
	gap := time.Minute / time.Duration(perMinute)
	for at := start; at.Before(start.Add(dur)); at = at.Add(gap/2 + time.Duration(rng.Int64N(int64(gap)))) {
		switch k := rng.IntN(20); {
		case k < 2:
			rs = append(rs, toolCall(at, []string{"read_file", "list_dir"}[rng.IntN(2)]))
		case k == 2:
			rs = append(rs, modelCall(at, "gpt-small"))
		default:
			rs = append(rs, envelope(at, []string{peerA, peerB}[rng.IntN(2)], []string{"quote.request", "quote.accept"}[rng.IntN(2)]))
		}
		if rng.IntN(perMinute*20) == 0 {
			rs = append(rs, refusal(at))
		}
	}
	return rs
}

func TestWellBehavedAgentRaisesNoAlert(t *testing.T) {
	for _, perMinute := range []int{1, 6, 30, 120} {
		t.Run(fmt.Sprintf("%d a minute", perMinute), func(t *testing.T) {
			d := detector(t, Config{AutoSuspendRefusals: 5})
			rs := steady(rand.New(rand.NewPCG(1, uint64(perMinute))), t0, 6*time.Hour, perMinute)
			if got := feed(t, d, rs); len(got) != 0 {
				t.Fatalf("%d records of a steady agent raised %d alerts, the first: %+v", len(rs), len(got), got[0])
			}
		})
	}
}

func TestRateBurst(t *testing.T) {
	d := detector(t, Config{})
	rs := steady(rand.New(rand.NewPCG(2, 2)), t0, 30*time.Minute, 4)
	if got := feed(t, d, rs); len(got) != 0 {
		t.Fatalf("learning raised %+v", got)
	}
	// Ten times the usual rate and more: 100 envelopes within the next minute, to a known peer and type.
	burst := t0.Add(31 * time.Minute)
	var alerts []Alert
	for i := range 100 {
		alerts = append(alerts, d.Observe(envelope(burst.Add(time.Duration(i)*500*time.Millisecond), peerA, "quote.request"))...)
	}
	if len(alerts) != 1 || alerts[0].Rule != RuleRate {
		t.Fatalf("a burst raised %+v, want one rate alert", alerts)
	}
	a := alerts[0]
	if a.Identity != agent || a.Observed < a.Threshold || a.Observed >= a.Threshold+1 || a.Threshold != DefaultMinRate || a.Baseline < 2 || a.Baseline > 6 {
		t.Fatalf("rate alert %+v: want the agent, raised on reaching the threshold of %d, a baseline of about 4", a, DefaultMinRate)
	}
	// The previous window's few records count in part (the window slides), so the alert may come a record or two
	// before the burst alone reaches the threshold, never after.
	if last := burst.Add(time.Duration(DefaultMinRate-1) * 500 * time.Millisecond); a.Time.After(last) || a.Time.Before(last.Add(-5*time.Second)) {
		t.Fatalf("raised at %s, want at the record that reached the threshold (%s, or a few records before)", a.Time, last)
	}
	// The burst going on raises one alert per window, not one per record.
	next := burst.Add(time.Minute).Truncate(time.Minute)
	for i := range 100 {
		alerts = append(alerts, d.Observe(envelope(next.Add(time.Duration(i)*500*time.Millisecond), peerA, "quote.request"))...)
	}
	if len(alerts) != 2 {
		t.Fatalf("a burst over two windows raised %d alerts, want 2", len(alerts))
	}
}

func TestNoRateOrNoveltyAlertWhileLearning(t *testing.T) {
	d := detector(t, Config{})
	var rs []audit.Record
	for i := range 200 { // a busy first minute, to many peers
		rs = append(rs, envelope(t0.Add(time.Duration(i)*200*time.Millisecond), fmt.Sprintf("spiffe://umbra.local/acme/agent/p%d", i%20), "quote.request"))
	}
	if got := feed(t, d, rs); len(got) != 0 {
		t.Fatalf("learning raised %+v", got)
	}
}

func TestNovelty(t *testing.T) {
	tests := []struct {
		rule Rule
		rec  func(at time.Time) audit.Record
		item string
	}{
		{RuleNewPeer, func(at time.Time) audit.Record { return envelope(at, peerC, "quote.request") }, peerC},
		{RuleNewMessageType, func(at time.Time) audit.Record { return envelope(at, peerA, "quote.dump") }, "quote.dump"},
		{RuleNewTool, func(at time.Time) audit.Record { return toolCall(at, "delete_everything") }, "delete_everything"},
		{RuleNewModel, func(at time.Time) audit.Record { return modelCall(at, "gpt-huge") }, "gpt-huge"},
	}
	for _, tt := range tests {
		t.Run(string(tt.rule), func(t *testing.T) {
			for _, ignore := range []bool{false, true} {
				d := detector(t, Config{IgnoreNew: ignore})
				feed(t, d, steady(rand.New(rand.NewPCG(3, 3)), t0, 20*time.Minute, 6))
				at := t0.Add(21 * time.Minute)
				got := feed(t, d, []audit.Record{tt.rec(at), tt.rec(at.Add(time.Second)), tt.rec(at.Add(time.Hour))})
				if ignore {
					if len(got) != 0 {
						t.Fatalf("with IgnoreNew: %+v", got)
					}
					continue
				}
				if len(got) != 1 || got[0].Rule != tt.rule || got[0].Item != tt.item || !got[0].Time.Equal(at) {
					t.Fatalf("something new used three times raised %+v, want one %s alert for %s", got, tt.rule, tt.item)
				}
			}
		})
	}
}

func TestRefusalsAlert(t *testing.T) {
	d := detector(t, Config{})
	feed(t, d, steady(rand.New(rand.NewPCG(4, 4)), t0, 20*time.Minute, 6))
	at := t0.Add(21 * time.Minute)
	var got []Alert
	for i := range 15 {
		got = append(got, d.Observe(refusal(at.Add(time.Duration(i)*time.Second)))...)
	}
	if len(got) != 1 || got[0].Rule != RuleRefusals || got[0].Observed < DefaultMinRefusals || got[0].Suspend {
		t.Fatalf("15 refusals within a minute raised %+v, want one refusals alert at %d, no suspension (the policy is off)", got, DefaultMinRefusals)
	}

	// Refusals need no baseline: a new identity refused again and again is reported at once; the refusals the
	// relay summarised count as the refusals they stand for.
	d = detector(t, Config{})
	summary, _ := json.Marshal(map[string]any{"count": 40})
	got = feed(t, d, []audit.Record{refusal(t0), {Kind: "envelope.rejected.summary", Actor: agent, Time: t0.Add(time.Second),
		Decision: audit.DecisionDeny, Data: summary}})
	if len(got) != 1 || got[0].Rule != RuleRefusals || got[0].Observed != 41 {
		t.Fatalf("a refusal and a summary of 40 raised %+v, want one refusals alert of 41", got)
	}
}

// TestBurstAcrossWindows: refusals split over the border of two windows, none holding enough of them, still
// alert: the window slides.
func TestBurstAcrossWindows(t *testing.T) {
	d := detector(t, Config{MinRefusals: 5, Window: 2 * time.Second})
	var got []Alert
	for i := range 8 { // 150 ms apart, the fifth on the border
		got = append(got, d.Observe(refusal(t0.Add(1400*time.Millisecond+time.Duration(i)*150*time.Millisecond)))...)
	}
	if len(got) != 1 || got[0].Rule != RuleRefusals {
		t.Fatalf("eight refusals within 1.2s across two windows of 2s raised %+v, want one refusals alert", got)
	}
	// Spread evenly, the same number over twice the window is no burst.
	d = detector(t, Config{MinRefusals: 5, Window: 2 * time.Second})
	got = nil
	for i := range 8 {
		got = append(got, d.Observe(refusal(t0.Add(time.Duration(i)*600*time.Millisecond)))...)
	}
	if len(got) != 0 {
		t.Fatalf("eight refusals over 4.8s raised %+v under 5 in 2s", got)
	}
}

func TestAutoSuspend(t *testing.T) {
	d := detector(t, Config{AutoSuspendRefusals: 5, AutoSuspendWindow: 10 * time.Second, MinRefusals: -1})
	var got []Alert
	for i := range 5 { // five refusals, but over 20 seconds
		got = append(got, d.Observe(refusal(t0.Add(time.Duration(i)*5*time.Second)))...)
	}
	if len(got) != 0 {
		t.Fatalf("five refusals over 20s raised %+v under a policy of 5 in 10s", got)
	}
	at := t0.Add(time.Minute)
	for i := range 8 { // then eight within four seconds
		got = append(got, d.Observe(refusal(at.Add(time.Duration(i)*500*time.Millisecond)))...)
	}
	if len(got) != 1 || got[0].Rule != RuleAutoSuspend || !got[0].Suspend || got[0].Severity != SeverityHigh {
		t.Fatalf("eight refusals within 4s raised %+v, want one suspension", got)
	}
	if want := at.Add(2 * time.Second); !got[0].Time.Equal(want) {
		t.Fatalf("suspension asked at %s, want at the fifth refusal (%s)", got[0].Time, want)
	}
	// Once the window has passed, the policy asks again (for an identity resumed and misbehaving again).
	again := at.Add(time.Minute)
	for i := range 5 {
		got = append(got, d.Observe(refusal(again.Add(time.Duration(i)*time.Second)))...)
	}
	if len(got) != 2 || !got[1].Suspend {
		t.Fatalf("five more refusals a minute later raised %+v, want a second suspension", got[1:])
	}
}

// TestCopiesOfStoredEnvelopesAreNotRefusals: the relay records a copy of an envelope it stored (a retry, sent by
// the SDK when an acknowledgement was lost or the relay asked for it) as envelope.duplicate with decision deny.
// Neither those nor the copies a summary counts are refusals: a well-behaved agent on a loaded path is not
// reported or suspended for them. The other refusals a summary counts still are.
func TestCopiesOfStoredEnvelopesAreNotRefusals(t *testing.T) {
	d := detector(t, Config{AutoSuspendRefusals: 3, AutoSuspendWindow: 10 * time.Second, MinRefusals: 2, Window: 10 * time.Second})
	summary := func(at time.Time, byCode map[string]int) audit.Record {
		count := 0
		for _, n := range byCode {
			count += n
		}
		b, _ := json.Marshal(map[string]any{"count": count, "by_code": byCode})
		return audit.Record{Kind: "envelope.rejected.summary", Actor: agent, Time: at, Decision: audit.DecisionDeny, Data: b}
	}
	var got []Alert
	for i := range 10 {
		got = append(got, d.Observe(audit.Record{Kind: "envelope.duplicate", Actor: agent, Time: t0.Add(time.Duration(i) * 100 * time.Millisecond),
			Decision: audit.DecisionDeny, Reason: "duplicate: envelope id already recorded"})...)
	}
	got = append(got, d.Observe(summary(t0.Add(time.Second), map[string]int{"duplicate": 40}))...)
	if len(got) != 0 {
		t.Fatalf("copies of stored envelopes raised %+v", got)
	}
	got = d.Observe(summary(t0.Add(2*time.Second), map[string]int{"duplicate": 40, "type_not_allowed": 3}))
	rules := map[Rule]bool{}
	for _, a := range got {
		rules[a.Rule] = true
	}
	if !rules[RuleRefusals] || !rules[RuleAutoSuspend] {
		t.Fatalf("a summary of three refusals among copies raised %+v, want a refusals alert and a suspension", got)
	}
}

func TestOutcomesAndControllerRecordsDoNotCount(t *testing.T) {
	d := detector(t, Config{Learn: time.Second, LearnRecords: 1, MinRate: 5, Window: time.Second})
	d.Observe(envelope(t0, peerA, "quote.request"))
	var got []Alert
	for i := range 50 {
		at := t0.Add(2*time.Second + time.Duration(i)*time.Millisecond)
		got = append(got, d.Observe(audit.Record{Kind: "mcp.outcome", Actor: agent, Time: at})...)
		got = append(got, d.Observe(audit.Record{Kind: "anomaly.alert", Actor: agent, Time: at})...)
	}
	if len(got) != 0 {
		t.Fatalf("outcomes and alerts counted as activity: %+v", got)
	}
}

func TestMaxIdentities(t *testing.T) {
	d := detector(t, Config{MaxIdentities: 3})
	for i := range 10 {
		r := envelope(t0.Add(time.Duration(i)*time.Second), peerA, "quote.request")
		r.Actor = fmt.Sprintf("spiffe://umbra.local/acme/agent/a%d", i)
		d.Observe(r)
	}
	if d.Identities() != 3 {
		t.Fatalf("%d baselines kept, want 3", d.Identities())
	}
	if _, ok := d.ids["spiffe://umbra.local/acme/agent/a9"]; !ok {
		t.Fatal("the latest identity was forgotten, want the oldest")
	}
}

func TestConfig(t *testing.T) {
	for _, c := range []Config{{Window: time.Millisecond}, {Learn: -time.Second}, {LearnRecords: -1}, {RateFactor: 0.5},
		{AutoSuspendRefusals: -1}, {AutoSuspendWindow: -time.Second}, {MaxIdentities: -1}} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
	c, err := Config{}.WithDefaults()
	if err != nil || c.Window != DefaultWindow || c.Learn != DefaultLearn || c.LearnRecords != DefaultLearnRecords || c.RateFactor != DefaultRateFactor ||
		c.MinRate != DefaultMinRate || c.MinRefusals != DefaultMinRefusals || c.AutoSuspendRefusals != 0 {
		t.Fatalf("defaults %+v %v", c, err)
	}
}

// BenchmarkObserve is the detector's cost per record, for a thousand identities sending envelopes.
func BenchmarkObserve(b *testing.B) {
	d, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	rs := make([]audit.Record, 1000)
	for i := range rs {
		rs[i] = envelope(t0, peerA, "quote.request")
		rs[i].Actor = fmt.Sprintf("spiffe://umbra.local/acme/agent/a%d", i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r := rs[i%len(rs)]
		r.Time = t0.Add(time.Duration(i) * time.Millisecond)
		d.Observe(r)
	}
}
