package mcpgw

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// withTraceparent adds the caller span's traceparent to every request, as a traced agent's HTTP client does.
type withTraceparent struct {
	header http.Header
	next   http.RoundTripper
}

func (w withTraceparent) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("traceparent", w.header.Get("traceparent"))
	return w.next.RoundTrip(r)
}

func spanAttr(sp tracetest.SpanStub, key string) any {
	for _, kv := range sp.Attributes {
		if string(kv.Key) == key {
			return kv.Value.AsInterface()
		}
	}
	return nil
}

func TestTracingToolCall(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme, TracerProvider: tp})

	// The caller traces with its own provider; only the traceparent header links it to the gateway.
	callerTP := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = callerTP.Shutdown(context.Background()) })
	ctx, callerSpan := callerTP.Tracer("caller").Start(context.Background(), "agent.work")
	defer callerSpan.End()
	header := http.Header{}
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(header))

	cctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	hc := &http.Client{Transport: withTraceparent{header: header, next: asIdentity{id: alice, next: http.DefaultTransport}}}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "traced-client", Version: "1"}, nil).Connect(cctx,
		&mcp.StreamableClientTransport{Endpoint: e.url, HTTPClient: hc, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()

	res, err := cs.CallTool(cctx, &mcp.CallToolParams{Name: "notes__echo", Arguments: map[string]any{"text": "hi"}})
	if err != nil || res.IsError {
		t.Fatalf("notes__echo: %v %+v", err, res)
	}
	if _, err := cs.CallTool(cctx, &mcp.CallToolParams{Name: "notes__nope", Arguments: map[string]any{}}); err == nil {
		t.Fatal("a call of an unknown tool was answered")
	}

	calls := map[string]tracetest.SpanStub{}
	var backends []tracetest.SpanStub
	for _, sp := range spans.GetSpans() {
		switch sp.Name {
		case "mcp.tools/call":
			calls[spanAttr(sp, "gen_ai.tool.name").(string)] = sp
		case "mcp.backend tools/call":
			backends = append(backends, sp)
		}
	}
	ok, refused := calls["notes__echo"], calls["notes__nope"]
	for name, sp := range map[string]tracetest.SpanStub{"allowed": ok, "refused": refused} {
		if sp.SpanKind != trace.SpanKindServer || sp.SpanContext.TraceID() != callerSpan.SpanContext().TraceID() ||
			sp.Parent.SpanID() != callerSpan.SpanContext().SpanID() || !sp.Parent.IsRemote() {
			t.Errorf("%s call span %q: kind %v, trace %s, parent %s; want a server child of the caller's span %s",
				name, sp.Name, sp.SpanKind, sp.SpanContext.TraceID(), sp.Parent.SpanID(), callerSpan.SpanContext().SpanID())
		}
		if got := spanAttr(sp, "umbra.caller"); got != alice {
			t.Errorf("%s call span: caller %v", name, got)
		}
	}
	for key, want := range map[string]any{"umbra.decision": "allow", "umbra.mcp.backend": "notes", "umbra.outcome": statusOK} {
		if got := spanAttr(ok, key); got != want {
			t.Errorf("allowed call span: %s = %v, want %v", key, got, want)
		}
	}
	if len(backends) != 1 {
		t.Fatalf("%d backend spans, want 1 (the refused call reaches no backend)", len(backends))
	}
	bs := backends[0]
	if bs.Parent.SpanID() != ok.SpanContext.SpanID() || bs.SpanKind != trace.SpanKindClient ||
		spanAttr(bs, "umbra.mcp.backend_name") != "echo" || spanAttr(bs, "umbra.outcome") != statusOK {
		t.Errorf("backend span: parent %s (want %s), kind %v, attributes %v", bs.Parent.SpanID(), ok.SpanContext.SpanID(),
			bs.SpanKind, bs.Attributes)
	}
	if spanAttr(refused, "umbra.decision") != "deny" || spanAttr(refused, "umbra.refusal") != "hidden" ||
		refused.Status.Code != codes.Error {
		t.Errorf("refused call span: attributes %v, status %v", refused.Attributes, refused.Status)
	}
}

func TestTracingApprovalWait(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: approvalPolicies, Approvals: Approvals{Timeout: 15 * time.Second},
		TracerProvider: tp})
	c := e.connect(t, alice)
	done := make(chan error, 1)
	go func() {
		_, err := c.call(t, "notes__write", map[string]any{"text": "pay 10 EUR"})
		done <- err
	}()
	r := e.pendingCall(t)
	if code := e.decide(t, "approve", r.ID, r.ArgsDigest); code != http.StatusOK {
		t.Fatalf("approve: %d", code)
	}
	waitErr(t, done)
	var call *tracetest.SpanStub
	for _, sp := range spans.GetSpans() {
		if sp.Name == "mcp.tools/call" {
			call = &sp
		}
	}
	if call == nil {
		t.Fatal("no mcp.tools/call span")
	}
	if spanAttr(*call, "umbra.approval.id") != r.ID || spanAttr(*call, "umbra.approval.decision") != "approved" ||
		spanAttr(*call, "umbra.outcome") != statusOK {
		t.Errorf("approved call's span: %v", call.Attributes)
	}
	if w, _ := spanAttr(*call, "umbra.approval.wait_ms").(float64); w <= 0 {
		t.Errorf("approval wait %v ms", spanAttr(*call, "umbra.approval.wait_ms"))
	}
}

func waitErr(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testDeadline):
		t.Fatal("the call did not end")
	}
}
