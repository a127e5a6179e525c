package audit

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
)

// appendResume bounds how long after the death of the trail's stream leader an append must succeed again: the
// survivors elect a leader 4-9 s after the last heartbeat they saw (nats-server's fixed election timeouts),
// and an append that was waiting for the dead leader's acknowledgement must have given up by then.
const appendResume = 12 * time.Second

// TestAppendsResumeAfterTheStreamLeaderDies appends to a three-replica trail through one server, without a
// deadline of its own (as the recorder does), alternating single appends and batches, while the server leading
// the stream is shut down. Every append must return, and appends must succeed again within appendResume of the
// kill; the chain must verify. A batch whose commit was on its way to the dying leader was never answered, and
// its append waited for ever (jsbatch.AckWait); a single append waited as long as its caller's deadline allowed
// (two minutes here), and so did its reload of the trail's last record while the survivors elected a leader.
func TestAppendsResumeAfterTheStreamLeaderDies(t *testing.T) {
	const stream = "UMBRA_AUDIT_LEADER"
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c := natsdtest.StartCluster(t, 3)
	l, err := Open(ctx, c.JetStream(0), Options{Stream: stream, Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	c.LeadStream(stream, 2)

	var (
		mu        sync.Mutex
		successes []time.Time
		longest   time.Duration
		lastErr   error
		inFlight  string
	)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; wctx.Err() == nil; i++ {
			began := time.Now()
			var err error
			mu.Lock()
			inFlight = map[bool]string{true: "Append", false: "AppendRecords"}[i%2 == 0]
			mu.Unlock()
			if i%2 == 0 {
				_, err = l.Append(wctx, record(i, fmt.Sprintf("ses_%d", i%3)))
			} else {
				_, err = l.AppendRecords(wctx, []Record{record(i, "ses_a"), record(i, "ses_b"), record(i, "")})
			}
			took := time.Since(began)
			mu.Lock()
			longest = max(longest, took)
			if err == nil {
				successes = append(successes, time.Now())
			} else {
				lastErr = err
			}
			mu.Unlock()
			if err != nil {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	successesAfter := func(at time.Time) (n int, first time.Time, worst time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range successes {
			if s.After(at) {
				if n == 0 {
					first = s
				}
				n++
			}
		}
		return n, first, longest, lastErr
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if n, _, _, err := successesAfter(time.Time{}); n >= 20 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("only %d appends within 30 s before the kill: %v", n, err)
		}
	}

	killed := time.Now()
	c.Kill(2)
	for {
		n, first, worst, err := successesAfter(killed)
		if n >= 5 {
			t.Logf("appending again %s after the stream leader's death; the longest append took %s",
				first.Sub(killed).Round(time.Millisecond), worst.Round(time.Millisecond))
			if d := first.Sub(killed); d > appendResume {
				t.Errorf("the first append after the stream leader's death succeeded %s after it, want within %s", d.Round(time.Millisecond), appendResume)
			}
			break
		}
		if time.Since(killed) > appendResume+20*time.Second {
			mu.Lock()
			what := inFlight
			mu.Unlock()
			t.Fatalf("%d appends within %s of the stream leader's death; the longest took %s, last error: %v; %s in flight",
				n, time.Since(killed).Round(time.Second), worst.Round(time.Millisecond), err, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("an append did not return within 15 s of its context's end")
	}
	if _, err := l.Verify(ctx); err != nil {
		t.Fatalf("the chain after the stream leader's death: %v", err)
	}
}
