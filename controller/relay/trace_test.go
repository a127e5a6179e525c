package relay_test

import (
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/relay"
	"github.com/umbra-mesh/umbra/workgroups"
)

func TestEnvelopeSpanIsAChildOfTheSendersSpan(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	w := newTracedWorld(t, tp.Tracer("relay-test"))
	s := w.session(contract())
	c := w.dial(consumer, api.RelayHello{Mode: "send"})
	const (
		traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
		spanID  = "00f067aa0ba902b7"
	)
	payload := []byte(`{"q":1}`)

	for _, tc := range []struct {
		name        string
		typ         string
		traceparent string
		outcome     string
		seq         int64 // 0: none
		linked      bool
	}{
		{"accepted", "quote.request", "00-" + traceID + "-" + spanID + "-01", "accepted", 1, true},
		{"refused", "order.place", "00-" + traceID + "-" + spanID + "-01", string(workgroups.ViolationTypeNotAllowed), 0, true},
		{"malformed traceparent", "quote.request", "00-not-a-trace-01", "accepted", 2, false},
		{"no traceparent", "quote.request", "", "accepted", 3, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exp.Reset()
			h := header(s, consumer, provider, tc.typ, payload)
			h.TraceParent = tc.traceparent
			ack := c.send(h, payload)
			if ack.OK != (tc.outcome == "accepted") {
				t.Fatalf("ack %+v, want outcome %s", ack, tc.outcome)
			}
			spans := exp.GetSpans()
			if len(spans) != 1 || spans[0].Name != relay.SpanEnvelope {
				t.Fatalf("spans %v, want one %s", spans.Snapshots(), relay.SpanEnvelope)
			}
			sp := spans[0]
			linked := sp.Parent.IsValid() && sp.Parent.TraceID().String() == traceID && sp.Parent.SpanID().String() == spanID &&
				sp.SpanContext.TraceID().String() == traceID && sp.Parent.IsRemote()
			if linked != tc.linked {
				t.Fatalf("span parent %v trace %v: linked %v, want %v", sp.Parent, sp.SpanContext.TraceID(), linked, tc.linked)
			}
			if !tc.linked && sp.Parent.IsValid() {
				t.Fatalf("span has parent %v, want a root span", sp.Parent)
			}
			attrs := map[attribute.Key]attribute.Value{}
			for _, kv := range sp.Attributes {
				attrs[kv.Key] = kv.Value
			}
			if attrs["umbra.session.id"].AsString() != s.ID.String() || attrs["umbra.envelope.id"].AsString() != h.ID.String() ||
				attrs["umbra.message.type"].AsString() != tc.typ || attrs["umbra.relay.outcome"].AsString() != tc.outcome {
				t.Fatalf("span attributes %v", sp.Attributes)
			}
			if seq, ok := attrs["umbra.envelope.seq"]; ok != (tc.seq != 0) || seq.AsInt64() != tc.seq {
				t.Fatalf("umbra.envelope.seq %v (present %v), want %d", seq.AsInt64(), ok, tc.seq)
			}
			if sp.SpanKind != trace.SpanKindConsumer {
				t.Fatalf("span kind %v", sp.SpanKind)
			}
		})
	}
}
