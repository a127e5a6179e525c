package posture

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/internal/audit"
)

// Usage is what the audit trail says identities used, summarised from its records by Add. The controller reads
// the records (the newest ones, up to a bound) and passes the summary in State: package posture reads nothing.
type Usage struct {
	// From is the time of the oldest record added; FromStart says it was the trail's first record, so nothing
	// older exists. Without FromStart, nothing is known of what happened before From.
	From      time.Time
	FromStart bool
	Records   int // records added
	// Last is, per SPIFFE ID, the time of its newest record of use; Workgroups the same per workgroup, Gateways
	// per gateway (the SPIFFE ID of the gateway the record came through).
	Last       map[string]time.Time
	Workgroups map[string]map[string]time.Time
	Gateways   map[string]map[string]time.Time

	sessions map[string]string // session ID to workgroup, from the session records seen
}

// useKinds are the record kinds that show an identity using what it was granted, besides any record in one of its
// workgroups; a refused attempt is no use.
var useKinds = map[string]bool{"discover": true, "session.propose": true, "session.accept": true,
	"session.transition": true, "envelope.accepted": true, "advertisement.published": true,
	"mcp.call": true, "mcp.prompt": true, "mcp.read": true, "llm.call": true}

// Add counts one record, in the trail's order (oldest first).
func (u *Usage) Add(r audit.Record) {
	if u.Records == 0 || r.Time.Before(u.From) {
		u.From = r.Time
	}
	u.Records++
	if u.sessions == nil {
		u.sessions = map[string]string{}
	}
	if r.Session != "" && r.Workgroup != "" {
		u.sessions[r.Session] = r.Workgroup
	}
	if r.Decision == audit.DecisionDeny || r.Actor == "" {
		return
	}
	// Any allowed record of an identity in a workgroup uses its membership: taking part in sessions, and for its
	// administrators administering it.
	wg := r.Workgroup
	if wg == "" && r.Session != "" {
		wg = u.sessions[r.Session]
	}
	if !useKinds[r.Kind] && wg == "" {
		return
	}
	if u.Last == nil {
		u.Last = map[string]time.Time{}
	}
	later(u.Last, r.Actor, r.Time)
	if wg != "" {
		laterIn(&u.Workgroups, r.Actor, wg, r.Time)
	}
	if strings.HasPrefix(r.Kind, "mcp.") || strings.HasPrefix(r.Kind, "llm.") {
		// The controller wraps a gateway's record as {"via": <gateway>, "detail": ...}.
		var d struct {
			Via string `json:"via"`
		}
		if json.Unmarshal(r.Data, &d) == nil && d.Via != "" {
			laterIn(&u.Gateways, r.Actor, d.Via, r.Time)
		}
	}
}

// later keeps in m[key] the latest of what is there and t.
func later(m map[string]time.Time, key string, t time.Time) {
	if t.After(m[key]) {
		m[key] = t
	}
}

// laterIn is later for m[outer][inner], making the maps it needs.
func laterIn(m *map[string]map[string]time.Time, outer, inner string, t time.Time) {
	if *m == nil {
		*m = map[string]map[string]time.Time{}
	}
	if (*m)[outer] == nil {
		(*m)[outer] = map[string]time.Time{}
	}
	later((*m)[outer], inner, t)
}

// covers reports whether the summary covers everything since t.
func (u Usage) covers(t time.Time) bool { return u.FromStart || u.Records > 0 && !u.From.After(t) }
