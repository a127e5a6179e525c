package llmgw_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
)

// faultyAuditor keeps records in memory, unless a fault set with failWith refuses them.
type faultyAuditor struct {
	memAuditor
	faultMu sync.Mutex
	fault   func(context.Context, audit.Record) error
}

// failWith makes every later Append call f first and fail with its error, if any; nil heals the auditor.
func (a *faultyAuditor) failWith(f func(context.Context, audit.Record) error) {
	a.faultMu.Lock()
	a.fault = f
	a.faultMu.Unlock()
}

func (a *faultyAuditor) Append(ctx context.Context, r audit.Record) error {
	a.faultMu.Lock()
	f := a.fault
	a.faultMu.Unlock()
	if f != nil {
		if err := f(ctx, r); err != nil {
			return err
		}
	}
	return a.memAuditor.Append(ctx, r)
}

// modelCalls are the calls the gateway forwards to a model, as raw requests.
var modelCalls = []struct {
	name, path, body string
	anthropic        bool // the answer is in the Anthropic shape
}{
	{"chat", "/v1/chat/completions", `{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}`, false},
	{"streamed chat", "/v1/chat/completions", `{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"hi"}]}`, false},
	{"embeddings", "/v1/embeddings", `{"model":"gpt-test","input":"hi"}`, false},
	{"messages", "/v1/messages", `{"model":"gpt-test","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`, true},
}

const auditRefusal = "the call was refused: its audit record could not be written; try again later"

// TestAuditFailsClosed checks that a call whose llm.call record the audit trail does not confirm, because the
// Auditor fails or does not answer within AuditTimeout, is refused with 503 and never reaches a model.
func TestAuditFailsClosed(t *testing.T) {
	for _, fault := range []struct {
		name string
		set  func(t *testing.T, a *faultyAuditor)
	}{
		{"auditor fails", func(t *testing.T, a *faultyAuditor) {
			a.failWith(func(context.Context, audit.Record) error { return errors.New("audit stream unavailable") })
		}},
		{"auditor slower than its deadline", func(t *testing.T, a *faultyAuditor) {
			// It ignores its context: the gateway's deadline must hold all the same.
			release := make(chan struct{})
			t.Cleanup(func() { close(release) })
			a.failWith(func(context.Context, audit.Record) error {
				<-release
				return errors.New("answered too late")
			})
		}},
	} {
		t.Run(fault.name, func(t *testing.T) {
			up := newUpstream(t, "openai")
			auditor := &faultyAuditor{}
			h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}, Auditor: auditor,
				AuditTimeout: 300 * time.Millisecond})
			fault.set(t, auditor)
			for _, mc := range modelCalls {
				before := h.metric("umbra_llmgw_audit_failures_total", nil)
				begun := time.Now()
				status, body, hdr := h.do(alice, http.MethodPost, mc.path, mc.body)
				if waited := time.Since(begun); waited > 10*time.Second {
					t.Errorf("%s: refused after %s, want about the audit deadline", mc.name, waited)
				}
				if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" || !strings.Contains(body, auditRefusal) {
					t.Errorf("%s: %d Retry-After %q %s", mc.name, status, hdr.Get("Retry-After"), body)
				}
				if !mc.anthropic {
					var e struct {
						Error struct{ Type, Code, Message string }
					}
					if json.Unmarshal([]byte(body), &e) != nil || e.Error.Code != "audit_unavailable" || e.Error.Type != "server_error" ||
						!strings.Contains(e.Error.Message, hdr.Get("X-Request-Id")) {
						t.Errorf("%s: error body %s", mc.name, body)
					}
				}
				if n := up.chats.Load(); n != 0 {
					t.Fatalf("%s: the model received %d requests whose record was not written", mc.name, n)
				}
				if h.metric("umbra_llmgw_audit_failures_total", nil) <= before {
					t.Errorf("%s: audit failure not counted", mc.name)
				}
			}
			// The official client sees a server error it can retry after the time given.
			_, err := h.client(alice).Chat.Completions.New(testCtx(t), openai.ChatCompletionNewParams{Model: "gpt-test",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
			if e := apiError(t, err); e.StatusCode != http.StatusServiceUnavailable || e.Code != "audit_unavailable" {
				t.Errorf("client saw %d %s", e.StatusCode, e.Code)
			}
			if n := up.chats.Load(); n != 0 {
				t.Fatalf("the model received %d requests whose record was not written", n)
			}
			for _, r := range auditor.records() {
				if r.Kind == llmgw.KindCall || r.Kind == llmgw.KindOutcome {
					t.Errorf("record %s %s kept although the audit trail refused it", r.Kind, r.Data)
				}
			}
			// Once the audit trail answers again, so does the gateway.
			auditor.failWith(nil)
			if status, body, _ := h.do(alice, http.MethodPost, modelCalls[0].path, modelCalls[0].body); status != http.StatusOK {
				t.Fatalf("after the audit trail healed: %d %s", status, body)
			}
			if n := up.chats.Load(); n != 1 {
				t.Fatalf("the model received %d requests, want 1", n)
			}
			auditor.wait(t, kindIs(llmgw.KindOutcome))
		})
	}
}

// TestAuditBeforeForward checks that a call's llm.call record is in the audit trail before the model sees the
// request, and that its outcome follows under the same request ID.
func TestAuditBeforeForward(t *testing.T) {
	auditor := &memAuditor{}
	var mu sync.Mutex
	var held [][]audit.Record // the records the auditor held as each request reached the model
	saw := func() {
		mu.Lock()
		held = append(held, auditor.records())
		mu.Unlock()
	}
	up := newUpstream(t, "openai")
	up.Reply = func(chat.Object) reply {
		saw()
		return reply{Pieces: []string{"Hello", "."}}
	}
	up.Embed = func(text string) []float64 {
		saw()
		return bagOfWords(text)
	}
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}, Auditor: auditor})
	for i, mc := range modelCalls {
		status, body, hdr := h.do(alice, http.MethodPost, mc.path, mc.body)
		if status != http.StatusOK {
			t.Fatalf("%s: %d %s", mc.name, status, body)
		}
		id := hdr.Get("X-Request-Id")
		mu.Lock()
		seen := append([][]audit.Record(nil), held...)
		mu.Unlock()
		if len(seen) != i+1 {
			t.Fatalf("%s: the model received %d requests in all, want %d", mc.name, len(seen), i+1)
		}
		var started bool
		for _, r := range seen[i] {
			if dataOf(t, r).RequestID != id {
				continue
			}
			switch r.Kind {
			case llmgw.KindCall:
				started = true
				if r.Decision != audit.DecisionAllow || r.Actor != alice || len(r.Diagnostic) == 0 || dataOf(t, r).Model != "gpt-test" {
					t.Errorf("%s: call record %+v", mc.name, r)
				}
			case llmgw.KindOutcome:
				t.Errorf("%s: an outcome was recorded before the model saw the request", mc.name)
			}
		}
		if !started {
			t.Fatalf("%s: the model saw the request before its llm.call record was written", mc.name)
		}
		out := auditor.wait(t, func(r audit.Record) bool { return r.Kind == llmgw.KindOutcome && dataOf(t, r).RequestID == id })
		if d := dataOf(t, out); d.Status != http.StatusOK || d.InputTokens == 0 || d.Provider != "openai" || out.Actor != alice {
			t.Errorf("%s: outcome %+v data %+v", mc.name, out, d)
		}
	}
	if n := h.metric("umbra_llmgw_audit_failures_total", nil); n != 0 {
		t.Errorf("%v audit failures with a healthy audit trail", n)
	}
}

// TestAuditBudgetRefusesCalls checks that a call whose llm.call record the controller refuses because the caller
// has spent its day's audit budget is refused with 429 audit_budget_exhausted and the controller's reason, and
// never reaches a model.
func TestAuditBudgetRefusesCalls(t *testing.T) {
	up := newUpstream(t, "openai")
	auditor := &faultyAuditor{}
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}, Auditor: auditor,
		AuditTimeout: 300 * time.Millisecond})
	const spent = "your actions wrote 9000 bytes of audit records today, over the budget of 8192 bytes per identity and day"
	auditor.failWith(func(_ context.Context, r audit.Record) error {
		if r.Kind == llmgw.KindCall {
			return &audit.BudgetError{Message: spent, RetryAfter: 90 * time.Minute}
		}
		return nil
	})
	for _, mc := range modelCalls {
		status, body, hdr := h.do(alice, http.MethodPost, mc.path, mc.body)
		if status != http.StatusTooManyRequests || hdr.Get("Retry-After") != "5400" || !strings.Contains(body, spent) {
			t.Errorf("%s: %d Retry-After %q %s", mc.name, status, hdr.Get("Retry-After"), body)
		}
		if !mc.anthropic {
			var e struct {
				Error struct{ Type, Code, Message string }
			}
			if json.Unmarshal([]byte(body), &e) != nil || e.Error.Code != "audit_budget_exhausted" {
				t.Errorf("%s: error body %s", mc.name, body)
			}
		}
	}
	if n := up.chats.Load(); n != 0 {
		t.Fatalf("the model received %d requests whose record was refused", n)
	}
	_, err := h.client(alice).Chat.Completions.New(testCtx(t), openai.ChatCompletionNewParams{Model: "gpt-test",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	if e := apiError(t, err); e.StatusCode != http.StatusTooManyRequests || e.Code != "audit_budget_exhausted" {
		t.Errorf("client saw %d %s", e.StatusCode, e.Code)
	}
}

// TestReportAtRun: Run reports the models, budgets and guardrails to the audit trail, for the controller's
// posture, without any key or URL path.
func TestReportAtRun(t *testing.T) {
	h := newHarness(t, llmgw.Config{Service: "llmgw",
		Models: []llmgw.Model{{Name: "small", HealthInterval: -1, Endpoints: []llmgw.Endpoint{
			{Provider: "openai-compatible", BaseURL: "http://user:pw@10.0.0.7:11434/v1", APIKey: "sk-secret", Model: "llama"},
			{Provider: "openai-compatible", BaseURL: "http://ollama/v1", Service: "ollama"}}}},
		Budgets:    []llmgw.Budget{{Org: "acme", TokensPerDay: 1000}},
		Guardrails: llmgw.Guardrails{PII: guard.Redact, Responses: true}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- h.gw.Run(ctx) }()
	r := h.auditor.wait(t, func(r audit.Record) bool { return r.Kind == api.KindGatewayReportLLM })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(r.Data), "sk-secret") || strings.Contains(string(r.Data), "pw@") || r.Actor != gatewayID {
		t.Fatalf("report %s by %s: leaks a key or credentials, or is not the gateway's own", r.Data, r.Actor)
	}
	var rep api.GatewayReport
	if err := json.Unmarshal(r.Data, &rep); err != nil {
		t.Fatal(err)
	}
	want := api.GatewayReport{Service: "llmgw", Models: []api.GatewayModel{{Name: "small", Endpoints: []api.GatewayEndpoint{
		{Provider: "openai-compatible", Model: "llama", Host: "10.0.0.7:11434"}, {Provider: "openai-compatible", Model: "small", Service: "ollama"}}}},
		Limits: []string{"organisation acme: 1000 tokens/day"}, Guardrails: []string{"pii:redact", "responses"}}
	if !reflect.DeepEqual(rep, want) {
		t.Fatalf("report %+v\nwant   %+v", rep, want)
	}
}
