package llmgw_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/audit"
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
