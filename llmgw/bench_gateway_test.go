package llmgw_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/samplemodel"
	"github.com/umbra-mesh/umbra/llmgw"
)

// BenchmarkChatCompletion compares a non-streamed chat completion sent directly to an OpenAI-compatible upstream
// with the same request through the gateway (identity, Cedar, budget reservation and settlement, guardrails on
// the request, audit, metrics).
func BenchmarkChatCompletion(b *testing.B) {
	upstream := httptest.NewServer(samplemodel.Handler("m-1"))
	defer upstream.Close()
	h := newHarness(b, llmgw.Config{Models: []llmgw.Model{{Name: "m", Endpoints: []llmgw.Endpoint{
		{Provider: "openai-compatible", BaseURL: upstream.URL + "/v1", Model: "m-1"}}}}})
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"summarise the quarterly widget report for the board"}]}`)
	run := func(b *testing.B, url string, client *http.Client) {
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			resp, err := client.Post(url, "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("status %d", resp.StatusCode)
			}
			lat = append(lat, time.Since(t0))
		}
		elapsed := time.Since(start)
		b.StopTimer()
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(lat[len(lat)*50/100].Microseconds()), "p50-us")
		b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()), "p99-us")
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	}
	b.Run("direct", func(b *testing.B) {
		run(b, upstream.URL+"/v1/chat/completions", &http.Client{})
	})
	b.Run("gateway", func(b *testing.B) {
		run(b, h.srv.URL+"/v1/chat/completions", h.httpClient(alice))
	})
}
