// Package tracing sets up OpenTelemetry tracing for Umbra's daemons: an OTLP/HTTP exporter when an endpoint is
// configured, and a no-op provider otherwise, so tracing is off by default and costs nothing when off.
//
// Setup never installs a process-wide provider: the provider it returns is passed to whatever traces (the
// controller's relay, the gateways, agents), so several daemons in one process keep their own.
package tracing
