package llmgw_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/openai/openai-go/v3"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/natsd"
	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/chat"
)

// usageOf reads the caller's own token usage from /v1/usage.
func (h *harness) usageOf(id string) (requests, tokens int64) {
	h.t.Helper()
	status, body, _ := h.do(id, http.MethodGet, "/v1/usage?since=48h", "")
	if status != 200 {
		h.t.Fatalf("usage: %d %s", status, body)
	}
	var resp struct {
		Data []struct {
			Subject      string `json:"subject"`
			Requests     int64  `json:"requests"`
			InputTokens  int64  `json:"input_tokens"`
			OutputTokens int64  `json:"output_tokens"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &resp); err != nil {
		h.t.Fatal(err)
	}
	for _, d := range resp.Data {
		if d.Subject == "id:"+id {
			requests += d.Requests
			tokens += d.InputTokens + d.OutputTokens
		}
	}
	return requests, tokens
}

// A long enough prompt that the gateway's estimate covers the 10 prompt tokens the upstream reports.
var budgetPrompt = []openai.ChatCompletionMessageParamUnion{openai.UserMessage(strings.Repeat("tell me something. ", 4))}

func TestConcurrentCallersOverrunTokenBudgetByAtMostOneRequest(t *testing.T) {
	const limit, perCall = 500, 50 // each call: 10 prompt + 40 completion tokens
	up := newUpstream(t, "openai")
	gate := make(chan struct{})
	up.Reply = func(chat.Object) reply {
		<-gate // hold every admitted call until all callers have asked
		return reply{Pieces: []string{"forty tokens of answer"}, In: 10, Out: 40}
	}
	h := newHarness(t, llmgw.Config{
		Models:  []llmgw.Model{oneModel("gpt-test", up)},
		Budgets: []llmgw.Budget{{Identity: alice, TokensPerDay: limit}},
	})
	ctx := testCtx(t)
	client := h.client(alice)

	const callers = 20
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	var okTokens int64
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
				Model: "gpt-test", Messages: budgetPrompt, MaxTokens: openai.Int(40),
			})
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
			okTokens += resp.Usage.TotalTokens
		}()
	}
	// Release the upstream once every caller is either waiting on it or refused.
	deadline := time.Now().Add(10 * time.Second)
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
	t.Logf("%d admitted, %d refused, %d tokens used of %d", ok, refused, used, limit)
	if used != okTokens {
		t.Errorf("usage says %d tokens, the answers %d", used, okTokens)
	}
	if used > limit+perCall {
		t.Errorf("used %d tokens: overran the budget of %d by more than one call", used, limit)
	}
	if refused == 0 {
		t.Error("nobody was refused")
	}
	rec := h.auditor.wait(t, kindIs(llmgw.KindBudgetExceeded))
	if d := dataOf(t, rec); rec.Decision != "deny" || d.Limit == nil || d.Limit.Limit != "tokens_per_day" || d.Limit.Subject != "id:"+alice {
		t.Errorf("budget record %+v %+v", rec, d)
	}
}

func TestRateLimitsAnswer429(t *testing.T) {
	up := newUpstream(t, "openai")
	h := newHarness(t, llmgw.Config{
		Models:  []llmgw.Model{oneModel("gpt-test", up)},
		Budgets: []llmgw.Budget{{Org: "acme", RequestsPerMinute: 2}, {TokensPerDay: 1 << 30}},
	})
	ctx := testCtx(t)
	call := func(id string) error {
		_, err := h.client(id).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: "gpt-test", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
		return err
	}
	// Alice and Bob share acme's two requests a minute; Carol is in another organisation.
	if err := call(alice); err != nil {
		t.Fatal(err)
	}
	if err := call(bob); err != nil {
		t.Fatal(err)
	}
	e := apiError(t, call(alice))
	if e.StatusCode != http.StatusTooManyRequests || e.Code != "rate_limit_exceeded" || e.Response.Header.Get("Retry-After") == "" {
		t.Errorf("third call: %d %s retry-after %q", e.StatusCode, e.Code, e.Response.Header.Get("Retry-After"))
	}
	if err := call(carol); err != nil {
		t.Errorf("another organisation was limited: %v", err)
	}
	rec := h.auditor.wait(t, kindIs(llmgw.KindRateLimited))
	if d := dataOf(t, rec); d.Limit == nil || d.Limit.Subject != "org:acme" || d.Limit.Limit != "requests_per_minute" {
		t.Errorf("rate limit record %+v", d)
	}
}

func TestStreamedUsageCounted(t *testing.T) {
	up := newUpstream(t, "openai")
	an := newUpstream(t, "anthropic")
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up), oneModel("claude", an)}})
	ctx := testCtx(t)
	stream := func(model string) {
		s := h.client(bob).Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model: model, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("count me")}})
		for s.Next() {
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
	}
	up.Reply = func(chat.Object) reply { return reply{Pieces: []string{"a", "b", "c"}, In: 11, Out: 22} }
	stream("gpt-test") // the caller did not ask for usage; the gateway did
	if n, tokens := h.usageOf(bob); n != 1 || tokens != 33 {
		t.Errorf("after an OpenAI stream: %d requests, %d tokens; want 1, 33", n, tokens)
	}
	an.Reply = func(chat.Object) reply { return reply{Pieces: []string{"x", "y"}, In: 5, Out: 7} }
	stream("claude")
	if n, tokens := h.usageOf(bob); n != 2 || tokens != 33+12 {
		t.Errorf("after an Anthropic stream: %d requests, %d tokens; want 2, 45", n, tokens)
	}
	// An upstream that reports no usage is counted from the text.
	up.Reply = func(chat.Object) reply { return reply{Pieces: []string{strings.Repeat("word ", 40)}, NoUsage: true} }
	stream("gpt-test")
	if n, tokens := h.usageOf(bob); n != 3 || tokens <= 45+40 {
		t.Errorf("after a stream without usage: %d requests, %d tokens; want 3 and an estimate of the 200-byte answer", n, tokens)
	}
}

// auditLog adapts the audit stream to the Auditor interface.
type auditLog struct{ l *audit.Log }

func (a auditLog) Append(ctx context.Context, r audit.Record) error {
	_, err := a.l.Append(ctx, r)
	return err
}

func TestUsageSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	up := newUpstream(t, "openai")
	up.Reply = func(chat.Object) reply { return reply{Pieces: []string{"ok"}, In: 20, Out: 30} }
	ctx := testCtx(t)
	start := func() (*harness, *natsd.Server, *audit.Log) {
		srv, err := natsd.Start(natsd.Config{StoreDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		nc, err := srv.Connect("llmgw-test")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		log, err := audit.Open(ctx, js, audit.Options{})
		if err != nil {
			t.Fatal(err)
		}
		h := newHarness(t, llmgw.Config{
			Models:  []llmgw.Model{oneModel("gpt-test", up)},
			Budgets: []llmgw.Budget{{Identity: alice, TokensPerDay: 100}},
			State:   js,
			Auditor: auditLog{log},
		})
		return h, srv, log
	}
	call := func(h *harness) error {
		_, err := h.client(alice).Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: "gpt-test", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}, MaxTokens: openai.Int(30)})
		return err
	}

	h, srv, _ := start()
	for range 2 {
		if err := call(h); err != nil {
			t.Fatal(err)
		}
	}
	if e := apiError(t, call(h)); e.StatusCode != http.StatusPaymentRequired {
		t.Fatalf("third call: %d", e.StatusCode)
	}
	h.srv.Close()
	srv.Shutdown()

	h, srv, log := start()
	defer srv.Shutdown()
	if n, tokens := h.usageOf(alice); n != 2 || tokens != 100 {
		t.Errorf("after restart: %d requests, %d tokens; want 2, 100", n, tokens)
	}
	if e := apiError(t, call(h)); e.StatusCode != http.StatusPaymentRequired {
		t.Errorf("after restart the budget was fresh again: %d", e.StatusCode)
	}
	// Every call went into the hash-chained audit stream, which accepted the records and still verifies.
	deadline := time.Now().Add(5 * time.Second)
	for {
		rep, err := log.Verify(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Records >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit stream holds %d records, want 4", rep.Records)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
