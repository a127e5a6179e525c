package llmgw_test

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/route"
)

// capOf is the output cap an upstream request carries, or 0.
func capOf(body chat.Object) int64 {
	for _, k := range []string{"max_completion_tokens", "max_tokens"} {
		if n, ok := body.Int(k); ok {
			return n
		}
	}
	return 0
}

// greedy answers with every token the request allows (n choices of its cap), and with far more when it sets
// no cap: the worst a model can do to a budget.
func greedy(uncapped *atomic.Int64) func(chat.Object) reply {
	return func(body chat.Object) reply {
		n, ok := body.Int("n")
		if !ok || n < 1 {
			n = 1
		}
		limit := capOf(body)
		if limit == 0 {
			uncapped.Add(1)
			limit = 100_000
		}
		return reply{Pieces: []string{"a long answer"}, In: 10, Out: limit * n}
	}
}

func TestFiftyCallersWithoutMaxTokensStayWithinBudget(t *testing.T) {
	const limit = 5000
	const reserve = 1024 // OutputReserve's default: one request's cap without max_tokens
	up := newUpstream(t, "openai")
	var uncapped atomic.Int64
	gate := make(chan struct{})
	answer := greedy(&uncapped)
	up.Reply = func(body chat.Object) reply {
		<-gate // hold every admitted call until all callers have asked
		return answer(body)
	}
	h := newHarness(t, llmgw.Config{
		Models:  []llmgw.Model{oneModel("gpt-test", up)},
		Budgets: []llmgw.Budget{{Identity: alice, TokensPerDay: limit}},
	})
	ctx := testCtx(t)
	client := h.client(alice)

	const callers = 50
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	var billed int64
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-test", Messages: budgetPrompt})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if e := apiError(t, err); e.StatusCode != http.StatusPaymentRequired || e.Code != "budget_exceeded" {
					t.Errorf("refusal %d %s", e.StatusCode, e.Code)
				}
				refused++
				return
			}
			ok++
			billed += resp.Usage.TotalTokens
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		r := refused
		mu.Unlock()
		if int(up.chats.Load())+r == callers || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	close(gate)
	wg.Wait()

	_, used := h.usageOf(alice)
	t.Logf("50 callers without max_tokens: %d admitted, %d refused, %d tokens billed of a budget of %d", ok, refused, used, limit)
	if used != billed {
		t.Errorf("usage says %d tokens, the answers %d", used, billed)
	}
	if used > limit+reserve {
		t.Errorf("billed %d tokens: overran the budget of %d by more than one request's cap (%d)", used, limit, reserve)
	}
	if n := uncapped.Load(); n != 0 {
		t.Errorf("%d requests went upstream without an output cap", n)
	}
	for _, b := range up.requests() {
		if c := capOf(b); c > reserve {
			t.Errorf("upstream cap %d above the reservation %d", c, reserve)
		}
	}
	if refused == 0 || ok == 0 {
		t.Errorf("%d admitted, %d refused", ok, refused)
	}
}

func TestNMultipliesTheReservation(t *testing.T) {
	up := newUpstream(t, "openai")
	var uncapped atomic.Int64
	up.Reply = greedy(&uncapped)
	h := newHarness(t, llmgw.Config{
		Models:  []llmgw.Model{oneModel("gpt-test", up)},
		Budgets: []llmgw.Budget{{Identity: alice, TokensPerDay: 600}},
	})
	// Eight choices without max_tokens: the cap per choice is what the budget has room for, divided by 8.
	status, body, _ := h.do(alice, "POST", "/v1/chat/completions",
		`{"model":"gpt-test","n":8,"messages":[{"role":"user","content":"eight answers please"}]}`)
	if status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	c := capOf(up.last())
	if c <= 0 || 8*c > 600 {
		t.Errorf("cap per choice %d for 8 choices under a budget of 600", c)
	}
	_, used := h.usageOf(alice)
	if used > 600 {
		t.Errorf("billed %d of 600", used)
	}
	// A caller's own max_tokens is clamped the same way.
	status, body, _ = h.do(bob, "POST", "/v1/chat/completions",
		`{"model":"gpt-test","n":2,"max_tokens":50,"messages":[{"role":"user","content":"two"}]}`)
	if status != 200 || capOf(up.last()) != 50 {
		t.Errorf("a cap within budget was changed: %d %s, cap %d", status, body, capOf(up.last()))
	}
	// With no room for one token per choice, the call is refused before it goes upstream.
	before := up.chats.Load()
	status, body, _ = h.do(alice, "POST", "/v1/chat/completions",
		`{"model":"gpt-test","n":8,"messages":[{"role":"user","content":"again"}]}`)
	if status != http.StatusPaymentRequired || !strings.Contains(body, "budget_exceeded") || up.chats.Load() != before {
		t.Errorf("over budget: %d %s", status, body)
	}
}

func TestRouterCallsAreBilledToTheCaller(t *testing.T) {
	up := newUpstream(t, "openai")
	clf := newUpstream(t, "openai")
	var h *harness
	var recordedFirst atomic.Bool
	clf.Reply = func(chat.Object) reply {
		// The call's llm.call record exists before the routing model's own call reaches a model.
		for _, r := range h.auditor.records() {
			if r.Kind == llmgw.KindCall && strings.Contains(string(r.Data), `"routing":true`) {
				recordedFirst.Store(true)
			}
		}
		return reply{Pieces: []string{"poetry"}, In: 30, Out: 2}
	}
	up.Reply = func(chat.Object) reply { return reply{Pieces: []string{"an answer"}, In: 10, Out: 200} }
	h = newHarness(t, llmgw.Config{
		Models: []llmgw.Model{oneModel("poet", up), oneModel("general", up), oneModel("clf", clf)},
		Router: llmgw.Router{
			Routes:          []route.Route{{Name: "poetry", Model: "poet", Description: "poems and verse"}},
			ClassifierModel: "clf",
			Default:         "general",
		},
		Budgets: []llmgw.Budget{{Identity: bob, TokensPerDay: 100}},
	})
	// A caller within budget pays for the classifier's call.
	status, body, hdr := h.do(alice, "POST", "/v1/chat/completions",
		`{"model":"auto","messages":[{"role":"user","content":"a poem about the sea"}]}`)
	if status != 200 || clf.chats.Load() != 1 {
		t.Fatalf("%d %s; classifier called %d times", status, body, clf.chats.Load())
	}
	rec := h.auditor.wait(t, func(r auditRecord) bool {
		return r.Kind == llmgw.KindOutcome && dataOf(t, r).RequestID == hdr.Get("X-Request-Id")
	})
	if !recordedFirst.Load() {
		t.Error("the classifier was called before the call's llm.call record was written")
	}
	if calls := countKind(h, llmgw.KindCall, hdr.Get("X-Request-Id")); calls != 1 {
		t.Errorf("%d llm.call records for one routed call", calls)
	}
	if !strings.Contains(string(rec.Data), `"router_usage":{"input_tokens":30,"output_tokens":2`) {
		t.Errorf("outcome record without the router's usage: %s", rec.Data)
	}
	if _, used := h.usageOf(alice); used != 30+2+10+200 {
		t.Errorf("alice billed %d tokens, want the classifier's 32 plus the answer's 210", used)
	}
	// bob spends his budget on a direct call, then asks the router: refused before the classifier runs.
	if status, body, _ := h.do(bob, "POST", "/v1/chat/completions",
		`{"model":"general","max_tokens":300,"messages":[{"role":"user","content":"hello"}]}`); status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	status, body, _ = h.do(bob, "POST", "/v1/chat/completions",
		`{"model":"auto","messages":[{"role":"user","content":"a poem about the sea"}]}`)
	if status != http.StatusPaymentRequired || !strings.Contains(body, "budget_exceeded") {
		t.Errorf("over-budget routed call: %d %s", status, body)
	}
	if n := clf.chats.Load(); n != 1 {
		t.Errorf("the classifier ran %d times; an over-budget caller reached it", n)
	}
}

// countKind counts the audit records of a kind for one request.
func countKind(h *harness, kind, requestID string) int {
	n := 0
	for _, r := range h.auditor.records() {
		if r.Kind == kind && strings.Contains(string(r.Data), `"request_id":"`+requestID+`"`) {
			n++
		}
	}
	return n
}
