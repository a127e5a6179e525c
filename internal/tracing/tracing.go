package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// EnvEndpoint is the standard OpenTelemetry variable Setup reads when Config.Endpoint is empty.
const EnvEndpoint = "OTEL_EXPORTER_OTLP_ENDPOINT"

// Config says where spans go.
type Config struct {
	// Endpoint is the base URL of an OTLP/HTTP collector, such as http://127.0.0.1:4318; spans are posted to
	// its /v1/traces. Empty: the value of OTEL_EXPORTER_OTLP_ENDPOINT if UseEnv is set, else tracing is off.
	Endpoint string
	// UseEnv lets an empty Endpoint fall back to OTEL_EXPORTER_OTLP_ENDPOINT. Default: the environment is
	// not read.
	UseEnv bool
	// Service names the daemon in every span (service.name). Default "umbra".
	Service string
	// Logger receives the exporter's failures. Default: discard.
	Logger *slog.Logger
}

// Setup returns the tracer provider cfg asks for and the function that flushes and stops it. With no endpoint
// it returns a no-op provider and a shutdown that does nothing; no connection is ever made.
func Setup(ctx context.Context, cfg Config) (trace.TracerProvider, func(context.Context) error, error) {
	endpoint := cfg.Endpoint
	if endpoint == "" && cfg.UseEnv {
		endpoint = os.Getenv(EnvEndpoint)
	}
	if endpoint == "" {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, nil, fmt.Errorf("tracing: OTLP endpoint %q: want a URL such as http://127.0.0.1:4318", endpoint)
	}
	if cfg.Service == "" {
		cfg.Service = "umbra"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(u.JoinPath("v1", "traces").String())}
	if u.Scheme == "http" {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", endpoint, err)
	}
	res := resource.NewSchemaless(semconv.ServiceName(cfg.Service))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(&loggingExporter{SpanExporter: exp, log: log}),
		sdktrace.WithResource(res),
	)
	shutdown := func(ctx context.Context) error {
		if err := tp.Shutdown(ctx); err != nil {
			return fmt.Errorf("tracing: flushing spans: %w", err)
		}
		return nil
	}
	log.Info("tracing on", "endpoint", u.Redacted(), "service", cfg.Service)
	return tp, shutdown, nil
}

// loggingExporter logs a failed export to the daemon's logger instead of handing it to OpenTelemetry's
// process-wide error handler (which would print it to stderr).
type loggingExporter struct {
	sdktrace.SpanExporter
	log *slog.Logger
}

func (e *loggingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	if err != nil && !errors.Is(err, context.Canceled) {
		e.log.Warn("exporting spans failed; they are dropped", "spans", len(spans), "err", err)
	}
	return nil
}
