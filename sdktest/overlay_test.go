package sdktest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/controller/controllertest"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

var env *controllertest.Env

// relaySpans holds the spans the shared controller's relay records: only for envelopes whose sender traces (its
// sampler follows the sender's decision and samples nothing else).
var relaySpans = tracetest.NewInMemoryExporter()

// testMaxIdentityAge is the shared controller's maximum identity age: short enough for
// TestIdentityMaxAgeAndReenroll to wait it out, long enough for every test that renews to do so well before its
// identity reaches it.
const testMaxIdentityAge = 30 * time.Second

func TestMain(m *testing.M) {
	if spec := os.Getenv(childControllerEnv); spec != "" {
		os.Exit(runChildController(spec)) // a network for TestSessionEventsSurviveControllerRestart to kill
	}
	var err error
	env, err = controllertest.Start(controllertest.Options{MaxIdentityAge: testMaxIdentityAge,
		// The attack tests count every refusal of their raw peers in the audit trail.
		RefusalRecordsPerMinute: 1000,
		// The session cap and record path tests propose far more than a minute's share from one identity.
		ProposalsPerMinute: 10000,
		// TestGrantUse sees the overlay's uses recorded within seconds.
		GrantUseGranularity: time.Second,
		TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSyncer(relaySpans),
			sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start test network:", err)
		os.Exit(1)
	}
	code := m.Run()
	env.Close()
	os.Exit(code)
}

// serveEcho hosts an echo service that writes the caller's verified SPIFFE ID first.
func serveEcho(t testing.TB, a *agentsdk.Agent, service string) net.Listener {
	t.Helper()
	ln, err := a.Listen(service)
	if err != nil {
		t.Fatalf("listen %s: %v", service, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				peer, err := agentsdk.PeerIdentity(c)
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s\n", peer)
				io.Copy(c, c)
			}()
		}
	}()
	return ln
}

func TestDialListenEcho(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	server := env.NewAgent(t, "acme", "agent", uniq("echo-server"))
	client := env.NewAgent(t, "acme", "agent", uniq("echo-client"))
	env.Grant(t, "echo1", []spiffeid.ID{server.ID()}, []spiffeid.ID{client.ID()})
	ln := serveEcho(t, server, "echo1")

	// Hosted: a router has the service's terminator and the overlay's store holds it. During a burst of terminator
	// changes at the controller that took tens of seconds (docs/overlay-reliability.md, "A burst of terminator
	// removals"), so the wait is given as long as dialEcho's.
	hctx, hcancel := context.WithTimeout(context.Background(), time.Minute)
	defer hcancel()
	began := time.Now()
	if err := agentsdk.WaitHosted(hctx, ln); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(began); waited > 5*time.Second {
		t.Logf("echo1 was hosted %s after Listen returned", waited.Round(time.Millisecond))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := client.Dial(ctx, "echo1")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	peer, err := agentsdk.PeerIdentity(conn)
	if err != nil {
		t.Fatal(err)
	}
	if peer != server.ID() {
		t.Fatalf("peer = %s, want %s", peer, server.ID())
	}
	line := make([]byte, len(client.ID().String())+1)
	if _, err := io.ReadFull(conn, line); err != nil {
		t.Fatal(err)
	}
	if got := string(line[:len(line)-1]); got != client.ID().String() {
		t.Fatalf("server saw caller %q, want %s", got, client.ID())
	}
	msg := []byte("hello over the overlay")
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, back); err != nil {
		t.Fatal(err)
	}
	if string(back) != string(msg) {
		t.Fatalf("echo = %q", back)
	}
	who, err := client.Controller().WhoAmI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if who.SPIFFEID != client.ID().String() || who.Org != "acme" || who.Admin {
		t.Fatalf("whoami = %+v", who)
	}
	ln.Close()
	if err := agentsdk.WaitHosted(ctx, ln); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WaitHosted on a closed listener = %v, want net.ErrClosed", err)
	}
}

// TestListenAgainAfterClose: an agent that closes its listener and hosts the same service again, three times, is
// reached through each new listener, and a connection to its other service stays up throughout.
func TestListenAgainAfterClose(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	server := env.NewAgent(t, "acme", "agent", uniq("again-server"))
	client := env.NewAgent(t, "acme", "agent", uniq("again-client"))
	env.Grant(t, "again1", []spiffeid.ID{server.ID()}, []spiffeid.ID{client.ID()})
	env.Grant(t, "again2", []spiffeid.ID{server.ID()}, []spiffeid.ID{client.ID()})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Hosting a service again in the overlay context that hosted it before leaves it without a terminator in the
	// overlay's store until the watchdog gives up on the bind (about 30 s), so the agent moves to a new context
	// first (agent.unbound); it then takes well under a second, and 20 s tells the two apart.
	hosted := func(ln net.Listener) {
		t.Helper()
		hctx, hcancel := context.WithTimeout(ctx, 20*time.Second)
		defer hcancel()
		if err := agentsdk.WaitHosted(hctx, ln); err != nil {
			t.Fatal(err)
		}
	}
	other := serveEcho(t, server, "again2")
	hosted(other)
	kept := dialEcho(t, ctx, client, "again2")
	for round := range 3 {
		ln := serveEcho(t, server, "again1")
		hosted(ln)
		dialEcho(t, ctx, client, "again1").Close()
		if err := ln.Close(); err != nil {
			t.Fatalf("round %d: close: %v", round, err)
		}
	}
	if broken, err := probe(kept); broken || err != nil {
		t.Fatalf("the connection to the agent's other service broke while it hosted again1 anew: %v", err)
	}
}

func TestNoGrantNoService(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	server := env.NewAgent(t, "acme", "agent", uniq("hidden-server"))
	outsider := env.NewAgent(t, "globex", "agent", uniq("outsider"))
	env.Grant(t, "hidden1", []spiffeid.ID{server.ID()}, nil)
	serveEcho(t, server, "hidden1")

	svcs, err := outsider.Services()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(svcs, "hidden1") {
		t.Fatalf("outsider sees %v", svcs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = outsider.Dial(ctx, "hidden1")
	if !errors.Is(err, agentsdk.ErrServiceNotFound) {
		t.Fatalf("dial without grant: err = %v, want ErrServiceNotFound", err)
	}
	_, err = outsider.Dial(ctx, "no-such-service")
	if !errors.Is(err, agentsdk.ErrServiceNotFound) {
		t.Fatalf("dial unknown: err = %v, want ErrServiceNotFound", err)
	}
}

// testLogger is a logger that writes to t's log from level up, until t's cleanups have run (a goroutine that
// logs later is not an error).
func testLogger(t testing.TB, level slog.Level) *slog.Logger {
	w := &testLogWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type testLogWriter struct {
	mu      sync.Mutex
	t       testing.TB
	stopped bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testLogWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}
