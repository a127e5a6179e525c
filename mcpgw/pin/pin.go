// Package pin remembers tool definitions by digest, the gateway's defence against rug pulls (a server that
// changes what a tool says or does after it was approved) and tool poisoning (instructions for the model hidden
// in a definition).
//
// The first time a tool definition is seen its SHA-256 over the canonical JSON of the whole definition (name,
// title, description, input and output schemas, annotations, icons, _meta) is pinned. It is approved at once
// only if its backend is trusted and the scanner found nothing; otherwise it waits for an administrator. When a
// backend later serves a different definition under the same name, the tool is quarantined: hidden and refused
// until an administrator approves the new version (or the backend goes back to the approved one).
package pin

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/umbra-mesh/umbra/mcpgw/canon"
	"github.com/umbra-mesh/umbra/mcpgw/internal/kv"
	"github.com/umbra-mesh/umbra/mcpgw/scan"
)

// State is where a tool definition stands.
type State string

// The states. Only Approved tools are shown and callable.
const (
	Approved    State = "approved"
	Pending     State = "pending"     // first seen, waiting for an administrator
	Quarantined State = "quarantined" // differs from the approved version, waiting for an administrator
	Denied      State = "denied"      // an administrator refused this version
)

// Event is what an observation changed.
type Event string

// The events.
const (
	NoChange Event = ""
	Pinned   Event = "pinned"   // first seen and approved (trusted backend, nothing flagged)
	Held     Event = "held"     // first seen, or changed before any approval, and held for approval
	Changed  Event = "changed"  // changed after approval: quarantined
	Restored Event = "restored" // back to the approved version
)

// ErrStale is returned when an approval or denial names a version that is not the one waiting.
var ErrStale = errors.New("pin: that version is not the one awaiting a decision")

// ErrNotFound is returned for tools never seen.
var ErrNotFound = errors.New("pin: no such tool")

const maxDenied = 16

// Record is what is known about one tool of one backend.
type Record struct {
	Backend     string          `json:"backend"`
	Tool        string          `json:"tool"` // the name on the backend
	FirstSeen   time.Time       `json:"first_seen"`
	Approved    string          `json:"approved,omitempty"` // digest of the approved version
	ApprovedDef json.RawMessage `json:"approved_def,omitempty"`
	ApprovedBy  string          `json:"approved_by,omitempty"`
	ApprovedAt  time.Time       `json:"approved_at,omitzero"`
	// The version waiting for a decision, if any.
	Pending      string          `json:"pending,omitempty"`
	PendingDef   json.RawMessage `json:"pending_def,omitempty"`
	PendingSince time.Time       `json:"pending_since,omitzero"`
	Findings     []scan.Finding  `json:"findings,omitempty"` // of the pending version
	Denied       []string        `json:"denied,omitempty"`   // digests refused, most recent last
}

// StateOf returns the state of the version with digest d.
func (r Record) StateOf(d string) State {
	switch {
	case d != "" && d == r.Approved:
		return Approved
	case slices.Contains(r.Denied, d):
		return Denied
	case r.Approved != "":
		return Quarantined
	default:
		return Pending
	}
}

// Digest returns the pin digest of a definition and its canonical form.
func Digest(def json.RawMessage) (string, []byte, error) {
	d, c, err := canon.Digest(def)
	if err != nil {
		return "", nil, fmt.Errorf("pin: %w", err)
	}
	return d, c, nil
}

// Observation is the outcome of seeing a definition.
type Observation struct {
	Digest string
	State  State
	Event  Event
	Record Record
}

// Store keeps records in a bucket; it is safe for concurrent use, also by several processes sharing a bucket.
type Store struct {
	t kv.Table[Record]
}

// NewStore returns a store over b.
func NewStore(b kv.Bucket) *Store { return &Store{t: kv.Table[Record]{B: b}} }

func key(backend, tool string) string {
	return backend + "." + base64.RawURLEncoding.EncodeToString([]byte(tool))
}

var errNoChange = errors.New("no change")

// Observe records that backend serves def (a tool definition as JSON) under the name tool. findings are the
// scanner's on def; trusted says whether a first sight may be approved without an administrator.
func (s *Store) Observe(ctx context.Context, backend, tool string, def json.RawMessage, findings []scan.Finding, trusted bool) (Observation, error) {
	d, c, err := Digest(def)
	if err != nil {
		return Observation{}, err
	}
	now := time.Now().UTC()
	obs := Observation{Digest: d}
	r, err := s.t.Update(ctx, key(backend, tool), func(r *Record, exists bool) error {
		obs.Event = NoChange
		if !exists {
			*r = Record{Backend: backend, Tool: tool, FirstSeen: now}
			if trusted && len(findings) == 0 {
				r.Approved, r.ApprovedDef, r.ApprovedBy, r.ApprovedAt = d, c, "trusted backend", now
				obs.Event = Pinned
			} else {
				r.hold(d, c, findings, now)
				obs.Event = Held
			}
			return nil
		}
		switch r.StateOf(d) {
		case Approved:
			if r.Pending == "" {
				return errNoChange
			}
			r.clearPending()
			obs.Event = Restored
		case Denied:
			return errNoChange
		default:
			if r.Pending == d {
				return errNoChange
			}
			r.hold(d, c, findings, now)
			obs.Event = Held
			if r.Approved != "" {
				obs.Event = Changed
			}
		}
		return nil
	})
	if errors.Is(err, errNoChange) {
		err = nil
	}
	if err != nil {
		return Observation{}, fmt.Errorf("pin: %w", err)
	}
	obs.Record, obs.State = r, r.StateOf(d)
	return obs, nil
}

func (r *Record) hold(d string, def []byte, findings []scan.Finding, now time.Time) {
	r.Pending, r.PendingDef, r.PendingSince, r.Findings = d, def, now, findings
}

func (r *Record) clearPending() {
	r.Pending, r.PendingDef, r.PendingSince, r.Findings = "", nil, time.Time{}, nil
}

// Approve approves the waiting version with digest d of a tool; by names the administrator.
func (s *Store) Approve(ctx context.Context, backend, tool, d, by string) (Record, error) {
	return s.decide(ctx, backend, tool, d, func(r *Record) {
		r.Approved, r.ApprovedDef, r.ApprovedBy, r.ApprovedAt = r.Pending, r.PendingDef, by, time.Now().UTC()
		r.Denied = slices.DeleteFunc(r.Denied, func(x string) bool { return x == d })
	})
}

// Deny refuses the waiting version with digest d of a tool. The tool stays hidden while the backend serves it.
func (s *Store) Deny(ctx context.Context, backend, tool, d, by string) (Record, error) {
	return s.decide(ctx, backend, tool, d, func(r *Record) {
		r.Denied = append(r.Denied, d)
		if len(r.Denied) > maxDenied {
			r.Denied = r.Denied[len(r.Denied)-maxDenied:]
		}
	})
}

func (s *Store) decide(ctx context.Context, backend, tool, d string, apply func(*Record)) (Record, error) {
	r, err := s.t.Update(ctx, key(backend, tool), func(r *Record, exists bool) error {
		if !exists {
			return ErrNotFound
		}
		if d == "" || d != r.Pending {
			return ErrStale
		}
		apply(r)
		r.clearPending()
		return nil
	})
	if err != nil {
		return Record{}, fmt.Errorf("pin: %s/%s: %w", backend, tool, err)
	}
	return r, nil
}

// Get returns the record of a tool.
func (s *Store) Get(ctx context.Context, backend, tool string) (Record, error) {
	r, err := s.t.Get(ctx, key(backend, tool))
	if errors.Is(err, kv.ErrNotFound) {
		return Record{}, ErrNotFound
	}
	return r, err
}

// All returns every record.
func (s *Store) All(ctx context.Context) ([]Record, error) {
	return s.t.All(ctx)
}
