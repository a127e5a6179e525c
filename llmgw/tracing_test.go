package llmgw_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/chat"
)

// tracedUpstream sits in front of a fake upstream: it keeps the traceparent of every request, and can hold a
// stream after its second chunk until released.
type tracedUpstream struct {
	*upstream
	srv *httptest.Server

	mu      sync.Mutex
	parents []string

	holdStream bool
	held       chan struct{} // closed when the stream is held
	release    chan struct{} // close to let it go on
}

func newTracedUpstream(t *testing.T, hold bool) *tracedUpstream {
	u := &tracedUpstream{upstream: newUpstream(t, "openai"), holdStream: hold,
		held: make(chan struct{}), release: make(chan struct{})}
	inner := u.upstream.srv.Config.Handler
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/chat/completions" {
			inner.ServeHTTP(w, r)
			return
		}
		u.mu.Lock()
		u.parents = append(u.parents, r.Header.Get("traceparent"))
		u.mu.Unlock()
		if u.holdStream {
			w = &holdingWriter{ResponseWriter: w, u: u, ctx: r.Context()}
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *tracedUpstream) traceparents() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.parents...)
}

func (u *tracedUpstream) model(name string) llmgw.Model {
	return llmgw.Model{Name: name, Backoff: time.Millisecond, Endpoints: []llmgw.Endpoint{{
		Provider: "openai", BaseURL: u.srv.URL + "/v1", APIKey: u.key, Model: "up-" + name, InputPrice: 2, OutputPrice: 8}}}
}

// holdingWriter blocks the upstream's handler after its second flush until the test releases it.
type holdingWriter struct {
	http.ResponseWriter
	u       *tracedUpstream
	ctx     context.Context
	flushes int
}

func (h *holdingWriter) Flush() {
	h.ResponseWriter.(http.Flusher).Flush()
	h.flushes++
	if h.flushes != 2 {
		return
	}
	close(h.u.held)
	select {
	case <-h.u.release:
	case <-h.ctx.Done():
	case <-time.After(20 * time.Second):
	}
}

// tracedSetup is a gateway with an in-memory trace exporter, and a caller with a span of its own.
type tracedSetup struct {
	h          *harness
	up         *tracedUpstream
	spans      *tracetest.InMemoryExporter
	callerSpan trace.SpanContext
	header     http.Header // carries the caller span's traceparent
}

func newTracedSetup(t *testing.T, hold bool) *tracedSetup {
	s := &tracedSetup{up: newTracedUpstream(t, hold), spans: tracetest.NewInMemoryExporter()}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(s.spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	s.h = newHarness(t, llmgw.Config{Models: []llmgw.Model{s.up.model("m")}, TracerProvider: tp})

	// The caller traces with its own provider; only the traceparent header links it to the gateway.
	callerTP := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = callerTP.Shutdown(context.Background()) })
	ctx, span := callerTP.Tracer("caller").Start(context.Background(), "agent.ask")
	t.Cleanup(func() { span.End() })
	s.callerSpan = span.SpanContext()
	s.header = http.Header{}
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(s.header))
	return s
}

// post sends a chat request as id with the caller's traceparent.
func (s *tracedSetup) post(t *testing.T, id, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodPost, s.h.srv.URL+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", s.header.Get("traceparent"))
	resp, err := s.h.httpClient(id).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func (s *tracedSetup) ended(name string) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, sp := range s.spans.GetSpans() {
		if sp.Name == name {
			out = append(out, sp)
		}
	}
	return out
}

// one returns the only ended span called name, waiting briefly for it (a call is finished after its answer).
func (s *tracedSetup) one(t *testing.T, name string) tracetest.SpanStub {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := s.ended(name)
		if len(got) == 1 {
			return got[0]
		}
		if len(got) > 1 || time.Now().After(deadline) {
			t.Fatalf("want one %s span, have %d", name, len(got))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func attrOf(sp tracetest.SpanStub, key string) (attribute.Value, bool) {
	for _, kv := range sp.Attributes {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func wantAttr(t *testing.T, sp tracetest.SpanStub, key string, want any) {
	t.Helper()
	v, ok := attrOf(sp, key)
	if !ok {
		t.Errorf("%s span: no attribute %s", sp.Name, key)
		return
	}
	if got := v.AsInterface(); got != want {
		t.Errorf("%s span: %s = %v (%T), want %v (%T)", sp.Name, key, got, got, want, want)
	}
}

// checkLinks checks that the gateway's request span is a child of the caller's, its upstream span a child of
// it, and that the upstream saw the upstream span as its parent.
func (s *tracedSetup) checkLinks(t *testing.T) (req, up tracetest.SpanStub) {
	t.Helper()
	req, up = s.one(t, "llm.request"), s.one(t, "llm.upstream")
	if req.SpanKind != trace.SpanKindServer || up.SpanKind != trace.SpanKindClient {
		t.Errorf("span kinds: request %v, upstream %v", req.SpanKind, up.SpanKind)
	}
	if req.SpanContext.TraceID() != s.callerSpan.TraceID() || req.Parent.SpanID() != s.callerSpan.SpanID() {
		t.Errorf("llm.request: trace %s parent %s, want trace %s parent %s", req.SpanContext.TraceID(),
			req.Parent.SpanID(), s.callerSpan.TraceID(), s.callerSpan.SpanID())
	}
	if !req.Parent.IsRemote() {
		t.Error("llm.request: parent not taken from the request")
	}
	if up.Parent.SpanID() != req.SpanContext.SpanID() || up.SpanContext.TraceID() != s.callerSpan.TraceID() {
		t.Errorf("llm.upstream: parent %s, want the request span %s", up.Parent.SpanID(), req.SpanContext.SpanID())
	}
	tps := s.up.traceparents()
	if len(tps) != 1 {
		t.Fatalf("upstream got %d chat requests, want 1", len(tps))
	}
	seen := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(),
		propagation.HeaderCarrier(http.Header{"Traceparent": {tps[0]}})))
	if seen.TraceID() != s.callerSpan.TraceID() || seen.SpanID() != up.SpanContext.SpanID() {
		t.Errorf("upstream saw traceparent %q, want trace %s parent %s (the llm.upstream span)", tps[0],
			s.callerSpan.TraceID(), up.SpanContext.SpanID())
	}
	wantAttr(t, up, "gen_ai.provider.name", "openai")
	wantAttr(t, up, "umbra.outcome", "ok")
	return req, up
}

func TestTracingChat(t *testing.T) {
	s := newTracedSetup(t, false)
	s.up.Reply = func(chat.Object) reply { return reply{Pieces: []string{"hello"}, In: 11, Out: 5} }
	resp := s.post(t, alice, `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	if _, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, err %v", resp.StatusCode, err)
	}
	req, _ := s.checkLinks(t)
	wantAttr(t, req, "umbra.caller", alice)
	wantAttr(t, req, "gen_ai.operation.name", "chat")
	wantAttr(t, req, "gen_ai.request.model", "m")
	wantAttr(t, req, "gen_ai.response.model", "up-m")
	wantAttr(t, req, "gen_ai.usage.input_tokens", int64(11))
	wantAttr(t, req, "gen_ai.usage.output_tokens", int64(5))
	wantAttr(t, req, "umbra.outcome", "ok")
	if _, ok := attrOf(req, "umbra.refusal"); ok {
		t.Error("an answered call's span carries a refusal")
	}
}

func TestTracingRefusal(t *testing.T) {
	s := newTracedSetup(t, false)
	const mallory = "spiffe://acme.test/acme/agent/mallory" // not in the directory
	resp := s.post(t, mallory, `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %d, want 403", resp.StatusCode)
	}
	req := s.one(t, "llm.request")
	if req.Parent.SpanID() != s.callerSpan.SpanID() {
		t.Errorf("llm.request parent %s, want the caller's %s", req.Parent.SpanID(), s.callerSpan.SpanID())
	}
	wantAttr(t, req, "umbra.refusal", llmgw.KindDenied)
	wantAttr(t, req, "umbra.caller", mallory)
	wantAttr(t, req, "http.response.status_code", int64(http.StatusForbidden))
	if req.Status.Code != codes.Error {
		t.Errorf("refused span status %v, want Error", req.Status)
	}
	if n := len(s.ended("llm.upstream")); n != 0 || len(s.up.traceparents()) != 0 {
		t.Errorf("a refused call went upstream: %d upstream spans", n)
	}
}

func TestTracingStreamEndsWithStream(t *testing.T) {
	s := newTracedSetup(t, true)
	s.up.Reply = func(chat.Object) reply { return reply{Pieces: []string{"one ", "two ", "three"}, In: 9, Out: 3} }
	resp := s.post(t, alice, `{"model":"m","stream":true,"stream_options":{"include_usage":true},`+
		`"messages":[{"role":"user","content":"count"}]}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	select {
	case <-s.up.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream stream was never held")
	}
	// The caller is answering from the stream, which the upstream holds open: no span may have ended.
	if n := len(s.spans.GetSpans()); n != 0 {
		t.Fatalf("%d spans ended while the stream was still open", n)
	}
	released := time.Now()
	close(s.up.release)
	body, err := io.ReadAll(resp.Body)
	if err != nil || !strings.Contains(string(body), "[DONE]") {
		t.Fatalf("stream: %v, %q", err, body)
	}
	req, up := s.checkLinks(t)
	for _, sp := range []tracetest.SpanStub{req, up} {
		if sp.EndTime.Before(released) {
			t.Errorf("%s span ended at %s, before the stream did (%s)", sp.Name, sp.EndTime, released)
		}
	}
	wantAttr(t, req, "umbra.llm.stream", true)
	wantAttr(t, req, "gen_ai.usage.output_tokens", int64(3)) // from the stream's last chunk
	wantAttr(t, req, "umbra.outcome", "ok")
}
