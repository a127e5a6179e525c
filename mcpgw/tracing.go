package mcpgw

import (
	"context"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/mcpgw/redact"
)

// tracerName names the instrumentation scope of the gateway's spans.
const tracerName = "github.com/umbra-mesh/umbra/mcpgw"

// tracing is the gateway's tracer; off (nil tracer) without a TracerProvider, when nothing is traced.
type tracing struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
}

func newTracing(tp trace.TracerProvider) tracing {
	if tp == nil {
		return tracing{}
	}
	return tracing{tracer: tp.Tracer(tracerName), prop: propagation.TraceContext{}}
}

func (t tracing) on() bool { return t.tracer != nil }

// traced wraps each JSON-RPC request of c in an mcp.<method> server span, a child of the W3C traceparent of
// the HTTP request that carried it, if any. Notifications are not traced.
func (g *Gateway) traced(c *caller) mcp.Middleware {
	return func(next mcp.MethodHandler) mcp.MethodHandler {
		if !g.trace.on() {
			return next
		}
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			if strings.HasPrefix(method, "notifications/") {
				return next(ctx, method, req)
			}
			if extra := req.GetExtra(); extra != nil && extra.Header != nil {
				ctx = g.trace.prop.Extract(ctx, propagation.HeaderCarrier(extra.Header))
			}
			attrs := []attribute.KeyValue{
				attribute.String("mcp.method.name", method),
				attribute.String("umbra.caller", c.id.String()),
			}
			if s := req.GetSession(); s != nil && s.ID() != "" {
				attrs = append(attrs, attribute.String("mcp.session.id", s.ID()))
			}
			switch r := req.(type) {
			case *mcp.CallToolRequest:
				attrs = append(attrs, attribute.String("gen_ai.tool.name", r.Params.Name))
			case *mcp.GetPromptRequest:
				attrs = append(attrs, attribute.String("mcp.prompt.name", r.Params.Name))
			case *mcp.ReadResourceRequest:
				attrs = append(attrs, attribute.String("mcp.resource.uri", r.Params.URI))
			}
			ctx, span := g.trace.tracer.Start(ctx, "mcp."+method, trace.WithSpanKind(trace.SpanKindServer),
				trace.WithAttributes(attrs...))
			defer span.End()
			res, err := next(ctx, method, req)
			if err != nil {
				span.SetStatus(codes.Error, err.Error())
			}
			return res, err
		}
	}
}

// traceRefused puts a refusal on the request's span.
func traceRefused(ctx context.Context, o *op, reason, detail string) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(o.traceAttrs(attribute.String("umbra.decision", "deny"),
		attribute.String("umbra.refusal", reason), attribute.String("umbra.refusal_reason", detail))...)
	span.SetStatus(codes.Error, detail)
}

// traceAllowed says on the request's span that the request was allowed and is forwarded.
func traceAllowed(ctx context.Context, o *op) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(o.traceAttrs(attribute.String("umbra.decision", "allow"))...)
	}
}

// traceDone puts how a forwarded request ended on its span.
func traceDone(ctx context.Context, o *op, status string) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(o.traceAttrs(attribute.String("umbra.outcome", status))...)
	if status != statusOK {
		span.SetStatus(codes.Error, status)
	}
}

// traceApproval records a wait for an administrator's decision on the request's span.
func traceApproval(ctx context.Context, id string, waited time.Duration, decision string) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.String("umbra.approval.id", id),
			attribute.Float64("umbra.approval.wait_ms", float64(waited.Microseconds())/1000),
			attribute.String("umbra.approval.decision", decision))
	}
}

func (o *op) traceAttrs(more ...attribute.KeyValue) []attribute.KeyValue {
	attrs := []attribute.KeyValue{attribute.String("umbra.ref", o.ref)}
	if o.backend != "" {
		attrs = append(attrs, attribute.String("umbra.mcp.backend", o.backend))
	}
	return append(attrs, more...)
}

// startBackend starts the client span of a request forwarded to o's backend.
func (g *Gateway) startBackend(ctx context.Context, o *op, method string) (context.Context, trace.Span) {
	if !g.trace.on() {
		return ctx, trace.SpanFromContext(ctx) // the request's (no-op) span, never ended here
	}
	return g.trace.tracer.Start(ctx, "mcp.backend "+method, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("mcp.method.name", method), attribute.String("umbra.mcp.backend", o.backend),
			attribute.String("umbra.mcp.backend_name", o.original), attribute.String("umbra.ref", o.ref)))
}

// endBackend records how the backend answered and ends its span.
func (g *Gateway) endBackend(span trace.Span, err error, toolError bool) {
	if !g.trace.on() {
		return
	}
	switch {
	case err != nil:
		span.SetAttributes(attribute.String("umbra.outcome", "error"))
		span.SetStatus(codes.Error, redact.String(err.Error()))
	case toolError:
		span.SetAttributes(attribute.String("umbra.outcome", statusToolError))
	default:
		span.SetAttributes(attribute.String("umbra.outcome", statusOK))
	}
	span.End()
}
