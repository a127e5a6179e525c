package audit

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// ErrNotSent marks an append made through a remote writer that never reached it (no connection to the controller
// could be made): nothing of the record was stored, so it can be appended again later without being stored twice.
var ErrNotSent = errors.New("audit: record not sent")

// HeldRecord is a record held by Held, with the record ID it is appended under whenever it is tried (the
// controller stores a record once per ID within its retry window) and the time the first try under that ID that
// may have reached the trail began.
type HeldRecord struct {
	ID     string    `json:"id"`
	Record Record    `json:"record"`
	Sent   time.Time `json:"sent,omitzero"`  // zero: no try has been sent yet
	Asked  int       `json:"asked,omitzero"` // how often the trail said it was not stored after all (Retry)

	key  string                      // in the bucket; empty when held in memory only
	rev  uint64                      // the bucket's revision of key
	mark func(first time.Time) error // set by Retry: see Sending
}

// Sending is what a writer calls when a try of e has a connection to the trail, before any of the record is
// written (Held.Retry): it notes, in the bucket, that the record may be stored from then on, as first tried at
// first. If it fails, the writer must not send the try.
func (e HeldRecord) Sending(first time.Time) error {
	if e.mark == nil {
		return nil
	}
	return e.mark(first)
}

// ErrRefused says the trail answered a record and did not store it (malformed, over a budget, its ID used for
// another): sent again, it would be refused again.
var ErrRefused = errors.New("audit: record refused")

// heldAsks bounds how often a held record whose answers keep being lost is asked after and sent anew.
const heldAsks = 3

// ErrAskLater says a question about a held record cannot be answered yet (HeldFinder).
var ErrAskLater = errors.New("audit: ask again later")

// HeldFinder tells whether a held record whose try may have been stored, at e.Sent, was stored: for a record
// that can no longer be sent again (tried more than api.AuditRetryWindow ago), asked from api.AuditFindAfter
// after that try on. It fails with ErrNotSent when it could not ask, ErrAskLater when it asked too early.
type HeldFinder interface {
	FindHeld(ctx context.Context, e HeldRecord) (bool, error)
}

// OnceAppender is a writer that appends a held record under its ID (HeldRecord), so that a record sent again
// within the trail's retry window is stored once.
type OnceAppender interface {
	AppendOnce(ctx context.Context, e HeldRecord) error
}

// Held keeps records whose append was not sent (ErrNotSent), or whose answer was lost (HoldFailed), oldest first
// and at most Max of them, so that a writer that cannot refuse what they record (it has already happened) appends
// them once the trail can be reached again, instead of losing them.
//
// With a bucket (Open) they survive the process: each is written to it (fsynced) before Hold returns, marked
// there before a try that may reach the trail, and removed once stored. A process killed at any point leaves
// each record either stored, or in the bucket to be appended by the next run (Open), never both unnoticed: a
// record whose try may have reached the trail is tried again under the same ID and the same first-try time, so
// the controller answers it as a repeat within its window; after the window it is asked after (Retry's find)
// and sent again only if it was not stored. Without a bucket, records held when the process dies are lost.
//
// Safe for concurrent use; the zero value holds none (Max 0).
type Held struct {
	Max int
	// repeatWindow and findAfter are api.AuditRetryWindow and api.AuditFindAfter, unless a test set them.
	repeatWindow, findAfter time.Duration

	mu     sync.Mutex
	bucket *HeldBucket // nil: in memory only
	rs     []HeldRecord
}

// Open keeps the records held from now on in b, and takes the records a previous run left there, ahead of any
// held so far, returning how many. Call it once, before Retry. Records it cannot read are named in the error and
// left in the bucket. Records held before Open reach the bucket when they are first tried.
func (h *Held) Open(ctx context.Context, b *HeldBucket) (int, error) {
	rs, err := b.load(ctx)
	h.mu.Lock()
	h.bucket = b
	h.rs = append(rs, h.rs...)
	h.mu.Unlock()
	return len(rs), err
}

// Hold keeps r for Retry and reports whether it did (false: Max records are held already). The record's data, a
// JSON object or nothing, gains "held_from": the time it was first tried, since the trail times a record when
// it stores it. An error says the bucket could not keep it: it is held in memory only.
func (h *Held) Hold(ctx context.Context, r Record) (bool, error) {
	id, err := newHeldID()
	if err != nil {
		return false, fmt.Errorf("audit: hold record: %w", err)
	}
	return h.hold(ctx, HeldRecord{ID: id, Record: r})
}

func (h *Held) hold(ctx context.Context, e HeldRecord) (bool, error) {
	r := &e.Record
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	d := map[string]json.RawMessage{}
	if len(r.Data) == 0 || json.Unmarshal(r.Data, &d) == nil {
		at, _ := json.Marshal(r.Time.UTC().Truncate(time.Microsecond))
		d["held_from"] = at
		if b, err := json.Marshal(d); err == nil {
			r.Data = b
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.rs) >= h.Max {
		return false, nil
	}
	// The bucket is written under the lock so that records reach it in the order they are held.
	err := h.bucket.put(ctx, &e)
	h.rs = append(h.rs, e)
	if err != nil {
		return true, fmt.Errorf("audit: record held in memory only: %w", err)
	}
	return true, nil
}

// HoldFailed holds r, whose append failed with err, if it is to be held, and reports whether it was: when it was
// not sent (ErrNotSent), or when a try may have reached the trail and its answer was lost and the trail can be
// asked after it (canFind: a HeldFinder). a is the attempt r was sent with (NewAttempt), or nil when it had no
// ID of its own; held with a, r keeps its ID. A record the trail refused (ErrRefused) is not held.
func (h *Held) HoldFailed(ctx context.Context, r Record, a *Attempt, err error, canFind bool) (bool, error) {
	switch {
	case a != nil && errors.Is(err, ErrNotSent):
		// Nothing of it was written, whatever a's connection got to (HeldRecord.Sending runs just before the
		// first write, which may then fail): held under its ID, as never sent.
		e := a.e
		e.mark = nil
		return h.hold(ctx, e)
	case a != nil && canFind && !errors.Is(err, ErrRefused) && !a.Sent().IsZero():
		// Its answer was lost: held under its ID, marked as maybe stored, to be asked after (Retry).
		e := a.e
		e.mark, e.Sent = nil, a.Sent()
		return h.hold(ctx, e)
	case errors.Is(err, ErrNotSent):
		return h.Hold(ctx, r)
	}
	return false, nil
}

// Attempt is one append of a record under a fresh ID through a OnceAppender, which notes when a try of it first
// may have reached the trail (HeldRecord.Sending), so that a record whose answer was lost can be held under its ID
// and asked after (Held.HoldFailed) instead of lost. Safe for concurrent use.
type Attempt struct {
	e    HeldRecord
	mu   sync.Mutex
	sent time.Time
}

// NewAttempt returns an attempt to append r.
func NewAttempt(r Record) (*Attempt, error) {
	id, err := newHeldID()
	if err != nil {
		return nil, fmt.Errorf("audit: append record: %w", err)
	}
	a := &Attempt{e: HeldRecord{ID: id, Record: r}}
	a.e.mark = func(first time.Time) error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.sent.IsZero() {
			a.sent = first
		}
		return nil
	}
	return a, nil
}

// Record is the record to append, under its ID.
func (a *Attempt) Record() HeldRecord { return a.e }

// Sent is when the first try that may have reached the trail began, or zero if none did.
func (a *Attempt) Sent() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sent
}

// Len is the number of records held.
func (h *Held) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.rs)
}

// AnyUnsent says whether a record is held that no try has sent to the trail yet (not marked as possibly stored).
func (h *Held) AnyUnsent() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.rs {
		if e.Sent.IsZero() {
			return true
		}
	}
	return false
}

// Unkept is the number of records held in memory only: lost if the process ends now.
func (h *Held) Unkept() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, e := range h.rs {
		if e.key == "" {
			n++
		}
	}
	return n
}

// Retry appends the held records, oldest first, with add, which must append e.Record under e.ID as first tried
// at e.Sent (or now, if zero), and call e.Sending when a try has a connection to the trail, before any of the
// record is written: with a bucket, that is when the record is marked there as one that may be stored from then
// on, so that a run after a crash sends it again as a repeat. A record marked longer ago than the trail
// recognises a repeat (api.AuditRetryWindow) is asked after with find instead, once the answer is certain
// (api.AuditFindAfter; until then, or while the trail answers ErrAskLater, it is passed over and the records after
// it are tried, so one lost answer does not hold a gateway's records up for minutes): stored, it is done; not, it
// is tried anew (at most heldAsks times). So is a record whose try may have reached the trail and got no answer.
// It stops at the first that is still not sent, or whose answer this try lost, or when ctx has ended, keeping that
// one and those after it, and returns how many were stored.
// A record the trail refused (ErrRefused), or whose append failed otherwise when find is nil or cannot tell, is
// dropped and passed to lost with its error, never appended under another ID. The error is the bucket's, if it
// failed.
func (h *Held) Retry(ctx context.Context, add func(context.Context, HeldRecord) error, find func(context.Context, HeldRecord) (bool, error), lost func(Record, error)) (int, error) {
	h.mu.Lock()
	rs, b := h.rs, h.bucket
	h.rs = nil
	h.mu.Unlock()
	stored := 0
	var errs []error
	// waiting are the records passed over, in order: each is asked after once its answer is certain.
	var waiting []HeldRecord
	stop := func(rest []HeldRecord) (int, error) {
		h.putBack(append(waiting, rest...))
		return stored, errors.Join(errs...)
	}
	for i := range rs {
		if ctx.Err() != nil {
			return stop(rs[i:])
		}
		if find != nil && !rs[i].Sent.IsZero() && time.Since(rs[i].Sent) > cmp.Or(h.repeatWindow, api.AuditRetryWindow) {
			if time.Since(rs[i].Sent) < cmp.Or(h.findAfter, api.AuditFindAfter) {
				waiting = append(waiting, rs[i]) // its answer is not certain yet; those after it go on
				continue
			}
			found, err := find(ctx, rs[i])
			switch {
			case errors.Is(err, ErrAskLater):
				waiting = append(waiting, rs[i])
				continue
			case errors.Is(err, ErrNotSent):
				return stop(rs[i:])
			case err != nil:
				lost(rs[i].Record, err)
				errs = append(errs, b.remove(ctx, &rs[i]))
				continue
			case found:
				stored++
				errs = append(errs, b.remove(ctx, &rs[i]))
				continue
			}
			// Never stored: tried anew, under its ID, marked again when a try reaches the trail.
			m := rs[i]
			m.Sent = time.Time{}
			m.Asked++
			if err := b.put(ctx, &m); err != nil {
				if errors.Is(err, errHeldTaken) {
					continue
				}
				errs = append(errs, err)
				return stop(rs[i:])
			}
			rs[i] = m
		}
		// mark runs on the writer's goroutine; mu orders it with what follows add.
		var mu sync.Mutex
		e, marked := rs[i], false
		var markErr error
		try := e
		try.mark = func(first time.Time) error {
			mu.Lock()
			defer mu.Unlock()
			if !e.Sent.IsZero() {
				return nil
			}
			m := e
			m.Sent = first
			if err := b.put(ctx, &m); err != nil {
				markErr = err
				return err
			}
			e, marked = m, true
			return nil
		}
		err := add(ctx, try)
		mu.Lock()
		rs[i] = e
		wasMarked, taken := marked, errors.Is(markErr, errHeldTaken)
		if markErr != nil && !taken {
			errs = append(errs, markErr)
		}
		mu.Unlock()
		switch {
		case taken && err != nil:
			continue // another writer sharing the bucket has it
		case err == nil:
			stored++
			errs = append(errs, b.remove(ctx, &rs[i]))
		case errors.Is(err, ErrNotSent):
			if wasMarked {
				// Nothing was sent: unmarked, the next try gets the whole retry window. If the bucket
				// cannot say so, the mark stays, in memory too (the bucket's revision must match).
				m := rs[i]
				m.Sent = time.Time{}
				if perr := b.put(ctx, &m); perr != nil {
					errs = append(errs, perr)
				} else {
					rs[i] = m
				}
			}
			return stop(rs[i:])
		case find != nil && !errors.Is(err, ErrRefused) && !rs[i].Sent.IsZero() && rs[i].Asked < heldAsks:
			// Its answer was lost: asked after once the answer is certain. This Retry stops here (the writer may
			// not answer now); the next passes it over while it waits.
			return stop(rs[i:])
		default:
			lost(rs[i].Record, err)
			errs = append(errs, b.remove(ctx, &rs[i]))
		}
	}
	if len(waiting) > 0 {
		return stop(nil)
	}
	if h.Len() == 0 {
		errs = append(errs, b.compact(ctx))
	}
	return stored, errors.Join(errs...)
}

// putBack holds rs again ahead of any held since Retry took them.
func (h *Held) putBack(rs []HeldRecord) {
	h.mu.Lock()
	h.rs = append(rs[:len(rs):len(rs)], h.rs...)
	h.mu.Unlock()
}

// newHeldID returns a fresh record ID: 128 random bits.
func newHeldID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}
