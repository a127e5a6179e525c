package agentsdk

import (
	"context"
	"errors"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/umbra-mesh/umbra/workgroups"
)

// tracerName names the SDK's spans' instrumentation scope.
const tracerName = "github.com/umbra-mesh/umbra/agentsdk"

// Span names and attribute keys the SDK traces with (docs/tracing.md lists them all).
const (
	spanSend    = "umbra.envelope.send"
	spanReceive = "umbra.envelope.receive"
	spanHTTP    = "umbra.http.client"

	attrSession     = "umbra.session.id"
	attrEnvelope    = "umbra.envelope.id"
	attrMessageType = "umbra.message.type"
	attrSeq         = "umbra.envelope.seq"
	attrCode        = "umbra.relay.code"
)

// WithTracerProvider makes the agent trace with tp: Send and SendEnvelope record a span umbra.envelope.send and
// carry its W3C traceparent in the envelope header, Receive records umbra.envelope.receive as its child, and
// HTTPClient's requests carry a traceparent header, so the relay's and the gateways' spans join the agent's
// traces. Default: no tracing, and headers and requests carry no trace context.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tracerProvider = tp }
}

// tracer is how an agent traces: off unless WithTracerProvider named a provider.
type tracer struct {
	on bool
	t  trace.Tracer
}

func newTracer(tp trace.TracerProvider) tracer {
	if tp == nil {
		return tracer{t: noop.NewTracerProvider().Tracer(tracerName)}
	}
	return tracer{on: true, t: tp.Tracer(tracerName)}
}

// startSend starts the span of sending h and returns h carrying its traceparent. With tracing off it returns h
// unchanged and a span that records nothing.
func (tr tracer) startSend(ctx context.Context, h workgroups.Header) (workgroups.Header, trace.Span) {
	if !tr.on {
		return h, noop.Span{}
	}
	ctx, span := tr.t.Start(ctx, spanSend, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		attribute.String(attrSession, h.Session.String()),
		attribute.String(attrEnvelope, h.ID.String()),
		attribute.String(attrMessageType, h.Type)))
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	h.TraceParent = carrier.Get("traceparent")
	return h, span
}

// endSend ends the span of a send that ended with seq or err.
func endSend(span trace.Span, seq uint64, err error) {
	if !span.IsRecording() {
		span.End()
		return
	}
	if err != nil {
		var re *RelayError
		if errors.As(err, &re) {
			span.SetAttributes(attribute.String(attrCode, re.Code))
		}
		span.SetStatus(codes.Error, err.Error())
	} else {
		span.SetAttributes(attribute.Int64(attrSeq, int64(seq)))
	}
	span.End()
}

// received records the span of receiving env, a child of the span its sender put in its header.
func (tr tracer) received(ctx context.Context, env Envelope) {
	if !tr.on {
		return
	}
	if env.Header.TraceParent != "" {
		ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": env.Header.TraceParent})
	}
	_, span := tr.t.Start(ctx, spanReceive, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
		attribute.String(attrSession, env.Header.Session.String()),
		attribute.String(attrEnvelope, env.Header.ID.String()),
		attribute.String(attrMessageType, env.Header.Type),
		attribute.Int64(attrSeq, int64(env.Header.Seq))))
	span.End()
}

// tracingTransport records a client span per request and sends its traceparent with it, so that a gateway's
// span of the request joins the agent's trace.
type tracingTransport struct {
	base http.RoundTripper
	t    trace.Tracer
}

func (t *tracingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, span := t.t.Start(req.Context(), spanHTTP, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("http.request.method", req.Method),
		attribute.String("server.address", req.URL.Hostname()),
		attribute.String("url.path", req.URL.Path)))
	defer span.End()
	out := req.Clone(ctx) // a RoundTripper must not change the caller's request
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(out.Header))
	resp, err := t.base.RoundTrip(out)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		return nil, err
	}
	span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))
	if resp.StatusCode >= 500 {
		span.SetStatus(codes.Error, resp.Status)
	}
	return resp, nil
}
