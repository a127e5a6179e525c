package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Records not sent are held in order, up to the bound, marked with the time they were first tried, and appended
// once the writer is reached again; one whose append failed otherwise is given up, never tried twice.
func TestHeld(t *testing.T) {
	h := &Held{Max: 3}
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	for i := range 4 {
		r := Record{Kind: "mcp.outcome", Actor: testActor, Time: at, Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}
		if got, err := h.Hold(context.Background(), r); got != (i < 3) || err != nil {
			t.Fatalf("hold %d: %v", i, got)
		}
	}
	if h.Len() != 3 {
		t.Fatalf("%d held, want 3", h.Len())
	}
	var stored []string
	var lost []string
	unreachable := true
	ids := map[string]string{}
	add := func(_ context.Context, e HeldRecord) error {
		r := e.Record
		if prev, ok := ids[string(r.Data)]; (ok && prev != e.ID) || !ValidSessionID(e.ID) || !e.Sent.IsZero() {
			t.Fatalf("record %s tried under ID %q first sent %v (before: %q)", r.Data, e.ID, e.Sent, prev)
		}
		ids[string(r.Data)] = e.ID
		if !unreachable {
			if err := e.Sending(time.Now()); err != nil {
				return fmt.Errorf("%w: %w", ErrNotSent, err)
			}
		}
		var d struct {
			I        int       `json:"i"`
			HeldFrom time.Time `json:"held_from"`
		}
		if err := json.Unmarshal(r.Data, &d); err != nil || !d.HeldFrom.Equal(at) {
			t.Fatalf("held record's data %s: %v", r.Data, err)
		}
		switch {
		case unreachable:
			return fmt.Errorf("dial: %w", ErrNotSent)
		case d.I == 1:
			return errors.New("connection reset after the request was sent")
		}
		stored = append(stored, string(r.Data))
		return nil
	}
	onLost := func(r Record, err error) { lost = append(lost, string(r.Data)) }
	if n, err := h.Retry(context.Background(), add, nil, onLost); n != 0 || h.Len() != 3 || len(lost) != 0 || err != nil {
		t.Fatalf("still unreachable: %d stored, %d held, %d lost", n, h.Len(), len(lost))
	}
	// One more held while a retry is under way goes after the others.
	unreachable = false
	h.Max = 4
	h.Hold(context.Background(), Record{Kind: "mcp.outcome", Actor: testActor, Time: at, Data: json.RawMessage(`{"i":3}`)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if n, _ := h.Retry(ctx, add, nil, onLost); n != 0 || h.Len() != 4 {
		t.Fatalf("retry after its context ended: %d stored, %d held", n, h.Len())
	}
	if n, err := h.Retry(context.Background(), add, nil, onLost); n != 3 || h.Len() != 0 || len(lost) != 1 || err != nil {
		t.Fatalf("reachable: %d stored %v, %d held, lost %v", n, stored, h.Len(), lost)
	}
	for i, want := range []int{0, 2, 3} {
		var d struct{ I int }
		json.Unmarshal([]byte(stored[i]), &d)
		if d.I != want {
			t.Fatalf("stored in the order %v, want records 0, 2, 3", stored)
		}
	}
	var zero Held
	if held, _ := zero.Hold(context.Background(), Record{Kind: "mcp.outcome", Actor: testActor}); held {
		t.Fatal("the zero Held held a record")
	}
}

// trail stands for the controller's side of AppendOnce: a record is stored once per ID, and a try more than
// window after the record's first is refused, whether or not it was stored.
type trail struct {
	window time.Duration
	stored []HeldRecord
}

// find tells whether e was stored.
func (tr *trail) find(_ context.Context, e HeldRecord) (bool, error) {
	for _, s := range tr.stored {
		if s.ID == e.ID {
			return true, nil
		}
	}
	return false, nil
}

func (tr *trail) add(_ context.Context, e HeldRecord) error {
	first := e.Sent
	if first.IsZero() {
		first = time.Now()
	}
	if err := e.Sending(first); err != nil {
		return fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	if age := time.Since(first); age > tr.window {
		return fmt.Errorf("record %s tried %v after its first try: retry_too_late", e.ID, age)
	}
	for _, s := range tr.stored {
		if s.ID == e.ID {
			return nil // a repeat: answered with the record stored first
		}
	}
	tr.stored = append(tr.stored, e)
	return nil
}

// Held records outlive the process that held them: each run takes what the last left in the bucket, and a
// process that dies between the trail storing a record and the bucket forgetting it has the record sent again
// under its ID, so it is stored once; too late for that, it is reported lost, not stored twice. A process that
// dies while the trail cannot be reached leaves its records to be appended whenever the next run can.
func TestHeldSurvivesTheProcess(t *testing.T) {
	dir := t.TempDir()
	ctx := testCtx(t)
	srv := startServer(t, dir)
	t.Cleanup(func() { srv.Shutdown() })
	// run opens the bucket as a new process would; die ends it: nothing more of it reaches the bucket.
	run := func(want int) (h *Held, die func()) {
		t.Helper()
		nc, err := srv.Connect("held")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		b, err := OpenHeldBucket(ctx, js, "audit_held")
		if err != nil {
			t.Fatal(err)
		}
		h = &Held{Max: 10, repeatWindow: 2 * time.Second, findAfter: 6 * time.Second}
		if n, err := h.Open(ctx, b); n != want || err != nil {
			t.Fatalf("open: %d records left by the last run (%v), want %d", n, err, want)
		}
		return h, nc.Close
	}
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	data := func(e HeldRecord) int {
		var d struct {
			I        int       `json:"i"`
			HeldFrom time.Time `json:"held_from"`
		}
		if err := json.Unmarshal(e.Record.Data, &d); err != nil || !d.HeldFrom.Equal(at) {
			t.Fatalf("held record's data %s: %v", e.Record.Data, err)
		}
		return d.I
	}

	// Run 1 holds three records, and dies; so does the server.
	h, die := run(0)
	for i := range 3 {
		r := Record{Kind: "mcp.outcome", Actor: testActor, Time: at, Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}
		if ok, err := h.Hold(ctx, r); !ok || err != nil {
			t.Fatalf("hold %d: %v %v", i, ok, err)
		}
	}
	die()
	srv.Shutdown()
	srv = startServer(t, dir)

	// Run 2 gets the first stored, and dies before the bucket forgets it.
	h, die = run(3)
	tr := &trail{window: 2 * time.Second}
	lost := func(r Record, err error) { t.Fatalf("record %s lost: %v", r.Data, err) }
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	n, err := h.Retry(rctx, func(ctx context.Context, e HeldRecord) error {
		err := tr.add(ctx, e)
		die()
		return err
	}, nil, lost)
	cancel()
	if n != 1 || err == nil || len(tr.stored) != 1 {
		t.Fatalf("run 2: %d stored (%v), trail holds %d; want 1 stored and the bucket's failure", n, err, len(tr.stored))
	}

	// Run 3 sends the first again, as a repeat, and the others: each is stored once, in order.
	h, _ = run(3)
	if n, err := h.Retry(ctx, tr.add, nil, lost); n != 3 || err != nil || h.Len() != 0 {
		t.Fatalf("run 3: %d appended (%v), %d held", n, err, h.Len())
	}
	if len(tr.stored) != 3 {
		t.Fatalf("the trail holds %d records, want 3", len(tr.stored))
	}
	for i, e := range tr.stored {
		if got := data(e); got != i {
			t.Fatalf("stored record %d is record %d", i, got)
		}
	}

	// Run 4 holds a fourth, gets it stored, and dies before the bucket forgets it; run 5 comes too late to
	// send it as a repeat: it is reported lost, and not stored twice.
	h, die = run(0)
	if ok, err := h.Hold(ctx, Record{Kind: "mcp.outcome", Actor: testActor, Time: at, Data: json.RawMessage(`{"i":3}`)}); !ok || err != nil {
		t.Fatalf("hold: %v %v", ok, err)
	}
	rctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	h.Retry(rctx, func(ctx context.Context, e HeldRecord) error {
		err := tr.add(ctx, e)
		die()
		return err
	}, nil, lost)
	cancel()
	time.Sleep(tr.window + 100*time.Millisecond)
	h, _ = run(1)
	var gone []Record
	if n, err := h.Retry(ctx, tr.add, nil, func(r Record, err error) { gone = append(gone, r) }); n != 0 || err != nil || len(gone) != 1 {
		t.Fatalf("run 5: %d appended (%v), %d reported lost; want the record reported lost", n, err, len(gone))
	}
	if len(tr.stored) != 4 {
		t.Fatalf("the trail holds %d records, want 4", len(tr.stored))
	}

	// Run 6 holds a fifth and dies while trying it, the trail unreachable: nothing was sent, so nothing marked it,
	// and run 7, however late, appends it.
	h, die = run(0)
	if ok, err := h.Hold(ctx, Record{Kind: "mcp.outcome", Actor: testActor, Time: at, Data: json.RawMessage(`{"i":4}`)}); !ok || err != nil {
		t.Fatalf("hold: %v %v", ok, err)
	}
	h.Retry(ctx, func(context.Context, HeldRecord) error {
		die()
		return fmt.Errorf("dial: no router: %w", ErrNotSent)
	}, nil, lost)
	time.Sleep(tr.window + 100*time.Millisecond)
	h, _ = run(1)
	if n, err := h.Retry(ctx, tr.add, nil, lost); n != 1 || err != nil || len(tr.stored) != 5 || data(tr.stored[4]) != 4 {
		t.Fatalf("run 7: %d appended (%v), the trail holds %d", n, err, len(tr.stored))
	}

	// With a finder, a record marked longer ago than a repeat is recognised is asked after, once the answer is
	// certain: run 8 marks a sixth and dies before it reaches the trail; run 9, past the repeat window, neither
	// sends nor loses it; run 10, past findAfter, learns it was never stored and stores it. Run 11 gets a seventh
	// stored and dies before the bucket forgets it; run 12 learns it was stored, and stores nothing.
	hold := func(h *Held, i int) {
		t.Helper()
		if ok, err := h.Hold(ctx, Record{Kind: "mcp.outcome", Actor: testActor, Time: at, Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}); !ok || err != nil {
			t.Fatalf("hold %d: %v %v", i, ok, err)
		}
	}
	h, die = run(0)
	hold(h, 5)
	rctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	h.Retry(rctx, func(_ context.Context, e HeldRecord) error {
		if err := e.Sending(time.Now()); err != nil {
			t.Fatal(err)
		}
		die()
		return errors.New("connection reset")
	}, tr.find, func(Record, error) {}) // what the dead process does next reaches nothing
	cancel()
	time.Sleep(tr.window + 100*time.Millisecond)
	h, _ = run(1)
	if n, err := h.Retry(ctx, tr.add, tr.find, lost); n != 0 || err != nil || h.Len() != 1 || len(tr.stored) != 5 {
		t.Fatalf("run 9: %d appended (%v), %d held, the trail holds %d; want it kept, untried", n, err, h.Len(), len(tr.stored))
	}
	time.Sleep(4 * time.Second) // past findAfter
	if n, err := h.Retry(ctx, tr.add, tr.find, lost); n != 1 || err != nil || len(tr.stored) != 6 || data(tr.stored[5]) != 5 {
		t.Fatalf("run 10: %d appended (%v), the trail holds %d; want the record stored", n, err, len(tr.stored))
	}
	h, die = run(0)
	hold(h, 6)
	rctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	h.Retry(rctx, func(ctx context.Context, e HeldRecord) error {
		err := tr.add(ctx, e)
		die()
		return err
	}, tr.find, lost)
	cancel()
	time.Sleep(6*time.Second + 100*time.Millisecond) // past findAfter
	h, _ = run(1)
	if n, err := h.Retry(ctx, tr.add, tr.find, lost); n != 1 || err != nil || h.Len() != 0 || len(tr.stored) != 7 {
		t.Fatalf("run 12: %d appended (%v), %d held, the trail holds %d; want it found, stored once", n, err, h.Len(), len(tr.stored))
	}
	run(0) // nothing is left
}

// A record whose try may have reached the trail and got no answer is held under its ID and asked after once the
// answer is certain: stored, it is not sent again; not, it is sent anew, at most heldAsks times. A record the
// trail refused is not held; without a way to ask, one whose answer was lost is not either. Records held behind one
// waiting for its answer are appended meanwhile.
func TestHeldAskedAfterALostAnswer(t *testing.T) {
	ctx := testCtx(t)
	h := &Held{Max: 10, repeatWindow: 100 * time.Millisecond, findAfter: 2 * time.Second}
	tr := &trail{window: time.Minute}
	lostAnswer := errors.New("connection reset after the request was sent")
	// try appends r through an attempt as a gateway does, the trail storing it or not, and the answer lost.
	try := func(i int, store bool) *Attempt {
		t.Helper()
		a, err := NewAttempt(Record{Kind: "mcp.outcome", Actor: testActor, Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))})
		if err != nil {
			t.Fatal(err)
		}
		e := a.Record()
		if err := e.Sending(time.Now()); err != nil {
			t.Fatal(err)
		}
		if store {
			tr.stored = append(tr.stored, e)
		}
		return a
	}
	var gone []string
	lost := func(r Record, err error) { gone = append(gone, string(r.Data)) }

	stored, notStored := try(1, true), try(2, false)
	for _, a := range []*Attempt{stored, notStored} {
		if held, err := h.HoldFailed(ctx, a.Record().Record, a, lostAnswer, true); !held || err != nil {
			t.Fatalf("hold after a lost answer: %v %v", held, err)
		}
	}
	refused := try(3, false)
	if held, _ := h.HoldFailed(ctx, refused.Record().Record, refused, fmt.Errorf("%w: bad request", ErrRefused), true); held {
		t.Fatal("a refused record was held")
	}
	// A try whose connection was had but of which nothing was written is not sent: held, never marked, and
	// appended at the next Retry however late.
	unwritten := try(7, false)
	h2 := &Held{Max: 10}
	if held, err := h2.HoldFailed(ctx, unwritten.Record().Record, unwritten, fmt.Errorf("write: channel closed: %w", ErrNotSent), true); !held || err != nil {
		t.Fatalf("hold a record not sent: %v %v", held, err)
	}
	if e := h2.rs[0]; e.ID != unwritten.Record().ID || !e.Sent.IsZero() {
		t.Fatalf("a record not sent is held as %s first sent at %v; want its ID, not marked", e.ID, e.Sent)
	}
	unaskable := try(4, false)
	if held, _ := h.HoldFailed(ctx, unaskable.Record().Record, unaskable, lostAnswer, false); held {
		t.Fatal("a record whose answer was lost was held with no way to ask after it")
	}
	// A record held behind those two (the trail could not be reached for it) does not wait for their answers.
	behind, err := NewAttempt(Record{Kind: "mcp.outcome", Actor: testActor, Data: json.RawMessage(`{"i":6}`)})
	if err != nil {
		t.Fatal(err)
	}
	if held, err := h.HoldFailed(ctx, behind.Record().Record, behind, fmt.Errorf("no route: %w", ErrNotSent), true); !held || err != nil {
		t.Fatalf("hold a record not sent: %v %v", held, err)
	}
	time.Sleep(300 * time.Millisecond) // past the repeat window: no longer sent as a repeat
	if n, err := h.Retry(ctx, tr.add, tr.find, lost); n != 1 || err != nil || h.Len() != 2 || len(tr.stored) != 2 || tr.stored[1].ID != behind.Record().ID {
		t.Fatalf("before the answer is certain: %d appended (%v), %d held, the trail holds %d; want the record behind them appended, those two held",
			n, err, h.Len(), len(tr.stored))
	}
	if h.rs[0].ID != stored.Record().ID || h.rs[1].ID != notStored.Record().ID {
		t.Fatal("the records waiting for their answers are not held in their order")
	}
	time.Sleep(2 * time.Second)
	if n, err := h.Retry(ctx, tr.add, tr.find, lost); n != 2 || err != nil || h.Len() != 0 || len(gone) != 0 {
		t.Fatalf("after: %d appended (%v), %d held, lost %v", n, err, h.Len(), gone)
	}
	if len(tr.stored) != 3 || tr.stored[2].ID != notStored.Record().ID {
		t.Fatalf("the trail holds %d records; want the stored one once, the one behind, and the other under its ID", len(tr.stored))
	}

	// A trail that never answers is asked heldAsks times, then the record is given up.
	never := try(5, false)
	h.HoldFailed(ctx, never.Record().Record, never, lostAnswer, true)
	asks := 0
	for range 10 {
		time.Sleep(2100 * time.Millisecond)
		h.Retry(ctx, func(_ context.Context, e HeldRecord) error {
			if err := e.Sending(time.Now()); err != nil {
				t.Fatal(err)
			}
			return lostAnswer
		}, func(ctx context.Context, e HeldRecord) (bool, error) {
			asks++
			return tr.find(ctx, e)
		}, lost)
		if h.Len() == 0 {
			break
		}
	}
	if asks != heldAsks || len(gone) != 1 || h.Len() != 0 {
		t.Fatalf("asked %d times, lost %v, %d held; want %d questions, then lost", asks, gone, h.Len(), heldAsks)
	}
}
