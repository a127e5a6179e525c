package llmgw

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/umbra-mesh/umbra/llmgw/provider"
)

// tracerName names the instrumentation scope of the gateway's spans.
const tracerName = "github.com/umbra-mesh/umbra/llmgw"

// tracing is the gateway's tracer and the W3C trace-context propagator. Without a TracerProvider the tracer
// is a no-op one: spans are not recording, and nothing is extracted or injected.
type tracing struct {
	on     bool
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
}

func newTracing(tp trace.TracerProvider) tracing {
	if tp == nil {
		return tracing{tracer: noop.NewTracerProvider().Tracer(tracerName), prop: propagation.TraceContext{}}
	}
	return tracing{on: true, tracer: tp.Tracer(tracerName), prop: propagation.TraceContext{}}
}

// traced serves h inside an llm.request server span, a child of the caller's span when the request carries
// a traceparent header. The span ends when h returns, so after the last chunk of a stream.
func (g *Gateway) traced(h http.HandlerFunc) http.HandlerFunc {
	if !g.trace.on {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		ctx := g.trace.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := g.trace.tracer.Start(ctx, "llm.request", trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path)))
		defer span.End()
		h(w, r.WithContext(ctx))
	}
}

// traceCall puts what the call's audit record says on the request's span: no prompt, no completion.
func traceCall(ctx context.Context, c *call) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{
		attribute.String("umbra.request_id", c.id),
		attribute.String("gen_ai.operation.name", c.operation),
		attribute.String("umbra.llm.ingress", c.ingress),
		attribute.Int("http.response.status_code", c.status),
		attribute.Bool("umbra.llm.stream", c.stream),
	}
	if c.known {
		attrs = append(attrs, attribute.String("umbra.caller", c.principal.ID.String()))
	}
	if c.requested != "" {
		attrs = append(attrs, attribute.String("gen_ai.request.model", c.requested))
	}
	if c.model != "" {
		attrs = append(attrs, attribute.String("umbra.llm.model", c.model))
	}
	if c.upstream != "" {
		attrs = append(attrs, attribute.String("gen_ai.response.model", c.upstream),
			attribute.String("gen_ai.provider.name", c.provider), attribute.String("umbra.llm.endpoint", c.endpoint))
	}
	if c.attempts > 0 {
		attrs = append(attrs, attribute.Int("umbra.llm.attempts", c.attempts))
	}
	if c.usage.Input != 0 || c.usage.Output != 0 {
		attrs = append(attrs, attribute.Int64("gen_ai.usage.input_tokens", c.usage.Input),
			attribute.Int64("gen_ai.usage.output_tokens", c.usage.Output))
	}
	if c.route != nil {
		attrs = append(attrs, attribute.String("umbra.llm.route", string(c.route.Layer)))
	}
	outcome := "ok"
	if c.errCode != "" {
		outcome = c.errCode
	}
	attrs = append(attrs, attribute.String("umbra.outcome", outcome))
	if !c.begun && c.errCode != "" {
		// Refused before anything went upstream: the refusal is the record's kind (llm.denied, ...).
		attrs = append(attrs, attribute.String("umbra.refusal", c.kind))
	}
	span.SetAttributes(attrs...)
	if c.errCode != "" {
		span.SetStatus(codes.Error, c.message)
	}
}

// startUpstream starts the llm.upstream client span of one attempt on ep; requests made with the returned
// context carry its traceparent.
func (g *Gateway) startUpstream(ctx context.Context, m *model, ep *endpoint, n int) (context.Context, trace.Span) {
	if !g.trace.on {
		return ctx, trace.SpanFromContext(ctx) // the caller's, never ended here
	}
	return g.trace.tracer.Start(ctx, "llm.upstream", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.String("umbra.llm.model", m.Name),
			attribute.String("gen_ai.provider.name", ep.cfg.Provider),
			attribute.String("gen_ai.request.model", ep.cfg.Model),
			attribute.String("umbra.llm.endpoint", ep.label),
			attribute.Int("umbra.llm.attempt", n),
		))
}

// endUpstream records how an attempt ended and ends its span.
func (g *Gateway) endUpstream(span trace.Span, err error) {
	if !g.trace.on {
		return
	}
	if err != nil {
		if pe, ok := err.(*provider.Error); ok && pe.Status != 0 {
			span.SetAttributes(attribute.Int("http.response.status_code", pe.Status))
		}
		span.SetAttributes(attribute.String("umbra.outcome", "error"))
		span.SetStatus(codes.Error, err.Error())
	} else {
		span.SetAttributes(attribute.String("umbra.outcome", "ok"))
	}
	span.End()
}

// tracedClient returns hc with a transport that injects the traceparent of the request's context into each
// upstream request; hc itself is left alone. Without tracing it returns hc.
func (t tracing) tracedClient(hc *http.Client) *http.Client {
	if !t.on {
		return hc
	}
	c := *hc
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c.Transport = &injector{base: base, prop: t.prop}
	return &c
}

// injector adds the W3C traceparent of a request's context to its headers.
type injector struct {
	base http.RoundTripper
	prop propagation.TextMapPropagator
}

func (i *injector) RoundTrip(r *http.Request) (*http.Response, error) {
	if !trace.SpanContextFromContext(r.Context()).IsValid() {
		return i.base.RoundTrip(r)
	}
	r = r.Clone(r.Context()) // a RoundTripper does not modify its request
	i.prop.Inject(r.Context(), propagation.HeaderCarrier(r.Header))
	return i.base.RoundTrip(r)
}
