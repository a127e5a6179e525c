// Package pin remembers definitions by digest, the gateway's defence against rug pulls (a server that
// changes what a tool, prompt or resource says or does after it was approved) and poisoning (instructions for
// the model hidden in a definition).
//
// The first time a definition is seen its SHA-256 over the canonical JSON of the whole definition is pinned:
// for a tool its name, title, description, input and output schemas, annotations, icons and _meta; for a
// prompt its listing and the messages it returns; for a resource its listing and, for a static resource, the
// hash of its content. It is approved at once only if its backend is trusted and the scanner found nothing;
// otherwise it waits for an administrator. When a backend later serves a different definition under the same
// name, the item is quarantined: hidden and refused until an administrator approves the new version (or the
// backend goes back to the approved one).
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

// Kind is what sort of item a record pins.
type Kind string

// The kinds. The zero value is a tool: records written before prompts and resources were pinned have no kind.
const (
	Tool     Kind = "tool"
	Prompt   Kind = "prompt"
	Resource Kind = "resource" // a resource or a resource template, named by its URI (template)
)

// ParseKind accepts "tool", "prompt", "resource" and "" (a tool).
func ParseKind(s string) (Kind, error) {
	switch Kind(s) {
	case "", Tool:
		return Tool, nil
	case Prompt, Resource:
		return Kind(s), nil
	}
	return "", fmt.Errorf("pin: unknown kind %q: use tool, prompt or resource", s)
}

// Ref names one item of one backend.
type Ref struct {
	Kind    Kind
	Backend string
	Name    string // the name on the backend: a tool's or prompt's name, a resource's URI or URI template
}

func (r Ref) kind() Kind {
	if r.Kind == "" {
		return Tool
	}
	return r.Kind
}

func (r Ref) String() string { return string(r.kind()) + " " + r.Backend + "/" + r.Name }

// State is where a definition stands.
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

// ErrNotFound is returned for items never seen.
var ErrNotFound = errors.New("pin: no such item")

const maxDenied = 16

// Record is what is known about one item of one backend.
type Record struct {
	Kind        Kind            `json:"kind,omitempty"` // "" for a tool
	Backend     string          `json:"backend"`
	Tool        string          `json:"tool"` // the name on the backend (for a resource its URI)
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

// Ref names the item the record is about.
func (r Record) Ref() Ref {
	k := r.Kind
	if k == "" {
		k = Tool
	}
	return Ref{Kind: k, Backend: r.Backend, Name: r.Tool}
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

// key: "<backend>.<name>" for a tool (as before prompts and resources were pinned), "<backend>.<kind>.<name>"
// otherwise, with the name base64url-encoded (no dots, so the two forms never collide).
func key(r Ref) string {
	name := base64.RawURLEncoding.EncodeToString([]byte(r.Name))
	if r.kind() == Tool {
		return r.Backend + "." + name
	}
	return r.Backend + "." + string(r.Kind) + "." + name
}

var errNoChange = errors.New("no change")

// Observe records that the backend serves def (a definition as JSON) as the item ref. findings are the
// scanner's on def; trusted says whether a first sight may be approved without an administrator.
func (s *Store) Observe(ctx context.Context, ref Ref, def json.RawMessage, findings []scan.Finding, trusted bool) (Observation, error) {
	d, c, err := Digest(def)
	if err != nil {
		return Observation{}, err
	}
	now := time.Now().UTC()
	obs := Observation{Digest: d}
	kind := ref.kind()
	if kind == Tool {
		kind = ""
	}
	r, err := s.t.Update(ctx, key(ref), func(r *Record, exists bool) error {
		obs.Event = NoChange
		if !exists {
			*r = Record{Kind: kind, Backend: ref.Backend, Tool: ref.Name, FirstSeen: now}
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

// Approve approves the waiting version with digest d of an item; by names the administrator.
func (s *Store) Approve(ctx context.Context, ref Ref, d, by string) (Record, error) {
	return s.decide(ctx, ref, d, func(r *Record) {
		r.Approved, r.ApprovedDef, r.ApprovedBy, r.ApprovedAt = r.Pending, r.PendingDef, by, time.Now().UTC()
		r.Denied = slices.DeleteFunc(r.Denied, func(x string) bool { return x == d })
	})
}

// Deny refuses the waiting version with digest d of an item. It stays hidden while the backend serves it.
func (s *Store) Deny(ctx context.Context, ref Ref, d, by string) (Record, error) {
	return s.decide(ctx, ref, d, func(r *Record) {
		r.Denied = append(r.Denied, d)
		if len(r.Denied) > maxDenied {
			r.Denied = r.Denied[len(r.Denied)-maxDenied:]
		}
	})
}

func (s *Store) decide(ctx context.Context, ref Ref, d string, apply func(*Record)) (Record, error) {
	r, err := s.t.Update(ctx, key(ref), func(r *Record, exists bool) error {
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
		return Record{}, fmt.Errorf("pin: %s: %w", ref, err)
	}
	return r, nil
}

// Get returns the record of an item.
func (s *Store) Get(ctx context.Context, ref Ref) (Record, error) {
	r, err := s.t.Get(ctx, key(ref))
	if errors.Is(err, kv.ErrNotFound) {
		return Record{}, ErrNotFound
	}
	return r, err
}

// All returns every record.
func (s *Store) All(ctx context.Context) ([]Record, error) {
	return s.t.All(ctx)
}
