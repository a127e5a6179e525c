package envstore

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
)

// BenchmarkAppend measures Append with 512-byte envelopes on an embedded server, one session at a time and
// 32 sessions concurrently, with the server fsyncing every write (what Umbra runs) and with lazy fsync.
func BenchmarkAppend(b *testing.B) {
	data := make([]byte, 512)
	ctx := context.Background()
	for _, fsync := range []struct {
		name string
		on   bool
	}{{"fsync-always", true}, {"fsync-lazy", false}} {
		newBenchStore := func(b *testing.B) *Store {
			srv := startServerSync(b, b.TempDir(), fsync.on)
			b.Cleanup(srv.Shutdown)
			return open(b, connect(b, srv), Options{})
		}

		b.Run(fsync.name+"/sequential", func(b *testing.B) {
			s := newBenchStore(b)
			b.SetBytes(int64(len(data)))
			for i := 0; b.Loop(); i++ {
				if _, err := s.Append(ctx, Envelope{ID: fmt.Sprint(i), Session: "bench", To: recipientA, Data: data}, 0); err != nil {
					b.Fatal(err)
				}
			}
		})

		b.Run(fsync.name+"/parallel-32-sessions", func(b *testing.B) {
			const sessions = 32
			s := newBenchStore(b)
			var worker, seq atomic.Int64
			b.SetBytes(int64(len(data)))
			// 32 goroutines whatever GOMAXPROCS is, one session each.
			procs := runtime.GOMAXPROCS(0)
			b.SetParallelism((sessions + procs - 1) / procs)
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
}
