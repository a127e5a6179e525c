package envstore

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/umbra-mesh/umbra/internal/natsd"
)

const (
	recipientA = "spiffe://umbra.test/agent/a"
	recipientB = "spiffe://umbra.test/agent/b"
)

// startServer starts an embedded JetStream server on dir that fsyncs before acknowledging. The caller shuts it
// down (see testServer for one that is shut down at the end of the test).
func startServer(tb testing.TB, dir string) *natsd.Server {
	tb.Helper()
	return startServerSync(tb, dir, true)
}

// startServerSync is startServer with a choice of fsync policy, for benchmarks.
func startServerSync(tb testing.TB, dir string, syncAlways bool) *natsd.Server {
	tb.Helper()
	srv, err := natsd.Start(natsd.Config{StoreDir: dir, SyncAlways: syncAlways})
	if err != nil {
		tb.Fatal(err)
	}
	return srv
}

func testServer(tb testing.TB) *natsd.Server {
	tb.Helper()
	srv := startServer(tb, tb.TempDir())
	tb.Cleanup(srv.Shutdown)
	return srv
}

// connect opens a client connection that is closed at the end of the test.
func connect(tb testing.TB, srv *natsd.Server) jetstream.JetStream {
	tb.Helper()
	nc, err := srv.Connect(tb.Name())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return js
}

func open(tb testing.TB, js jetstream.JetStream, opts Options) *Store {
	tb.Helper()
	s, err := Open(context.Background(), js, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// newStore returns a Store on a fresh server.
func newStore(tb testing.TB, opts Options) *Store {
	tb.Helper()
	return open(tb, connect(tb, testServer(tb)), opts)
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// streamMsgs is how many messages the stream holds, whatever the store thinks.
func streamMsgs(t *testing.T, s *Store) uint64 {
	t.Helper()
	info, err := s.stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}
