package sdktest

import (
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/internal/loadbench"
	"github.com/umbra-mesh/umbra/internal/natsd"
	"github.com/umbra-mesh/umbra/workgroups"
)

// BenchmarkRecordPath measures the record path side by side with its baseline, in one run: N sessions, one
// sender each, 512-byte payloads, through the real relay on the overlay (contract checks, the envelope appended
// with fsync, its audit record written by the recorder with fsync, then the acknowledgement), and the embedded
// store's own fsync-always appends at the same concurrency on the same disk. Each reports envelopes/s and the
// p50/p99 from send to acknowledgement (p50-us, p99-us). A third row runs the envelope store alone. A first row,
// overlay-rtt, is the raw round trip the one-session goal is judged against: the same payload written by one
// agent to another over a mutual-TLS overlay connection (as the relay's are) and a short answer read back.
func BenchmarkRecordPath(b *testing.B) {
	payload := make([]byte, 512)
	for i := range payload {
		payload[i] = 'x'
	}
	b.Run("overlay-rtt/sessions-1", func(b *testing.B) { benchOverlayRoundTrip(b, payload) })
	for _, n := range []int{1, 8, 32, 128} {
		b.Run(fmt.Sprintf("relay/sessions-%d", n), func(b *testing.B) {
			ctx := context.Background()
			terms := defaultTerms()
			terms.MaxMessages, terms.MaxEnvelopeBytes = 1<<40, 4096
			w := newPricingWorld(b, terms)
			sends := make([]func() error, n)
			for i := range sends {
				sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
				if err != nil {
					b.Fatal(err)
				}
				sends[i] = func() error {
					sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					defer cancel()
					_, err := sess.Send(sctx, "quote.request", payload)
					return err
				}
				if err := sends[i](); err != nil { // opens the session's relay connection
					b.Fatal(err)
				}
			}
			loadbench.Run(b, "envelopes", sends)
		})
		// The baseline: the embedded store's own fsync-always appends, one message per publish, one sender per
		// session, on the same disk.
		b.Run(fmt.Sprintf("store/sessions-%d", n), func(b *testing.B) {
			ctx := context.Background()
			ns, err := natsd.Start(natsd.Config{StoreDir: b.TempDir(), SyncAlways: true})
			if err != nil {
				b.Fatal(err)
			}
			defer ns.Shutdown()
			js := mustJetStream(b, ns)
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage}); err != nil {
				b.Fatal(err)
			}
			sends := make([]func() error, n)
			for i := range sends {
				subject := fmt.Sprintf("bench.%d", i)
				sends[i] = func() error {
					_, err := js.Publish(ctx, subject, payload)
					return err
				}
			}
			loadbench.Run(b, "envelopes", sends)
		})
		// The envelope store the relay uses (look-up, compare-and-set on the session, group commit), without the
		// relay: what the relay adds is the difference between this and the relay's row.
		b.Run(fmt.Sprintf("envstore/sessions-%d", n), func(b *testing.B) {
			ctx := context.Background()
			ns, err := natsd.Start(natsd.Config{StoreDir: b.TempDir(), SyncAlways: true})
			if err != nil {
				b.Fatal(err)
			}
			defer ns.Shutdown()
			s, err := envstore.Open(ctx, mustJetStream(b, ns), envstore.Options{Stream: "BENCH"})
			if err != nil {
				b.Fatal(err)
			}
			var mu sync.Mutex
			next := 0
			sends := make([]func() error, n)
			for i := range sends {
				session := fmt.Sprintf("bench-%d", i)
				sends[i] = func() error {
					mu.Lock()
					next++
					id := fmt.Sprint(next)
					mu.Unlock()
					_, err := s.Append(ctx, envstore.Envelope{ID: id, Session: session, To: "recipient", Data: payload}, 0)
					return err
				}
			}
			loadbench.Run(b, "envelopes", sends)
		})
	}
}

// benchOverlayRoundTrip measures writing payload from one agent to another over the overlay and reading a short
// answer, the shape of a send and its acknowledgement without the relay.
func benchOverlayRoundTrip(b *testing.B, payload []byte) {
	ctx := context.Background()
	w := newPricingWorld(b, defaultTerms())
	env.Grant(b, "bench-rtt", []spiffeid.ID{w.quoter.ID()}, []spiffeid.ID{w.buyer.ID()})
	ln, err := w.quoter.Listen("bench-rtt")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	answer := make([]byte, 64)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, len(payload))
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(answer); err != nil {
				return
			}
		}
	}()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := w.buyer.Dial(dctx, "bench-rtt")
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, len(answer))
	loadbench.Run(b, "round-trips", []func() error{func() error {
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := conn.Write(payload); err != nil {
			return err
		}
		_, err := io.ReadFull(conn, buf)
		return err
	}})
}

func mustJetStream(b *testing.B, ns *natsd.Server) jetstream.JetStream {
	b.Helper()
	nc, err := ns.Connect("bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	return js
}
