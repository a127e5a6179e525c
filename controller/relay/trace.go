package relay

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// SpanEnvelope is the name of the span the relay records per envelope. Its attributes: umbra.session.id,
// umbra.envelope.id, umbra.message.type, umbra.relay.outcome ("accepted", "duplicate" or the refusal code) and,
// once stored, umbra.envelope.seq.
const SpanEnvelope = "umbra.relay.envelope"

// traced is one with a span around it. The sender's traceparent only links the span to the sender's trace: it
// is read by the W3C propagator, which ignores anything malformed, and nothing else looks at it.
func (r *Relay) traced(ctx context.Context, sender spiffeid.ID, h workgroups.Header, payload []byte, counts map[string]uint64) api.RelayAck {
	if !r.tracing {
		return r.one(ctx, sender, h, payload, counts)
	}
	parent := ctx
	if h.TraceParent != "" {
		parent = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": h.TraceParent})
	}
	_, span := r.cfg.Tracer.Start(parent, SpanEnvelope, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
		attribute.String("umbra.session.id", h.Session.String()),
		attribute.String("umbra.envelope.id", h.ID.String()),
		attribute.String("umbra.message.type", h.Type)))
	defer span.End()
	ack := r.one(ctx, sender, h, payload, counts)
	switch {
	case ack.OK && ack.Duplicate:
		span.SetAttributes(attribute.String("umbra.relay.outcome", "duplicate"), attribute.Int64("umbra.envelope.seq", int64(ack.Seq)))
	case ack.OK:
		span.SetAttributes(attribute.String("umbra.relay.outcome", "accepted"), attribute.Int64("umbra.envelope.seq", int64(ack.Seq)))
	default:
		span.SetAttributes(attribute.String("umbra.relay.outcome", ack.Code))
		span.SetStatus(codes.Error, ack.Code)
	}
	return ack
}
