package natsd_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/natsd"
	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
)

// records keeps every record logged through it.
type records struct {
	mu  sync.Mutex
	all []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(r.all, rec)
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

// find returns the first record at level whose message contains text.
func (r *records) find(level slog.Level, text string) (slog.Record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.all {
		if rec.Level == level && strings.Contains(rec.Message, text) {
			return rec, true
		}
	}
	return slog.Record{}, false
}

// tlsAndAddrs is a TLS configuration for servers and routes on loopback, and n free loopback addresses.
func tlsAndAddrs(t *testing.T, n int) (*tls.Config, []string) {
	t.Helper()
	tlsCfg, err := natsdtest.RouteTLS()
	if err != nil {
		t.Fatal(err)
	}
	return tlsCfg, natsdtest.FreeAddrs(t, n)
}

// TestServerLogReachesSlog: the server's notices reach the logger at debug, and a client that connects without
// the certificate the listener requires is logged as an error, which the server would otherwise keep to itself.
func TestServerLogReachesSlog(t *testing.T) {
	tlsCfg, addrs := tlsAndAddrs(t, 1)
	addr := addrs[0]
	log := &records{}
	srv, err := natsd.Start(natsd.Config{StoreDir: t.TempDir(), ListenAddr: addr, TLS: tlsCfg, Log: slog.New(log)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if _, ok := log.find(slog.LevelDebug, "Starting nats-server"); !ok {
		t.Error("the server's start-up notice was not logged at debug")
	}

	// A NATS client reads the server's INFO line in plain text, then starts TLS.
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 4096)); err != nil {
		t.Fatalf("reading the server's INFO: %v", err)
	}
	noCert := tls.Client(conn, &tls.Config{RootCAs: tlsCfg.RootCAs, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
	noCert.Handshake()
	noCert.Read(make([]byte, 1)) // TLS 1.3: the server refuses the missing certificate after the client's Finished

	deadline := time.Now().Add(5 * time.Second)
	for {
		if rec, ok := log.find(slog.LevelError, "TLS handshake error"); ok {
			t.Logf("logged: %s", rec.Message)
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a client without a certificate was not logged as an error within 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClusterStartAndStopAreQuiet starts three servers of a cluster one after another, as `umbra dev
// --controllers 3` does, creates a replicated stream, and stops them one after another. None of them may log a
// warning or an error on the way. The first server's routes to the two not started yet fail at first: that is
// logged, at info.
func TestClusterStartAndStopAreQuiet(t *testing.T) {
	tlsCfg, addrs := tlsAndAddrs(t, 3)
	logs := make([]*records, 3)
	servers := make([]*natsd.Server, 3)
	for i := range servers {
		logs[i] = &records{}
		srv, err := natsd.Start(natsd.Config{StoreDir: t.TempDir(), SyncAlways: true, ServerName: "q" + strconv.Itoa(i),
			Cluster: &natsd.Cluster{Name: "quiet", Listen: addrs[i], Routes: addrs, TLS: tlsCfg}, Log: slog.New(logs[i])})
		if err != nil {
			t.Fatal(err)
		}
		servers[i] = srv
		defer func() {
			if servers[i] != nil {
				servers[i].Shutdown()
			}
		}()
		time.Sleep(500 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, srv := range servers {
		if err := srv.WaitJetStream(ctx); err != nil {
			t.Fatal(err)
		}
	}
	nc, err := servers[0].Connect("quiet-test")
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "QUIET", Subjects: []string{"quiet.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "quiet.one", []byte("1")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	for i, srv := range servers {
		srv.Shutdown()
		servers[i] = nil
	}
	if _, ok := logs[0].find(slog.LevelInfo, "Error trying to connect to route"); !ok {
		t.Error("the first server's failed routes to servers not started yet were not logged at info")
	}
	for i, log := range logs {
		log.mu.Lock()
		for _, rec := range log.all {
			if rec.Level >= slog.LevelWarn {
				t.Errorf("server %d logged at %s: %s", i, rec.Level, rec.Message)
			}
		}
		log.mu.Unlock()
	}
}
