package tracing_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/umbra-mesh/umbra/internal/tracing"
)

func TestSetupExportsOverOTLPHTTP(t *testing.T) {
	got := make(chan *coltrace.ExportTraceServiceRequest, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
			t.Errorf("collector got %s %s, want POST /v1/traces", r.Method, r.URL.Path)
			http.Error(w, "no", http.StatusNotFound)
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
			t.Errorf("content type %q, want application/x-protobuf", ct)
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading the export: %v", err)
			return
		}
		var req coltrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(b, &req); err != nil {
			t.Errorf("decoding the export: %v", err)
			return
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		resp, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		_, _ = w.Write(resp)
		got <- &req
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tp, shutdown, err := tracing.Setup(ctx, tracing.Config{Endpoint: srv.URL, Service: "umbra-test"})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("test").Start(ctx, "umbra.test")
	span.End()
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case req := <-got:
		var names []string
		var service string
		for _, rs := range req.GetResourceSpans() {
			for _, kv := range rs.GetResource().GetAttributes() {
				if kv.GetKey() == "service.name" {
					service = kv.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					names = append(names, s.GetName())
				}
			}
		}
		if len(names) != 1 || names[0] != "umbra.test" || service != "umbra-test" {
			t.Fatalf("collector got spans %v of service %q, want [umbra.test] of umbra-test", names, service)
		}
	case <-ctx.Done():
		t.Fatal("the collector got nothing")
	}
}

func TestSetupWithoutEndpointIsOff(t *testing.T) {
	var conns atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.Listener = ln
	srv.Config.ConnState = func(net.Conn, http.ConnState) { conns.Add(1) }
	srv.Start()
	defer srv.Close()
	// The environment names the server, but Setup reads it only when told to.
	t.Setenv(tracing.EnvEndpoint, srv.URL)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tp, shutdown, err := tracing.Setup(ctx, tracing.Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("test").Start(ctx, "umbra.test")
	if span.SpanContext().IsValid() || span.IsRecording() {
		t.Error("a span of the provider without an endpoint records")
	}
	span.End()
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 0 {
		t.Fatalf("the collector saw %d connection events with tracing off", n)
	}
}

func TestSetupRefusesABadEndpoint(t *testing.T) {
	for _, ep := range []string{"127.0.0.1:4318", "ftp://127.0.0.1:4318", "http://"} {
		if _, _, err := tracing.Setup(context.Background(), tracing.Config{Endpoint: ep}); err == nil {
			t.Errorf("Setup accepted endpoint %q", ep)
		}
	}
}
