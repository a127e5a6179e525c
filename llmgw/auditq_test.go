package llmgw_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
	"github.com/umbra-mesh/umbra/llmgw"
)

// TestOutcomeOffTheRequestPath: while Run runs, a call's llm.outcome record does not hold its connection: with
// the audit trail holding every outcome record back, two calls in a row on one keep-alive connection are both
// answered (their llm.call records, written first, are not held). Once Run's context ends, Run returns only when
// the held records are written.
func TestOutcomeOffTheRequestPath(t *testing.T) {
	up := newUpstream(t, "openai")
	auditor := &faultyAuditor{}
	release := make(chan struct{})
	held := make(chan struct{}, 2)
	auditor.failWith(func(ctx context.Context, r audit.Record) error {
		if r.Kind != llmgw.KindOutcome {
			return nil
		}
		held <- struct{}{}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}, Auditor: auditor,
		AuditTimeout: 30 * time.Second})
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- h.gw.Run(ctx) }()
	t.Cleanup(func() { // after a failure: let Run end
		stop()
		select {
		case <-release:
		default:
			close(release)
		}
	})
	waitFor(t, "the audit worker", func() bool { return llmgw.AuditWorkerRunning(h.gw) })

	one := &http.Client{Transport: idTransport{alice, &http.Transport{MaxConnsPerHost: 1}}}
	for i := range 2 {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req, _ := http.NewRequestWithContext(cctx, http.MethodPost, h.srv.URL+"/v1/chat/completions",
			strings.NewReader(`{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}`))
		resp, err := one.Do(req)
		if err != nil {
			cancel()
			t.Fatalf("call %d on the same connection while outcome records are held: %v", i+1, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		cancel()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("call %d: %d", i+1, resp.StatusCode)
		}
	}
	// The first outcome record is with the audit trail, held; the second waits in the queue once its handler
	// has finished (just after its answer was sent).
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("no outcome record reached the audit trail")
	}
	waitFor(t, "the second outcome record queued", func() bool { return llmgw.AuditQueued(h.gw) == 1 })
	if n := outcomes(auditor); n != 0 {
		t.Fatalf("%d outcome records written while the audit trail held them", n)
	}

	close(release)
	stop()
	select {
	case err := <-ran:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if n := outcomes(auditor); n != 2 {
		t.Fatalf("%d outcome records after Run returned, want 2", n)
	}
}

func outcomes(a *faultyAuditor) int {
	n := 0
	for _, r := range a.records() {
		if r.Kind == llmgw.KindOutcome {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestOutcomeHeldUntilTheControllerIsReached: a call's outcome record whose append never reached the audit trail
// (the controller could not be reached) is held by Run's worker and appended, once, when the trail can be reached,
// marked with the time it was first tried.
func TestOutcomeHeldUntilTheControllerIsReached(t *testing.T) {
	up := newUpstream(t, "openai")
	auditor := &faultyAuditor{}
	var unreachable atomic.Bool
	unreachable.Store(true)
	auditor.failWith(func(ctx context.Context, r audit.Record) error {
		if r.Kind == llmgw.KindOutcome && unreachable.Load() {
			return fmt.Errorf("dial umbra.controller: no router: %w", audit.ErrNotSent)
		}
		return nil
	})
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}, Auditor: auditor,
		AuditTimeout: time.Second})
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- h.gw.Run(ctx) }()
	t.Cleanup(func() { stop(); <-ran })
	waitFor(t, "the audit worker", func() bool { return llmgw.AuditWorkerRunning(h.gw) })

	if status, body, _ := h.do(alice, http.MethodPost, modelCalls[0].path, modelCalls[0].body); status != http.StatusOK {
		t.Fatalf("call: %d %s", status, body)
	}
	waitFor(t, "the outcome record held", func() bool { return llmgw.AuditHeld(h.gw) == 1 })
	time.Sleep(2 * llmgw.HeldRetry)
	if n := llmgw.AuditHeld(h.gw); n != 1 || outcomes(auditor) != 0 {
		t.Fatalf("while the trail cannot be reached: %d held, %d stored", n, outcomes(auditor))
	}
	unreachable.Store(false)
	rec := auditor.wait(t, kindIs(llmgw.KindOutcome))
	if !strings.Contains(string(rec.Data), `"held_from"`) {
		t.Fatalf("the held outcome does not say when it was first tried: %s", rec.Data)
	}
	waitFor(t, "nothing held", func() bool { return llmgw.AuditHeld(h.gw) == 0 })
	time.Sleep(llmgw.HeldRetry)
	if n := outcomes(auditor); n != 1 {
		t.Fatalf("%d outcome records stored, want 1", n)
	}
}

// onceAuditor appends held records under their ID, as the controller does: one record per ID.
type onceAuditor struct {
	faultyAuditor
	mu  sync.Mutex
	ids map[string]int
}

func (a *onceAuditor) AppendOnce(ctx context.Context, e audit.HeldRecord) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ids == nil {
		a.ids = map[string]int{}
	}
	if a.ids[e.ID]++; a.ids[e.ID] > 1 {
		return nil // a repeat
	}
	return a.Append(ctx, e.Record)
}

// TestHeldOutcomeOutlivesTheGateway: an outcome record held while the controller cannot be reached is kept in
// the gateway's state store when the gateway stops, and the next gateway on that store appends it, under the ID it
// was held with, once.
func TestHeldOutcomeOutlivesTheGateway(t *testing.T) {
	js := natsdtest.Connect(t, natsdtest.Start(t), "llmgw-test")
	up := newUpstream(t, "openai")
	run := func(a llmgw.Auditor) (*harness, func()) {
		h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}, Auditor: a, State: js,
			AuditTimeout: time.Second})
		ctx, stop := context.WithCancel(context.Background())
		ran := make(chan error, 1)
		go func() { ran <- h.gw.Run(ctx) }()
		waitFor(t, "the audit worker", func() bool { return llmgw.AuditWorkerRunning(h.gw) })
		return h, func() {
			stop()
			select {
			case <-ran:
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return")
			}
		}
	}
	first := &faultyAuditor{}
	first.failWith(func(ctx context.Context, r audit.Record) error {
		if r.Kind == llmgw.KindOutcome {
			return fmt.Errorf("dial umbra.controller: no router: %w", audit.ErrNotSent)
		}
		return nil
	})
	h1, stop1 := run(first)
	if status, body, _ := h1.do(alice, http.MethodPost, modelCalls[0].path, modelCalls[0].body); status != http.StatusOK {
		t.Fatalf("call: %d %s", status, body)
	}
	waitFor(t, "the outcome record held", func() bool { return llmgw.AuditHeld(h1.gw) == 1 })
	stop1()

	next := &onceAuditor{}
	h2, stop2 := run(next)
	defer stop2()
	rec := next.wait(t, kindIs(llmgw.KindOutcome))
	if !strings.Contains(string(rec.Data), `"held_from"`) {
		t.Fatalf("the outcome appended by the next gateway is not the held one: %s", rec.Data)
	}
	waitFor(t, "nothing held", func() bool { return llmgw.AuditHeld(h2.gw) == 0 })
	time.Sleep(llmgw.HeldRetry)
	next.mu.Lock()
	ids := len(next.ids)
	next.mu.Unlock()
	if n := outcomes(&next.faultyAuditor); n != 1 || ids != 1 {
		t.Fatalf("%d outcome records stored under %d IDs, want 1 under its held ID", n, ids)
	}
}
