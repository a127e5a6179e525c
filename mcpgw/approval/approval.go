// Package approval holds sensitive tool calls for a human decision.
//
// A call that policy marks sensitive opens a request bound to {caller, tool, arguments digest, policy
// version}; the call then waits. An administrator approves or denies it; no decision before the deadline is a
// denial. An approval is valid until its expiry and for one call only: the call that waited for it, or, if the
// gateway stopped holding that call before the decision, one retry with the same binding. A call whose binding
// differs in anything (another caller, another tool, changed arguments, a policy changed since) or that comes
// after the expiry is refused. A request whose call was cancelled (by its caller, or because the caller went
// away) is withdrawn: it can no longer be approved, and nothing runs on it.
package approval

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/umbra-mesh/umbra/mcpgw/internal/kv"
)

// Status is where a request stands.
type Status string

// The statuses.
const (
	Pending  Status = "pending"
	Approved Status = "approved"
	Denied   Status = "denied"
	Expired  Status = "expired" // no decision before the deadline: a denial
	Used     Status = "used"    // approved, and a call has gone through on it
	// Cancelled: the call was cancelled before it went through (its caller cancelled it or went away); the
	// request is withdrawn and can be neither approved nor used.
	Cancelled Status = "cancelled"
)

// Errors that name why a request cannot be decided or used.
var (
	ErrNotFound = errors.New("approval: no such request")
	ErrDecided  = errors.New("approval: already decided")
	ErrExpired  = errors.New("approval: expired")
	ErrMismatch = errors.New("approval: does not cover this call")
	ErrNotValid = errors.New("approval: not approved")
)

// Binding is what an approval covers.
type Binding struct {
	Caller        string `json:"caller"` // SPIFFE ID
	Tool          string `json:"tool"`   // the tool's name as the caller sees it
	ArgsDigest    string `json:"args_digest"`
	PolicyVersion string `json:"policy_version"`
}

// mismatch names the first field in which b differs from want, or "".
func (b Binding) mismatch(want Binding) string {
	switch {
	case b.Caller != want.Caller:
		return "caller"
	case b.Tool != want.Tool:
		return "tool"
	case b.ArgsDigest != want.ArgsDigest:
		return "arguments"
	case b.PolicyVersion != want.PolicyVersion:
		return "policy version"
	}
	return ""
}

// Request is one call waiting for, or having had, a decision.
type Request struct {
	ID string `json:"id"`
	Binding
	Backend    string          `json:"backend"`
	Arguments  json.RawMessage `json:"arguments,omitempty"` // for the reviewer, secrets redacted
	Reason     string          `json:"reason,omitempty"`    // why it needs approval
	Status     Status          `json:"status"`
	Created    time.Time       `json:"created"`
	Deadline   time.Time       `json:"deadline"` // decide by
	DecidedBy  string          `json:"decided_by,omitempty"`
	DecidedAt  time.Time       `json:"decided_at,omitzero"`
	ValidUntil time.Time       `json:"valid_until,omitzero"` // an approval can be used until then
	UsedAt     time.Time       `json:"used_at,omitzero"`
}

// Config tunes a Manager. Zero values select the defaults.
type Config struct {
	Timeout time.Duration // how long a request waits for a decision; default 2 minutes
	TTL     time.Duration // how long an approval stays usable after the decision; default 10 minutes
	// Poll, if set, re-reads a waiting request this often, for decisions taken by another process sharing the
	// bucket. Decisions taken through this Manager wake waiters at once.
	Poll time.Duration
	// Retain is how long finished requests are kept for listing; default 24 hours.
	Retain time.Duration
}

// Manager opens, decides and redeems requests. It is safe for concurrent use.
type Manager struct {
	t   kv.Table[Request]
	cfg Config

	mu      sync.Mutex
	waiters map[string]chan struct{} // closed (and replaced) when the request changes
}

// New returns a manager keeping requests in b.
func New(b kv.Bucket, cfg Config) *Manager {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 10 * time.Minute
	}
	if cfg.Retain <= 0 {
		cfg.Retain = 24 * time.Hour
	}
	return &Manager{t: kv.Table[Request]{B: b}, cfg: cfg, waiters: make(map[string]chan struct{})}
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "apr_" + hex.EncodeToString(b[:])
}

// Open records a new pending request for a call with binding b.
func (m *Manager) Open(ctx context.Context, b Binding, backend string, args json.RawMessage, reason string) (Request, error) {
	now := time.Now().UTC()
	r := Request{ID: newID(), Binding: b, Backend: backend, Arguments: args, Reason: reason, Status: Pending,
		Created: now, Deadline: now.Add(m.cfg.Timeout)}
	_, err := m.t.Update(ctx, r.ID, func(v *Request, exists bool) error {
		if exists {
			return errors.New("approval: request ID collision")
		}
		*v = r
		return nil
	})
	if err != nil {
		return Request{}, err
	}
	return r, nil
}

func (m *Manager) changed(id string) <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	ch := m.waiters[id]
	if ch == nil {
		ch = make(chan struct{})
		m.waiters[id] = ch
	}
	return ch
}

func (m *Manager) notify(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ch := m.waiters[id]; ch != nil {
		close(ch)
		delete(m.waiters, id)
	}
}

// Wait waits until request id is decided or its deadline passes (it is then marked Expired), and returns it.
// If ctx ends first, Wait returns ctx's error and the request stays pending.
func (m *Manager) Wait(ctx context.Context, id string) (Request, error) {
	var poll <-chan time.Time
	if m.cfg.Poll > 0 {
		t := time.NewTicker(m.cfg.Poll)
		defer t.Stop()
		poll = t.C
	}
	for {
		ch := m.changed(id)
		r, err := m.Get(ctx, id)
		if err != nil {
			return r, err
		}
		if r.Status != Pending {
			return r, nil
		}
		left := time.Until(r.Deadline)
		if left <= 0 {
			return m.expire(ctx, id)
		}
		timer := time.NewTimer(left)
		select {
		case <-ctx.Done():
			timer.Stop()
			return r, ctx.Err()
		case <-ch:
		case <-poll:
		case <-timer.C:
		}
		timer.Stop()
	}
}

func (m *Manager) expire(ctx context.Context, id string) (Request, error) {
	r, err := m.t.Update(ctx, id, func(r *Request, exists bool) error {
		if !exists {
			return ErrNotFound
		}
		if r.Status == Pending {
			r.Status = Expired
		}
		return nil
	})
	m.notify(id)
	return r, err
}

// Cancel withdraws request id because its call was cancelled: a pending request, or an approval not used
// yet, becomes Cancelled. It reports whether it withdrew anything (false when the request was already
// decided otherwise, expired or used).
func (m *Manager) Cancel(ctx context.Context, id string) (Request, bool, error) {
	var withdrawn bool
	r, err := m.t.Update(ctx, id, func(r *Request, exists bool) error {
		withdrawn = false
		if !exists {
			return ErrNotFound
		}
		if r.Status == Pending || r.Status == Approved {
			r.Status, r.DecidedAt, withdrawn = Cancelled, time.Now().UTC(), true
		}
		return nil
	})
	if errors.Is(err, kv.ErrNotFound) {
		err = ErrNotFound
	}
	if err != nil {
		return r, false, err
	}
	m.notify(id)
	return r, withdrawn, nil
}

// Decide approves or denies request id; by names who decided. If digest is set, it must be the request's
// arguments digest: the decision is about the arguments the reviewer saw.
func (m *Manager) Decide(ctx context.Context, id string, approve bool, by, digest string) (Request, error) {
	now := time.Now().UTC()
	var late bool
	r, err := m.t.Update(ctx, id, func(r *Request, exists bool) error {
		late = false
		switch {
		case !exists:
			return ErrNotFound
		case r.Status == Pending && !now.Before(r.Deadline):
			r.Status, late = Expired, true
			return nil
		case r.Status == Cancelled:
			return fmt.Errorf("%w: the call was cancelled by its caller and the request withdrawn", ErrDecided)
		case r.Status != Pending:
			return fmt.Errorf("%w (%s)", ErrDecided, r.Status)
		case digest != "" && digest != r.ArgsDigest:
			return fmt.Errorf("%w: the arguments are not the ones reviewed", ErrMismatch)
		}
		r.Status, r.DecidedBy, r.DecidedAt = Denied, by, now
		if approve {
			r.Status, r.ValidUntil = Approved, now.Add(m.cfg.TTL)
		}
		return nil
	})
	if errors.Is(err, kv.ErrNotFound) {
		err = ErrNotFound
	}
	if err != nil {
		return r, err
	}
	m.notify(id)
	if late {
		return r, ErrExpired
	}
	return r, nil
}

// Redeem uses the approval id for a call with binding b: it must be approved, unused, unexpired and bound to
// exactly b. On success the approval is spent.
func (m *Manager) Redeem(ctx context.Context, id string, b Binding) (Request, error) {
	now := time.Now().UTC()
	r, err := m.t.Update(ctx, id, func(r *Request, exists bool) error {
		switch {
		case !exists:
			return ErrNotFound
		case r.Binding.Caller != b.Caller:
			return ErrNotFound // another caller's request does not exist for this one
		}
		if f := b.mismatch(r.Binding); f != "" {
			return fmt.Errorf("%w: %s differ", ErrMismatch, f)
		}
		switch r.Status {
		case Approved:
		case Used:
			return fmt.Errorf("%w: already used", ErrNotValid)
		default:
			return fmt.Errorf("%w: %s", ErrNotValid, r.Status)
		}
		if !now.Before(r.ValidUntil) {
			return ErrExpired
		}
		r.Status, r.UsedAt = Used, now
		return nil
	})
	if errors.Is(err, kv.ErrNotFound) {
		err = ErrNotFound
	}
	if err == nil {
		m.notify(id)
	}
	return r, err
}

// Find returns the request a call with binding b can go on with: an approved, unused, unexpired one if there
// is one, else one still pending (so that a retry waits for the same decision instead of asking again).
func (m *Manager) Find(ctx context.Context, b Binding) (Request, bool, error) {
	all, err := m.all(ctx)
	if err != nil {
		return Request{}, false, err
	}
	now := time.Now()
	var pending *Request
	for i, r := range all {
		switch {
		case r.Binding != b:
		case r.Status == Approved && now.Before(r.ValidUntil):
			return r, true, nil
		case r.Status == Pending && now.Before(r.Deadline) && pending == nil:
			pending = &all[i]
		}
	}
	if pending != nil {
		return *pending, true, nil
	}
	return Request{}, false, nil
}

// Get returns request id.
func (m *Manager) Get(ctx context.Context, id string) (Request, error) {
	r, err := m.t.Get(ctx, id)
	if errors.Is(err, kv.ErrNotFound) {
		return r, ErrNotFound
	}
	return r, err
}

// List returns the requests still pending (pending=true), or all those kept (pending=false), oldest first.
func (m *Manager) List(ctx context.Context, pending bool) ([]Request, error) {
	all, err := m.all(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := make([]Request, 0, len(all))
	for _, r := range all {
		if r.Status == Pending && !now.Before(r.Deadline) {
			r.Status = Expired // lazily: nobody waits any more
		}
		if pending && r.Status != Pending {
			continue
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Request) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// all returns every request, deleting those finished longer ago than the retention period.
func (m *Manager) all(ctx context.Context) ([]Request, error) {
	all, err := m.t.All(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	kept := all[:0]
	for _, r := range all {
		end := r.Deadline
		if r.ValidUntil.After(end) {
			end = r.ValidUntil
		}
		if now.Sub(end) > m.cfg.Retain {
			_ = m.t.Delete(ctx, r.ID)
			continue
		}
		kept = append(kept, r)
	}
	return kept, nil
}
