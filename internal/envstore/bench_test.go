package envstore

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
)

// BenchmarkAppend measures Append with 512-byte envelopes against an embedded server that fsyncs every write:
// one session at a time, and 32 sessions appended to concurrently.
func BenchmarkAppend(b *testing.B) {
	data := make([]byte, 512)
	ctx := context.Background()

	b.Run("sequential", func(b *testing.B) {
		s := newStore(b, Options{})
		b.SetBytes(int64(len(data)))
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			if _, err := s.Append(ctx, Envelope{ID: fmt.Sprint(i), Session: "bench", To: recipientA, Data: data}, 0); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("parallel-32-sessions", func(b *testing.B) {
		const sessions = 32
		s := newStore(b, Options{})
		var worker, seq atomic.Int64
		b.SetBytes(int64(len(data)))
		// 32 goroutines whatever GOMAXPROCS is, one session each.
		b.SetParallelism((sessions + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			session := fmt.Sprintf("bench-%d", worker.Add(1)%sessions)
			for pb.Next() {
				e := Envelope{ID: fmt.Sprint(seq.Add(1)), Session: session, To: recipientA, Data: data}
				if _, err := s.Append(ctx, e, 0); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
