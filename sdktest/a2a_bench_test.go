package sdktest

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/umbra-mesh/umbra/workgroups"
)

// BenchmarkEnvelope compares an envelope's trip through the relay (contract checks, durable append with fsync,
// audit record, delivery) with the same bytes over a raw overlay connection between the same two agents.
func BenchmarkEnvelope(b *testing.B) {
	ctx := context.Background()
	terms := defaultTerms()
	terms.MaxMessages, terms.MaxEnvelopeBytes = 1<<40, 4096
	w := newPricingWorld(b, terms)
	payload := make([]byte, 512)
	for i := range payload {
		payload[i] = 'x'
	}

	b.Run("latency/relay", func(b *testing.B) {
		sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
		if err != nil {
			b.Fatal(err)
		}
		prov, err := w.quoter.Session(ctx, sess.ID())
		if err != nil {
			b.Fatal(err)
		}
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			start := time.Now()
			if _, err := sess.Send(ctx, "quote.request", payload); err != nil {
				b.Fatal(err)
			}
			if _, err := prov.Receive(ctx); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		b.ReportMetric(micros(percentile(lat, 50)), "p50-us/envelope")
		b.ReportMetric(micros(percentile(lat, 99)), "p99-us/envelope")
	})

	b.Run("latency/raw-overlay", func(b *testing.B) {
		env.Grant(b, "bench-raw-a2a", []spiffeid.ID{w.quoter.ID()}, []spiffeid.ID{w.buyer.ID()})
		ln, err := w.quoter.Listen("bench-raw-a2a")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		got := make(chan struct{})
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
				got <- struct{}{}
			}
		}()
		conn, err := w.buyer.Dial(ctx, "bench-raw-a2a")
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			start := time.Now()
			if _, err := conn.Write(payload); err != nil {
				b.Fatal(err)
			}
			<-got
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		b.ReportMetric(micros(percentile(lat, 50)), "p50-us/envelope")
		b.ReportMetric(micros(percentile(lat, 99)), "p99-us/envelope")
	})

	b.Run("throughput/relay-8-senders", func(b *testing.B) {
		sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
		if err != nil {
			b.Fatal(err)
		}
		prov, err := w.quoter.Session(ctx, sess.ID())
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(payload)))
		b.ResetTimer()
		start := time.Now()
		var wg sync.WaitGroup
		per := (b.N + 7) / 8
		for g := 0; g < 8; g++ {
			h, err := w.buyer.Session(ctx, sess.ID())
			if err != nil {
				b.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < per; i++ {
					if _, err := h.Send(ctx, "quote.request", payload); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		for i := 0; i < per*8; i++ {
			if _, err := prov.Receive(ctx); err != nil {
				b.Fatal(err)
			}
		}
		wg.Wait()
		b.ReportMetric(float64(per*8)/time.Since(start).Seconds(), "envelopes/s")
	})
}
