package llmgw_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sort"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/loadbench"
	"github.com/umbra-mesh/umbra/internal/natsd"
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

// idTransport sends requests as id over base (asTransport, with a pool big enough for concurrent clients).
type idTransport struct {
	id   string
	base http.RoundTripper
}

func (t idTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(identityHeader, t.id)
	return t.base.RoundTrip(r)
}

// BenchmarkChatLoad sends chat completions to the sample model directly, through a plain HTTP reverse proxy and
// through the gateway, side by side, in four cases: 32 concurrent clients with the sample model holding each
// request 1 ms (an upstream of fixed latency: the throughput ratio); 32 clients with no delay (the ceiling of the
// whole process); one client with no delay (the latency the gateway adds to one request); and the first case again
// with the usage counters in a JetStream bucket fsynced on every write, as umbra llm gateway keeps them (the other
// cases keep them in memory). The overlay is not in the path: the gateway's handler is served on loopback HTTP,
// so what the gateway adds is measured apart from the overlay hop. The reverse proxy (net/http/httputil) is the
// floor for anything that terminates HTTP in front of the model: a second hop's worth of HTTP work on the same
// cores.
func BenchmarkChatLoad(b *testing.B) {
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"summarise the quarterly widget report for the board"}]}`)
	for _, c := range []struct {
		delay   time.Duration
		clients int
		kv      bool // usage counters in a JetStream bucket fsynced on every write, as umbra llm gateway keeps them
	}{{time.Millisecond, 32, false}, {0, 32, false}, {0, 1, false}, {time.Millisecond, 32, true}} {
		upstream := httptest.NewServer(samplemodel.WithDelay(samplemodel.Handler("m-1"), c.delay))
		cfg := llmgw.Config{Models: []llmgw.Model{{Name: "m", Endpoints: []llmgw.Endpoint{
			{Provider: "openai-compatible", BaseURL: upstream.URL + "/v1", Model: "m-1"}}}}}
		name := fmt.Sprintf("delay=%s/clients=%d", c.delay, c.clients)
		if c.kv {
			cfg.State = benchJetStream(b)
			name += "/usage=kv"
		}
		h := newHarness(b, cfg)
		pool := &http.Transport{MaxIdleConnsPerHost: 2 * c.clients}
		post := func(client *http.Client, url string) func() error {
			return func() error {
				resp, err := client.Post(url, "application/json", bytes.NewReader(body))
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return nil
			}
		}
		b.Run(name+"/direct", func(b *testing.B) {
			loadbench.Run(b, "req", loadbench.Same(c.clients, post(&http.Client{Transport: pool, Timeout: 30 * time.Second}, upstream.URL+"/v1/chat/completions")))
		})
		target, _ := url.Parse(upstream.URL)
		rp := httputil.NewSingleHostReverseProxy(target)
		rp.Transport = &http.Transport{MaxIdleConnsPerHost: 2 * c.clients}
		proxy := httptest.NewServer(rp)
		b.Run(name+"/proxy", func(b *testing.B) {
			loadbench.Run(b, "req", loadbench.Same(c.clients, post(&http.Client{Transport: pool, Timeout: 30 * time.Second}, proxy.URL+"/v1/chat/completions")))
		})
		b.Run(name+"/gateway", func(b *testing.B) {
			loadbench.Run(b, "req", loadbench.Same(c.clients, post(&http.Client{Transport: idTransport{alice, pool}, Timeout: 30 * time.Second}, h.srv.URL+"/v1/chat/completions")))
		})
		pool.CloseIdleConnections()
		proxy.Close()
		upstream.Close()
	}
}

// benchJetStream starts a JetStream server that fsyncs every write, as the gateway host runs it, until b ends.
func benchJetStream(b *testing.B) jetstream.JetStream {
	b.Helper()
	srv, err := natsd.Start(natsd.Config{StoreDir: b.TempDir(), SyncAlways: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Shutdown)
	nc, err := srv.Connect("llmgw-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	return js
}
