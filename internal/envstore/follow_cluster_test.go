package envstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
)

// followResume bounds how long a follower may take to read what was appended after the server holding its
// consumer died, the stream keeping its leader. A consumer's death shows only as missing idle heartbeats: with
// the client's default for ordered consumers (5 s, noticed after two) this took 10 s or more, and every relay
// waiting for a record of the envelopes read by that follower waited as long. Now two missed heartbeats of 1 s
// end the follow and it is followed again; a new consumer placed on the dead server (the cluster may not know it
// is gone yet) costs another two seconds.
const followResume = 10 * time.Second

// TestFollowersResumeAfterTheirConsumersServerDies follows the envelope stream (as the recording controller
// does) and the audit trail (as every other controller does, to answer the relay's waits) through a server of a
// three-server cluster, kills the server that holds the follower's consumer (neither the follower's own server
// nor the stream's leader), appends through another server, and requires the follower to read the new entry
// within followResume.
func TestFollowersResumeAfterTheirConsumersServerDies(t *testing.T) {
	type follower struct {
		stream string
		// start opens the stream through js; append appends entry n through writer; follow calls seen with each
		// entry's number until ctx ends.
		start func(ctx context.Context, js, writer jetstream.JetStream) (appendN func(n int) error, follow func(ctx context.Context, seen func(n int)) error)
	}
	cases := map[string]follower{
		"envelope stream": {stream: defaultStream, start: func(ctx context.Context, js, writer jetstream.JetStream) (func(int) error, func(context.Context, func(int)) error) {
			r, w := open(t, js, Options{Replicas: 3}), open(t, writer, Options{Replicas: 3})
			var last uint64 // a follow goes on from where the one before it stopped
			return func(n int) error {
					actx, cancel := context.WithTimeout(ctx, 3*time.Second)
					defer cancel()
					_, err := w.Append(actx, Envelope{ID: fmt.Sprint(n), Session: "s", To: recipientA, Data: []byte(fmt.Sprint(n))}, 0)
					return err
				}, func(ctx context.Context, seen func(int)) error {
					return r.Follow(ctx, last, func(m Msg) error {
						var n int
						_, err := fmt.Sscan(m.ID, &n)
						last = m.StreamSeq
						seen(n)
						return err
					})
				}
		}},
		"audit trail": {stream: "UMBRA_AUDIT_FOLLOW", start: func(ctx context.Context, js, writer jetstream.JetStream) (func(int) error, func(context.Context, func(int)) error) {
			r, err := audit.Open(ctx, js, audit.Options{Stream: "UMBRA_AUDIT_FOLLOW", Replicas: 3})
			if err != nil {
				t.Fatal(err)
			}
			w, err := audit.Open(ctx, writer, audit.Options{Stream: "UMBRA_AUDIT_FOLLOW", Replicas: 3})
			if err != nil {
				t.Fatal(err)
			}
			var last uint64
			return func(n int) error {
					actx, cancel := context.WithTimeout(ctx, 3*time.Second)
					defer cancel()
					_, err := w.Append(actx, audit.Record{Kind: "envelope.accepted", Actor: recipientA, Session: fmt.Sprint(n)})
					return err
				}, func(ctx context.Context, seen func(int)) error {
					return r.Follow(ctx, last, time.Time{}, func(rec audit.Record) error {
						var n int
						_, err := fmt.Sscan(rec.Session, &n)
						last = rec.Seq
						seen(n)
						return err
					})
				}
		}},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			c := natsdtest.StartCluster(t, 3)
			// n0 holds the follower's connection, n1 the writer's and the stream's leadership; n2 is to die.
			appendN, follow := f.start(ctx, c.JetStream(0), c.JetStream(1))
			c.LeadStream(f.stream, 1)
			inspect, err := c.JetStream(1).Stream(ctx, f.stream)
			if err != nil {
				t.Fatal(err)
			}
			seen := make(chan int, 64)
			next := 0
			// startFollow starts a follower and returns once it read entry next; stop ends it.
			startFollow := func() (stop func()) {
				fctx, fcancel := context.WithCancel(ctx)
				done := make(chan error, 1)
				// As the recorder and every controller's follower of the trail do: a follow that fails (its
				// consumer lost) is followed again at once from where it stopped.
				go func() {
					for {
						err := follow(fctx, func(n int) { seen <- n })
						if fctx.Err() != nil {
							done <- nil
							return
						}
						t.Logf("following again after: %v", err)
						time.Sleep(100 * time.Millisecond)
					}
				}()
				next++
				if err := appendN(next); err != nil {
					t.Fatal(err)
				}
				for got := -1; got != next; {
					select {
					case got = <-seen:
					case err := <-done:
						t.Fatalf("the follower stopped: %v", err)
					case <-time.After(10 * time.Second):
						t.Fatalf("the follower did not read entry %d within 10 s (last read %d)", next, got)
					}
				}
				return func() { fcancel(); <-done }
			}
			// The server of an ordered consumer is drawn among the stream's; start again until it is n2's.
			var stop func()
			for try := 0; ; try++ {
				stop = startFollow()
				host := consumerHost(t, ctx, inspect)
				if host == "n2" {
					break
				}
				stop()
				if try == 30 {
					t.Fatalf("the follower's consumer never landed on n2 (last on %s)", host)
				}
			}
			defer stop()

			killed := time.Now()
			c.Kill(2)
			next++
			for deadline := time.Now().Add(15 * time.Second); ; {
				if err := appendN(next); err == nil {
					break
				} else if time.Now().After(deadline) {
					t.Fatalf("append after n2's death: %v", err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			appended := time.Since(killed)
			for got := -1; got != next; {
				select {
				case got = <-seen:
				case <-time.After(followResume - time.Since(killed)):
					t.Fatalf("the follower read nothing appended after its consumer's server died within %s (appended %s after the kill)",
						followResume, appended.Round(time.Millisecond))
				}
			}
			t.Logf("appended %s and read %s after the consumer's server died", appended.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
		})
	}
}

// consumerHost is the name of the server holding the stream's newest consumer (a follower stopped before may
// leave its consumer behind until the server removes it).
func consumerHost(t *testing.T, ctx context.Context, s jetstream.Stream) string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var newest *jetstream.ConsumerInfo
		infos := s.ListConsumers(ctx)
		for info := range infos.Info() {
			if newest == nil || info.Created.After(newest.Created) {
				newest = info
			}
		}
		if infos.Err() == nil && newest != nil && newest.Cluster != nil && newest.Cluster.Leader != "" {
			return newest.Cluster.Leader
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream %s: no consumer with a leader (%v)", s.CachedInfo().Config.Name, infos.Err())
		}
	}
}
