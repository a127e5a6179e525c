package controller

import (
	"encoding/json"
	"testing"
	"time"
)

// TestRefusalsAreSummarisedPastTheLimit floods the limiter as a member sending bad frames would: the first
// refusals of a window are recorded one by one, the rest become one summary that counts every one of them.
func TestRefusalsAreSummarisedPastTheLimit(t *testing.T) {
	l := newRefusalLimiter(time.Minute, 3)
	t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	const flooder, other = "spiffe://t/acme/agent/flood", "spiffe://t/acme/agent/ok"
	recorded := 0
	for i := range 1000 {
		code := "malformed_frame"
		if i%2 == 1 {
			code = "type_not_allowed"
		}
		ok, summary := l.admit(flooder, code, t0.Add(time.Duration(i)*time.Millisecond))
		if summary != nil {
			t.Fatalf("summary inside the window: %+v", summary)
		}
		if ok {
			recorded++
		}
	}
	if recorded != 3 {
		t.Fatalf("%d refusals recorded one by one, want 3", recorded)
	}
	if ok, _ := l.admit(other, "malformed_frame", t0.Add(time.Second)); !ok {
		t.Fatal("another identity's refusal was held back by the flooder's")
	}
	if got := l.flush(t0.Add(30 * time.Second)); len(got) != 0 {
		t.Fatalf("flush before the window ended: %+v", got)
	}
	// The flooder's next refusal, after the window, brings the summary and is recorded itself.
	ok, summary := l.admit(flooder, "malformed_frame", t0.Add(61*time.Second))
	if !ok || summary == nil {
		t.Fatalf("after the window: ok %v, summary %+v", ok, summary)
	}
	var d struct {
		Count  int            `json:"count"`
		ByCode map[string]int `json:"by_code"`
	}
	if err := json.Unmarshal(summary.Data, &d); err != nil {
		t.Fatal(err)
	}
	if summary.Kind != kindRefusalSummary || summary.Actor != flooder || d.Count != 997 ||
		d.ByCode["malformed_frame"]+d.ByCode["type_not_allowed"] != 997 {
		t.Fatalf("summary %+v, data %+v; want 997 refusals of %s", summary, d, flooder)
	}
	// A quiet identity's ended window has nothing to summarise; a window with suppressed refusals is flushed.
	for i := range 10 {
		l.admit(flooder, "policy_denied", t0.Add(62*time.Second+time.Duration(i)))
	}
	got := l.flush(t0.Add(3 * time.Minute))
	if len(got) != 1 || got[0].Actor != flooder {
		t.Fatalf("flush = %+v, want one summary for %s", got, flooder)
	}
	if len(l.windows) != 0 {
		t.Fatalf("ended windows kept: %d", len(l.windows))
	}
}
