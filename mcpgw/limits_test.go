package mcpgw

import (
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/internal/audit"
)

func limitsEnv(t *testing.T, l Limits) (*env, *client) {
	t.Helper()
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme, Limits: l})
	return e, e.connect(t, alice)
}

func TestLimits(t *testing.T) {
	t.Run("rate per identity", func(t *testing.T) {
		e, a := limitsEnv(t, Limits{CallsPerMinute: 3})
		for i := range 3 {
			if _, err := a.call(t, "notes__echo", map[string]any{"text": "x"}); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}
		_, err := a.call(t, "notes__echo", map[string]any{"text": "x"})
		if rpcCode(err) != CodeRateLimited || !strings.Contains(err.Error(), "rate limit") {
			t.Fatalf("4th call: %v", err)
		}
		// Another identity has its own allowance.
		if _, err := e.connect(t, bob).call(t, "notes__echo", map[string]any{"text": "x"}); err != nil {
			t.Fatalf("bob: %v", err)
		}
		e.rec.find(t, "rate refusal", func(r audit.Record) bool { return r.Kind == KindDenied && r.Reason == "rate_limited" })
	})

	t.Run("concurrency per identity", func(t *testing.T) {
		_, a := limitsEnv(t, Limits{Concurrent: 1})
		started := make(chan error, 1)
		go func() {
			params := &mcp.CallToolParams{Name: "notes__slow", Arguments: map[string]any{"steps": 1, "delay_ms": 1500}}
			params.SetProgressToken("running")
			_, err := a.cs.CallTool(ctxT(t), params)
			started <- err
		}()
		eventually(t, "the slow call in flight", func() bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			return len(a.progress) > 0
		})
		if _, err := a.call(t, "notes__echo", map[string]any{"text": "x"}); rpcCode(err) != CodeTooBusy {
			t.Fatalf("concurrent call: %v", err)
		}
		if err := <-started; err != nil {
			t.Fatal(err)
		}
		if _, err := a.call(t, "notes__echo", map[string]any{"text": "x"}); err != nil {
			t.Fatalf("after the slow call: %v", err)
		}
	})

	t.Run("per-call timeout", func(t *testing.T) {
		e, a := limitsEnv(t, Limits{CallTimeout: 200 * time.Millisecond})
		res, err := a.call(t, "notes__slow", map[string]any{"steps": 1, "delay_ms": 5000})
		if err != nil || !res.IsError || !strings.Contains(text(res), "timed out after 200ms") {
			t.Fatalf("slow call: %+v %v", res, err)
		}
		e.rec.find(t, "timeout record", func(r audit.Record) bool { return r.Kind == KindOutcome && dataOf(r)["status"] == statusTimeout })
	})

	t.Run("request size", func(t *testing.T) {
		_, a := limitsEnv(t, Limits{MaxRequest: 4096})
		_, err := a.call(t, "notes__echo", map[string]any{"text": strings.Repeat("y", 10000)})
		if rpcCode(err) != CodeTooLarge || !strings.Contains(err.Error(), "more than 4096 bytes") {
			t.Fatalf("oversized request: %v", err)
		}
		if _, err := a.call(t, "notes__echo", map[string]any{"text": "small"}); err != nil {
			t.Fatalf("the session survives an oversized request: %v", err)
		}
	})

	t.Run("response size", func(t *testing.T) {
		e, a := limitsEnv(t, Limits{MaxResponse: 2048})
		res, err := a.call(t, "notes__big", map[string]any{"bytes": 10000})
		if err != nil || !res.IsError || !strings.Contains(text(res), "exceeds the gateway's limit of 2048 bytes") {
			t.Fatalf("oversized response: %+v %v", res, err)
		}
		if res, err := a.call(t, "notes__big", map[string]any{"bytes": 100}); err != nil || res.IsError {
			t.Fatalf("small response: %+v %v", res, err)
		}
		e.rec.find(t, "too-large record", func(r audit.Record) bool { return r.Kind == KindOutcome && dataOf(r)["status"] == statusTooLarge })
	})
}
