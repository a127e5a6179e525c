package envstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// next reads the next envelope and checks it is want, addressed to the receiver's recipient.
func next(t *testing.T, r *Receiver, want string) Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	m, err := r.Next(ctx)
	if err != nil {
		if c, cerr := r.stream.Consumer(context.Background(), r.name); cerr == nil {
			if info, ierr := c.Info(context.Background()); ierr == nil {
				t.Logf("cursor: delivered %d, ack floor %d, ack pending %d, waiting pulls %d, pending %d",
					info.Delivered.Stream, info.AckFloor.Stream, info.NumAckPending, info.NumWaiting, info.NumPending)
			}
		}
		t.Fatalf("Next (want %s): %v", want, err)
	}
	if m.ID != want || m.To != r.to || m.Session != r.session || string(m.Data) != "data-"+want {
		t.Fatalf("Next = %s to %s in %s with %q, want %s to %s in %s", m.ID, m.To, m.Session, m.Data, want, r.to, r.session)
	}
	return m
}

func ack(t *testing.T, r *Receiver, m Msg) {
	t.Helper()
	if err := r.Ack(m); err != nil {
		t.Fatalf("Ack %s: %v", m.ID, err)
	}
}

// expectNothing checks that no further envelope comes for the receiver.
func expectNothing(t *testing.T, r *Receiver) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if m, err := r.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next after the last envelope: %s, %v; want a deadline error", m.ID, err)
	}
}

func appendN(t *testing.T, s *Store, session string, from, to int, recipient func(i int) string, max uint64) {
	t.Helper()
	ctx := testContext(t)
	for i := from; i < to; i++ {
		id := fmt.Sprintf("m%02d", i)
		if _, err := s.Append(ctx, Envelope{ID: id, Session: session, To: recipient(i), Data: []byte("data-" + id)}, max); err != nil {
			t.Fatalf("Append %s: %v", id, err)
		}
	}
}

func alternate(i int) string {
	if i%2 == 0 {
		return recipientA
	}
	return recipientB
}

func TestReceiverOrderAndRedelivery(t *testing.T) {
	// AckWait of 30 s: every redelivery below must come from Close or Next, not from the timer.
	s := newStore(t, Options{AckWait: 30 * time.Second})
	ctx := testContext(t)
	appendN(t, s, "chat", 0, 20, alternate, 0)
	var forA, forB []string
	for i := range 20 {
		if alternate(i) == recipientA {
			forA = append(forA, fmt.Sprintf("m%02d", i))
		} else {
			forB = append(forB, fmt.Sprintf("m%02d", i))
		}
	}

	r, err := s.Receiver(ctx, "chat", recipientA)
	if err != nil {
		t.Fatal(err)
	}
	var prev uint64
	for _, id := range forA[:4] {
		m := next(t, r, id)
		if m.Delivered != 1 || m.StreamSeq <= prev {
			t.Fatalf("%s: delivery %d at sequence %d after %d", id, m.Delivered, m.StreamSeq, prev)
		}
		prev = m.StreamSeq
		ack(t, r, m)
	}
	fifth := next(t, r, forA[4])
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	r, err = s.Receiver(ctx, "chat", recipientA)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	again := next(t, r, forA[4])
	if again.StreamSeq != fifth.StreamSeq || again.Delivered < 2 {
		t.Fatalf("redelivered %s: sequence %d delivery %d, want sequence %d delivery >= 2",
			again.ID, again.StreamSeq, again.Delivered, fifth.StreamSeq)
	}
	if err := r.Ack(Msg{StreamSeq: again.StreamSeq + 1}); !errors.Is(err, ErrNotPending) {
		t.Fatalf("Ack of an envelope not handed out: %v, want ErrNotPending", err)
	}
	ack(t, r, again)
	if err := r.Ack(again); err != nil {
		t.Fatalf("second Ack of the same envelope: %v", err)
	}
	for _, id := range forA[5:] {
		ack(t, r, next(t, r, id))
	}
	expectNothing(t, r)

	// B's cursor is independent, and calling Next without acknowledging hands the same envelope back.
	rb, err := s.Receiver(ctx, "chat", recipientB)
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	first := next(t, rb, forB[0])
	if m := next(t, rb, forB[0]); m.StreamSeq != first.StreamSeq || m.Delivered != first.Delivered+1 {
		t.Fatalf("unacknowledged envelope came back as sequence %d delivery %d, want %d delivery %d",
			m.StreamSeq, m.Delivered, first.StreamSeq, first.Delivered+1)
	}
	for _, id := range forB {
		ack(t, rb, next(t, rb, id))
	}
	expectNothing(t, rb)

	// A waiting receiver gets what is appended later.
	got := make(chan Msg, 1)
	go func() {
		m, err := r.Next(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- m
	}()
	time.Sleep(50 * time.Millisecond)
	appendN(t, s, "chat", 20, 22, alternate, 0) // m20 for A, m21 for B
	if m := <-got; m.ID != "m20" {
		t.Fatalf("waiting Next returned %q, want m20", m.ID)
	}
}

// TestInProgressHoldsAnEnvelopeUntilItsReaderDies: an envelope out to a Receiver that keeps saying it is in
// progress is not handed to another Receiver of the cursor past AckWait; once its Receiver is gone without a word
// (its process killed), the other gets it within AckWait.
func TestInProgressHoldsAnEnvelopeUntilItsReaderDies(t *testing.T) {
	const wait = time.Second
	s := newStore(t, Options{AckWait: wait})
	ctx := testContext(t)
	appendN(t, s, "held", 0, 1, func(int) string { return recipientA }, 0)
	a, err := s.Receiver(ctx, "held", recipientA)
	if err != nil {
		t.Fatal(err)
	}
	m := next(t, a, "m00")
	b, err := s.Receiver(ctx, "held", recipientA)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := make(chan Msg, 1)
	go func() {
		bctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if m, err := b.Next(bctx); err == nil {
			got <- m
		}
		close(got)
	}()
	for held := time.Now(); time.Since(held) < 3*wait; time.Sleep(wait / 4) {
		if err := a.InProgress(m); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-got:
			t.Fatalf("%s handed to another receiver while its own said it was in progress", m.ID)
		default:
		}
	}
	// a's process dies: its subscription ends without a negative acknowledgement.
	a.it.Stop()
	died := time.Now()
	select {
	case m, ok := <-got:
		if !ok || m.ID != "m00" || m.Delivered != 2 {
			t.Fatalf("after the reader died: %+v (received %v), want m00 delivered a second time", m, ok)
		}
		t.Logf("handed to the other receiver %s after its reader stopped (AckWait %s)", time.Since(died).Round(time.Millisecond), wait)
	case <-time.After(5 * wait):
		t.Fatalf("not handed to the other receiver within %s of its reader's death", 5*wait)
	}
}

func TestRestartDurability(t *testing.T) {
	const max = 50
	dir := t.TempDir()
	opts := Options{AckWait: time.Second}
	toA := func(int) string { return recipientA }

	srv := startServer(t, dir)
	s := open(t, connect(t, srv), opts)
	appendN(t, s, "durable", 0, 30, toA, max)
	r, err := s.Receiver(testContext(t), "durable", recipientA)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		ack(t, r, next(t, r, fmt.Sprintf("m%02d", i)))
	}
	next(t, r, "m10") // delivered, never acknowledged
	// A crash: nothing is closed, the server just goes away.
	srv.Shutdown()

	srv = startServer(t, dir)
	t.Cleanup(srv.Shutdown)
	s = open(t, connect(t, srv), opts)
	ctx := testContext(t)
	if n, err := s.Count(ctx, "durable"); err != nil || n != 30 {
		t.Fatalf("Count after restart: %d, %v; want 30", n, err)
	}
	r, err = s.Receiver(ctx, "durable", recipientA)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m := next(t, r, "m10")
	t.Logf("m10 redelivered after restart, delivery %d", m.Delivered)
	ack(t, r, m)
	for i := 11; i < 30; i++ {
		ack(t, r, next(t, r, fmt.Sprintf("m%02d", i)))
	}
	expectNothing(t, r)

	// A retry after the restart is answered with the original.
	if a, err := s.Append(ctx, Envelope{ID: "m05", Session: "durable", To: recipientA, Data: []byte("data-m05")}, max); err != nil || !a.Duplicate || a.Count != 30 {
		t.Fatalf("retry of m05 after restart: %+v, %v; want a duplicate at count 30", a, err)
	}

	// The count continues exactly up to max under concurrency.
	var ok, limited atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 5 {
				e := Envelope{ID: fmt.Sprintf("late-%d-%d", g, i), Session: "durable", To: recipientA, Data: []byte("x")}
				_, err := s.Append(ctx, e, max)
				switch {
				case errors.Is(err, ErrLimit):
					limited.Add(1)
				case err != nil:
					t.Errorf("Append %s: %v", e.ID, err)
				default:
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if ok.Load() != max-30 || limited.Load() != 40-(max-30) {
		t.Fatalf("%d appended and %d limited after restart, want %d and %d", ok.Load(), limited.Load(), max-30, 40-(max-30))
	}
	if n, err := s.Count(ctx, "durable"); err != nil || n != max {
		t.Fatalf("Count: %d, %v; want %d", n, err, max)
	}
	if n := streamMsgs(t, s); n != max {
		t.Fatalf("stream holds %d messages, want %d", n, max)
	}
}
