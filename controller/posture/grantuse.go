package posture

import "time"

// GrantUse is what the overlay showed identities using: when each last dialed a service (a circuit it dialed)
// or bound one (a circuit it hosted, or a listen), as the controller records it. The controller writes it
// coarsely, at most once per identity, service and dial or bind in each Granularity, so a recorded time may be
// up to Granularity older than the newest use, and a crash loses at most Granularity of evidence.
type GrantUse struct {
	// Since is when the controller began recording; zero if it never did, and then nothing is known.
	Since       time.Time
	Granularity time.Duration
	// Dial and Bind are, per SPIFFE ID and service, the recorded time of the newest use.
	Dial, Bind map[string]map[string]time.Time
}

// covers reports whether the records cover everything since t.
func (g GrantUse) covers(t time.Time) bool { return !g.Since.IsZero() && !g.Since.After(t) }

// usedSince reports whether a recorded use in m of (id, service) may have been at or after t: a use recorded
// at r stands for every use up to r+Granularity.
func (g GrantUse) usedSince(m map[string]map[string]time.Time, id, service string, t time.Time) bool {
	r := m[id][service]
	return !r.IsZero() && r.Add(g.Granularity).After(t)
}

// last is the newest recorded use of any grant by id; zero if none.
func (g GrantUse) last(id string) time.Time {
	var out time.Time
	for _, m := range []map[string]map[string]time.Time{g.Dial, g.Bind} {
		for _, t := range m[id] {
			if t.After(out) {
				out = t
			}
		}
	}
	return out
}

// lastUsed is the inventory's view of id's grants: per grant it holds ("dial:SERVICE", "bind:SERVICE"), the
// recorded time of its newest use, in UTC; nil if none.
func (g GrantUse) lastUsed(id Identity) map[string]time.Time {
	var out map[string]time.Time
	for _, k := range []struct {
		kind     string
		services []string
		m        map[string]map[string]time.Time
	}{{"dial", id.Dial, g.Dial}, {"bind", id.Bind, g.Bind}} {
		for _, svc := range k.services {
			if t := k.m[id.ID.String()][svc]; !t.IsZero() {
				if out == nil {
					out = map[string]time.Time{}
				}
				out[k.kind+":"+svc] = t.UTC()
			}
		}
	}
	return out
}
