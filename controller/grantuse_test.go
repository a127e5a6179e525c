package controller

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
	"github.com/umbra-mesh/umbra/internal/zitictrl"
)

// overlayFeed stands in for the overlay's event source (sdktest TestGrantUse runs the real one): it hands the
// recorder's callback to the test, which calls it as OpenZiti's event goroutines would.
type overlayFeed struct {
	mu    sync.Mutex
	fn    func(zitictrl.Use)
	live  []zitictrl.Use
	names map[string]string // overlay id -> externalId or service name
}

func (f *overlayFeed) Uses(fn func(zitictrl.Use)) func() {
	f.mu.Lock()
	f.fn = fn
	f.mu.Unlock()
	return func() {}
}

func (f *overlayFeed) CurrentUses(now time.Time) ([]zitictrl.Use, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []zitictrl.Use
	for _, u := range f.live {
		u.At = now
		out = append(out, u)
	}
	return out, nil
}

func (f *overlayFeed) Names(identityID, serviceID string) (string, string, bool) {
	ext, ok1 := f.names[identityID]
	svc, ok2 := f.names[serviceID]
	return ext, svc, ok1 && ok2
}

func testJetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	return natsdtest.Connect(t, natsdtest.Start(t), "grant-use-test")
}

// TestGrantUseWritesCoarsely: a hundred dials in one granularity slot are one write to the bucket, the next slot
// one more; a recorder started again (after a crash) does not write a slot the bucket holds and keeps the time
// recording began; identities without a SPIFFE ID are not recorded.
func TestGrantUseWritesCoarsely(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js := testJetStream(t)
	feed := &overlayFeed{names: map[string]string{"i-agent": "spiffe://umbra.local/acme/agent/a", "i-router": "", "s-echo": "echo"}}
	log := slog.New(slog.DiscardHandler)
	g, err := openGrantUses(ctx, js, feed, time.Hour, log)
	if err != nil {
		t.Fatal(err)
	}
	since := g.since
	if since.IsZero() || time.Since(since) > time.Minute {
		t.Fatalf("tracking since %s, want about now", since)
	}
	key := "dial." + idKey(spiffeid.RequireFromString("spiffe://umbra.local/acme/agent/a")) + ".echo"
	writes := func() uint64 {
		t.Helper()
		e, err := g.t.kv.Get(ctx, key)
		if err != nil {
			t.Fatalf("read %s: %v", key, err)
		}
		return e.Revision() - 1 // the bucket's first message is tracking_since
	}
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	dial := func(at time.Time, n int) {
		for i := range n {
			g.note(zitictrl.Use{IdentityID: "i-agent", ServiceID: "s-echo", At: at.Add(time.Duration(i) * time.Second)})
			g.note(zitictrl.Use{IdentityID: "i-router", ServiceID: "s-echo", At: at})
		}
		g.flush(ctx)
	}
	dial(t0.Add(5*time.Minute), 100)
	dial(t0.Add(30*time.Minute), 100)
	if n := writes(); n != 1 {
		t.Fatalf("%d writes for 200 dials in one hour, want 1", n)
	}
	dial(t0.Add(70*time.Minute), 3)
	if n := writes(); n != 2 {
		t.Fatalf("%d writes after dials in a second hour, want 2", n)
	}

	again, err := openGrantUses(ctx, js, feed, time.Hour, log)
	if err != nil {
		t.Fatal(err)
	}
	if !again.since.Equal(since) {
		t.Fatalf("tracking since moved from %s to %s at a restart", since, again.since)
	}
	g = again
	dial(t0.Add(80*time.Minute), 10)
	if n := writes(); n != 2 {
		t.Fatalf("%d writes after a restart in a slot already written, want 2", n)
	}
	snap, err := g.snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := t0.Add(70*time.Minute + 2*time.Second) // the newest of the uses written together
	got := snap.Dial["spiffe://umbra.local/acme/agent/a"]["echo"]
	if !got.Equal(want) || len(snap.Dial) != 1 || len(snap.Bind) != 0 || !snap.Since.Equal(since) || snap.Granularity != time.Hour {
		t.Fatalf("snapshot %+v: want one dial of echo at %s, since %s", snap, want, since)
	}
}

// TestGrantUseRun runs the recorder with a short granularity while uses arrive from many goroutines and a
// binding stays live: both are recorded, and the binding's time moves on with the sweeps.
func TestGrantUseRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js := testJetStream(t)
	feed := &overlayFeed{names: map[string]string{"i-a": "spiffe://umbra.local/acme/agent/a", "i-h": "spiffe://umbra.local/acme/agent/h", "s": "echo"},
		live: []zitictrl.Use{{IdentityID: "i-h", ServiceID: "s", Bind: true}}}
	g, err := openGrantUses(ctx, js, feed, 100*time.Millisecond, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); g.run(rctx) }()
	for {
		feed.mu.Lock()
		fn := feed.fn
		feed.mu.Unlock()
		if fn != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				feed.fn(zitictrl.Use{IdentityID: "i-a", ServiceID: "s", At: time.Now()})
				time.Sleep(time.Millisecond)
			}
		})
	}
	wg.Wait()
	time.Sleep(300 * time.Millisecond)
	stop()
	<-done
	snap, err := g.snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dialed, bound := snap.Dial["spiffe://umbra.local/acme/agent/a"]["echo"], snap.Bind["spiffe://umbra.local/acme/agent/h"]["echo"]
	if dialed.IsZero() || time.Since(bound) > time.Second {
		t.Fatalf("dial recorded at %s, live binding at %s (want within the last second)", dialed, bound)
	}
}
