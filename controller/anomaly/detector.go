package anomaly

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/umbra-mesh/umbra/internal/audit"
)

// Rule names what an alert found.
type Rule string

// The rules.
const (
	RuleRate           Rule = "rate"             // far more records in a window than usual
	RuleRefusals       Rule = "refusals"         // far more refusals in a window than usual
	RuleNewPeer        Rule = "new_peer"         // an envelope to an identity it never sent to
	RuleNewMessageType Rule = "new_message_type" // an envelope of a type it never sent
	RuleNewTool        Rule = "new_tool"         // a tool, prompt or resource it never used
	RuleNewModel       Rule = "new_model"        // a model it never called
	RuleAutoSuspend    Rule = "auto_suspend"     // the automatic suspension policy: suspend it
)

// Severities of alerts, as the posture findings name them.
const (
	SeverityLow    = "low"
	SeverityMedium = "medium"
	SeverityHigh   = "high"
)

// Alert is a deviation of one identity from its baseline.
type Alert struct {
	Time      time.Time // the time of the record that raised it
	Identity  string    // the SPIFFE ID of the identity that deviated
	Rule      Rule
	Severity  string
	Observed  float64 // what was seen: records or refusals in the window, 1 for something new
	Baseline  float64 // the usual value per window; 0 for something new
	Threshold float64 // the value at which the rule alerts
	Item      string  // the new peer, message type, tool or model
	Suspend   bool    // the policy asks for the identity to be suspended
	Message   string  // one line for a human
}

// Detector keeps the baselines. It is not safe for concurrent use: one follower of the trail feeds it.
type Detector struct {
	cfg Config
	ids map[string]*identity
}

// identity is one identity's baseline and current window.
type identity struct {
	first, last time.Time
	records     int       // records seen, up to the number needed to have learned
	window      time.Time // start of the current window
	events      int       // records in the current window
	refusals    int       // refusals in the current window
	rateAlerted bool      // the current window raised its rate alert
	refAlerted  bool      // the current window raised its refusals alert
	// The window before the current one, if it is the one right before: its counts, and whether it alerted.
	prevEvents, prevRefusals    int
	prevRateAlert, prevRefAlert bool
	windows                     int // windows closed
	meanEvents                  float64
	meanRefused                 float64
	items                       map[Rule]map[string]struct{}
	refusedAt                   []time.Time // the latest refusals, at most AutoSuspendRefusals
	suspendedAt                 time.Time   // when the policy last asked for a suspension
}

// New returns a Detector with cfg (zero fields take their defaults).
func New(cfg Config) (*Detector, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	return &Detector{cfg: cfg, ids: map[string]*identity{}}, nil
}

// Config is the configuration in force, defaults filled in.
func (d *Detector) Config() Config { return d.cfg }

// Identities is the number of identities whose baselines are kept.
func (d *Detector) Identities() int { return len(d.ids) }

// notCounted are kinds that do not count as an identity's activity: the second record of a call (its outcome)
// and the records the controller writes about the trail itself.
var notCounted = map[string]bool{
	"mcp.outcome": true, "llm.outcome": true, "anomaly.alert": true, "audit.checkpoint": true, "audit.archived": true,
}

// Observe learns from r and returns the alerts it raises, if any. Records must come in the trail's order.
func (d *Detector) Observe(r audit.Record) []Alert {
	if r.Actor == "" || notCounted[r.Kind] {
		return nil
	}
	id := d.identity(r.Actor, r.Time)
	at := r.Time
	if at.Before(id.window) {
		at = id.window // a record late from another writer counts in the current window
	}
	d.advance(id, at)
	id.last = at
	if id.records < d.cfg.LearnRecords {
		id.records++
	}
	learned := at.Sub(id.first) >= d.cfg.Learn && id.records >= d.cfg.LearnRecords

	// A copy of an envelope already stored (envelope.duplicate) is a retry, answered with the original's
	// sequence: the SDK sends one whenever an acknowledgement is lost or the relay asks for it (its audit record
	// was late), so a well-behaved agent on a loaded or lossy path makes them. Activity, not a refusal.
	n, refusals := 1, 0
	if r.Decision == audit.DecisionDeny && r.Kind != kindDuplicate {
		refusals = 1
	}
	if r.Kind == kindSummary {
		n, refusals = summaryCounts(r)
	}
	var out []Alert
	alert := func(a Alert) {
		a.Time, a.Identity = r.Time, r.Actor
		out = append(out, a)
	}
	id.events += n
	if thr, seen := d.rateThreshold(id), id.recent(at, d.cfg.Window, id.events, id.prevEvents, id.prevRateAlert); learned && d.cfg.MinRate > 0 && !id.rateAlerted && seen >= thr {
		id.rateAlerted = true
		alert(Alert{Rule: RuleRate, Severity: SeverityMedium, Observed: seen, Baseline: id.meanEvents,
			Threshold: thr, Message: fmt.Sprintf("%.0f records within the last %s where it usually has %.1f (alerts at %.0f)",
				seen, d.cfg.Window, id.meanEvents, thr)})
	}
	if refusals == 0 {
		if learned && !d.cfg.IgnoreNew {
			for _, a := range d.novelties(id, r) {
				alert(a)
			}
		} else {
			d.novelties(id, r) // learned silently
		}
		return out
	}
	id.refusals += refusals
	if thr, seen := d.refusalThreshold(id, learned), id.recent(at, d.cfg.Window, id.refusals, id.prevRefusals, id.prevRefAlert); d.cfg.MinRefusals > 0 && !id.refAlerted && seen >= thr {
		id.refAlerted = true
		alert(Alert{Rule: RuleRefusals, Severity: SeverityMedium, Observed: seen, Baseline: id.meanRefused,
			Threshold: thr, Message: fmt.Sprintf("%.0f refusals within the last %s where it usually has %.1f (alerts at %.0f); the last: %s",
				seen, d.cfg.Window, id.meanRefused, thr, clip(r.Reason))})
	}
	if n := d.cfg.AutoSuspendRefusals; n > 0 {
		for range min(n, refusals) {
			if len(id.refusedAt) == n {
				id.refusedAt = id.refusedAt[1:]
			}
			id.refusedAt = append(id.refusedAt, at)
		}
		win := d.cfg.AutoSuspendWindow
		if len(id.refusedAt) == n && at.Sub(id.refusedAt[0]) <= win &&
			(id.suspendedAt.IsZero() || at.Sub(id.suspendedAt) >= win) {
			id.suspendedAt, id.refusedAt = at, id.refusedAt[:0]
			alert(Alert{Rule: RuleAutoSuspend, Severity: SeverityHigh, Observed: float64(n), Threshold: float64(n), Suspend: true,
				Message: fmt.Sprintf("%d refusals within %s; the last: %s", n, win, clip(r.Reason))})
		}
	}
	return out
}

// The audit kinds of a copy of a stored envelope and of a summary of refusals not recorded one by one, and the
// code of copies in a summary.
const (
	kindDuplicate = "envelope.duplicate"
	kindSummary   = "envelope.rejected.summary"
	codeDuplicate = "duplicate"
)

// summaryCounts is what a summary of refusals stands for: how many records, and how many of them refusals (the
// copies of stored envelopes it counts are not). One refusal when it cannot be read.
func summaryCounts(r audit.Record) (records, refusals int) {
	var s struct {
		Count  int            `json:"count"`
		ByCode map[string]int `json:"by_code"`
	}
	if json.Unmarshal(r.Data, &s) != nil || s.Count < 1 {
		return 1, 1
	}
	return s.Count, max(0, s.Count-s.ByCode[codeDuplicate])
}

func (d *Detector) rateThreshold(id *identity) float64 {
	return max(float64(d.cfg.MinRate), d.cfg.RateFactor*id.meanEvents)
}

// refusalThreshold: while an identity is learning, its few windows are no baseline (its first refusals would
// raise the bar they are judged by), so MinRefusals alone applies.
func (d *Detector) refusalThreshold(id *identity, learned bool) float64 {
	if !learned {
		return float64(d.cfg.MinRefusals)
	}
	return max(float64(d.cfg.MinRefusals), d.cfg.RateFactor*id.meanRefused)
}

// identity returns actor's baseline, making one (and forgetting the one not seen for longest, at the bound).
func (d *Detector) identity(actor string, at time.Time) *identity {
	if id, ok := d.ids[actor]; ok {
		return id
	}
	if len(d.ids) >= d.cfg.MaxIdentities {
		var oldest string
		var when time.Time
		for k, v := range d.ids {
			if oldest == "" || v.last.Before(when) {
				oldest, when = k, v.last
			}
		}
		delete(d.ids, oldest)
	}
	id := &identity{first: at, last: at, window: at.Truncate(d.cfg.Window), items: map[Rule]map[string]struct{}{}}
	d.ids[actor] = id
	return id
}

// maxEmptyWindows bounds the loop over windows without records: after this many the averages are near zero
// anyway.
const maxEmptyWindows = 200

// advance closes the current window if at is past it, and the empty windows between.
func (d *Detector) advance(id *identity, at time.Time) {
	start := at.Truncate(d.cfg.Window)
	if !start.After(id.window) {
		return
	}
	// A window that alerted is learned at its threshold only, so that one burst does not become the norm at once.
	events, refused := float64(id.events), float64(id.refusals)
	if id.rateAlerted {
		events = min(events, d.rateThreshold(id))
	}
	if id.refAlerted {
		refused = min(refused, d.refusalThreshold(id, true))
	}
	id.learn(events, refused)
	empty := int(start.Sub(id.window)/d.cfg.Window) - 1
	for i := 0; i < min(empty, maxEmptyWindows); i++ {
		id.learn(0, 0)
	}
	if empty == 0 {
		id.prevEvents, id.prevRefusals, id.prevRateAlert, id.prevRefAlert = id.events, id.refusals, id.rateAlerted, id.refAlerted
	} else {
		id.prevEvents, id.prevRefusals, id.prevRateAlert, id.prevRefAlert = 0, 0, false, false
	}
	id.window, id.events, id.refusals, id.rateAlerted, id.refAlerted = start, 0, 0, false, false
}

// recent estimates the count over the last window at at (a sliding window): the current window's count plus the
// previous window's, weighted by the part of it still within the last window, so that a burst across the border
// of two windows is seen whole. After a window that alerted only the current window counts, so that one burst
// does not alert twice.
func (id *identity) recent(at time.Time, window time.Duration, cur, prev int, prevAlerted bool) float64 {
	if prevAlerted || prev == 0 {
		return float64(cur)
	}
	left := 1 - float64(at.Sub(id.window))/float64(window)
	return float64(cur) + float64(prev)*max(left, 0)
}

// learn adds a closed window to the averages: the first windows weigh alike, then each new one a twentieth.
func (id *identity) learn(events, refused float64) {
	id.windows++
	alpha := max(1/float64(id.windows), 1.0/20)
	id.meanEvents += alpha * (events - id.meanEvents)
	id.meanRefused += alpha * (refused - id.meanRefused)
}

// novelties adds what r used to id's sets and returns an alert for each thing that was not in them.
func (d *Detector) novelties(id *identity, r audit.Record) []Alert {
	var out []Alert
	seen := func(rule Rule, item, what string) {
		if item == "" {
			return
		}
		set := id.items[rule]
		if set == nil {
			set = map[string]struct{}{}
			id.items[rule] = set
		}
		if _, ok := set[item]; ok || len(set) >= maxItems {
			return
		}
		set[item] = struct{}{}
		out = append(out, Alert{Rule: rule, Severity: SeverityLow, Observed: 1, Threshold: 1, Item: item,
			Message: fmt.Sprintf(what, item)})
	}
	switch r.Kind {
	case "envelope.accepted":
		var h struct {
			To   string `json:"to"`
			Type string `json:"type"`
		}
		if json.Unmarshal(r.Data, &h) == nil {
			seen(RuleNewPeer, h.To, "sent an envelope to %s, a peer it never sent to before")
			seen(RuleNewMessageType, h.Type, "sent an envelope of type %s, which it never sent before")
		}
	case "mcp.call", "mcp.prompt", "mcp.read":
		var c struct {
			Tool     string `json:"tool"`
			Prompt   string `json:"prompt"`
			Resource string `json:"resource"`
		}
		if json.Unmarshal(r.Data, &c) == nil {
			seen(RuleNewTool, c.Tool, "called the tool %s, which it never called before")
			seen(RuleNewTool, prefixed("prompt:", c.Prompt), "got %s, which it never got before")
			seen(RuleNewTool, prefixed("resource:", c.Resource), "read %s, which it never read before")
		}
	case "llm.call":
		var c struct {
			Model     string `json:"model"`
			Requested string `json:"model_requested"`
		}
		if json.Unmarshal(r.Data, &c) == nil {
			m := c.Model
			if m == "" {
				m = c.Requested
			}
			seen(RuleNewModel, m, "called the model %s, which it never called before")
		}
	}
	return out
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}

func clip(s string) string {
	if len(s) > 160 {
		return s[:160] + "..."
	}
	return s
}
