package natsdtest

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/natsd"
)

// Start starts one embedded server with JetStream in a temporary directory, fsyncing before it acknowledges,
// and shuts it down at the end of the test.
func Start(tb testing.TB) *natsd.Server {
	tb.Helper()
	s, err := natsd.Start(natsd.Config{StoreDir: tb.TempDir(), SyncAlways: true})
	if err != nil {
		tb.Fatalf("natsdtest: start a server: %v", err)
	}
	tb.Cleanup(s.Shutdown)
	return s
}

// Connect opens a JetStream client of s named name, closed at the end of the test.
func Connect(tb testing.TB, s *natsd.Server, name string) jetstream.JetStream {
	tb.Helper()
	nc, err := s.Connect(name)
	if err != nil {
		tb.Fatalf("natsdtest: connect %s: %v", name, err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("natsdtest: JetStream for %s: %v", name, err)
	}
	return js
}
