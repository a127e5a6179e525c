package llmgw_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/guard"
)

func TestMetricsListenServesPrometheusText(t *testing.T) {
	up := newUpstream(t, "openai")
	h := newHarness(t, llmgw.Config{
		Models:        []llmgw.Model{oneModel("gpt-test", up)},
		Budgets:       []llmgw.Budget{{Identity: bob, TokensPerDay: 1}},
		Guardrails:    llmgw.Guardrails{PII: guard.Redact},
		MetricsListen: "127.0.0.1:0",
	})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	addr, err := h.gw.ServeMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.do(alice, "POST", "/v1/chat/completions", `{"model":"gpt-test","messages":[{"role":"user","content":"mail jane.doe@example.com"}]}`)
	h.do(bob, "POST", "/v1/chat/completions", `{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}`)
	h.do(bob, "POST", "/v1/chat/completions", `{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}`)
	h.auditor.wait(t, kindIs(llmgw.KindBudgetExceeded))

	client := &http.Client{Timeout: 5 * time.Second}
	var text string
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := client.Get("http://" + addr.String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
			t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		text = string(b)
		if strings.Contains(text, `outcome="budget_exceeded"} 2`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{
		`umbra_llmgw_requests_total{caller="` + alice + `",gen_ai_request_model="gpt-test",outcome="ok"} 1`,
		`umbra_llmgw_requests_total{caller="` + bob + `",gen_ai_request_model="gpt-test",outcome="budget_exceeded"} 2`,
		`umbra_llmgw_budget_refusals_total{limit="tokens_per_day",subject="identity"} 2`,
		`umbra_llmgw_guardrail_findings_total{category="pii",detector="email",direction="request",field="content",mode="redact"} 1`,
		`# TYPE gen_ai_server_request_duration_seconds histogram`,
		`gen_ai_server_request_duration_seconds_bucket{`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Log(text)
	}
	// Only GET /metrics is served there.
	if resp, err := client.Get("http://" + addr.String() + "/v1/models"); err != nil || resp.StatusCode != 404 {
		t.Errorf("other paths: %v %v", resp, err)
	}
	cancel()
	deadline = time.Now().Add(5 * time.Second)
	for {
		if _, err := client.Get("http://" + addr.String() + "/metrics"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the metrics server outlived its context")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMetricsListenRefusesRemoteAddressesUnlessAllowed(t *testing.T) {
	up := newUpstream(t, "openai")
	for _, tc := range []struct {
		addr  string
		allow bool
		ok    bool
	}{
		{"127.0.0.1:9464", false, true},
		{"[::1]:9464", false, true},
		{"localhost:9464", false, true},
		{"0.0.0.0:9464", false, false},
		{":9464", false, false},
		{"192.0.2.7:9464", false, false},
		{"0.0.0.0:9464", true, true},
		{"127.0.0.1", false, false},
	} {
		_, err := llmgw.New(llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}, MetricsListen: tc.addr,
			MetricsAllowRemote: tc.allow})
		if (err == nil) != tc.ok {
			t.Errorf("%s (allow remote %v): %v", tc.addr, tc.allow, err)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("a multi-line error: %v", err)
		}
	}
}
