package controller

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/internal/natsd"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// recorderWorld is the envelope stream, the audit trail and the recorder's hints on an embedded NATS server
// whose data directory outlives it, so that a test can stop everything and start again as after a crash.
type recorderWorld struct {
	t     *testing.T
	dir   string
	ns    *natsd.Server
	env   *envstore.Store
	trail *audit.Log
	hints table[recorderHint]
	strm  jetstream.Stream
}

func openRecorderWorld(t *testing.T, dir string) *recorderWorld {
	t.Helper()
	ns, err := natsd.Start(natsd.Config{StoreDir: dir, SyncAlways: true})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := ns.Connect("recorder-test")
	if err != nil {
		ns.Shutdown()
		t.Fatal(err)
	}
	w := &recorderWorld{t: t, dir: dir, ns: ns}
	t.Cleanup(w.close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	w.openStores(js)
	return w
}

// openStores opens the envelope stream, the trail and the hints through js, as a controller does.
func (w *recorderWorld) openStores(js jetstream.JetStream) {
	t := w.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	replicas := 1
	if r, ok := js.(replicated); ok {
		replicas = r.n
	}
	var err error
	if w.env, err = envstore.Open(ctx, js, envstore.Options{Stream: envelopeStream, Replicas: replicas}); err != nil {
		t.Fatal(err)
	}
	if w.trail, err = audit.Open(ctx, js, audit.Options{Replicas: replicas}); err != nil {
		t.Fatal(err)
	}
	if w.hints, err = openTable[recorderHint](ctx, js, "umbra_recorder"); err != nil {
		t.Fatal(err)
	}
	if w.strm, err = js.Stream(ctx, envelopeStream); err != nil {
		t.Fatal(err)
	}
}

func (w *recorderWorld) close() {
	if w.ns != nil {
		w.ns.Shutdown()
		w.ns = nil
	}
}

func (w *recorderWorld) recorder() *envelopeRecorder {
	r := newEnvelopeRecorder(w.env, w.trail, w.hints, w.strm)
	r.actor = "spiffe://test.local/controller/api/controller"
	return r
}

// appendEnvelopes stores n envelopes of one session as the relay does, before anything records them.
func (w *recorderWorld) appendEnvelopes(ctx context.Context, n int) []workgroups.Header {
	w.t.Helper()
	sid, err := workgroups.NewSessionID(rand.Reader)
	if err != nil {
		w.t.Fatal(err)
	}
	from, to := spiffeid.RequireFromString("spiffe://test.local/globex/agent/buyer"), spiffeid.RequireFromString("spiffe://test.local/acme/agent/quoter")
	wg, err := workgroups.ParseWorkgroupID("acme/pricing")
	if err != nil {
		w.t.Fatal(err)
	}
	var hs []workgroups.Header
	for i := range n {
		id, err := workgroups.NewEnvelopeID(rand.Reader)
		if err != nil {
			w.t.Fatal(err)
		}
		payload := []byte(fmt.Sprintf(`{"n":%d}`, i))
		h := workgroups.Header{ID: id, Session: sid, From: from, To: to, Type: "quote.request", Time: time.Now().UTC(),
			ContentType: "application/json"}.WithPayload(payload)
		stamp := func(seq uint64) ([]byte, error) {
			at := h
			at.Seq = seq
			return workgroups.AppendFrame(nil, at, payload)
		}
		frame, err := stamp(uint64(i + 1))
		if err != nil {
			w.t.Fatal(err)
		}
		if _, err := w.env.Append(ctx, envstore.Envelope{ID: id.String(), Session: sid.String(), To: to.String(), Data: frame,
			Stamp: stamp, Meta: envelopeMeta(wg, audit.DecisionAllow, json.RawMessage(`{"reasons":["policy0"]}`))}, 0); err != nil {
			w.t.Fatal(err)
		}
		h.Seq = uint64(i + 1)
		hs = append(hs, h)
	}
	return hs
}

// records returns the envelope.accepted records by envelope stream sequence, failing on any duplicate.
func (w *recorderWorld) records(ctx context.Context) map[uint64]audit.Record {
	w.t.Helper()
	got := map[uint64]audit.Record{}
	if _, err := w.trail.Scan(ctx, 0, func(r audit.Record) error {
		if r.Kind != kindEnvelopeAccepted {
			return nil
		}
		seq, ok := streamSeqOf(r)
		if !ok {
			return fmt.Errorf("record %d names no envelope", r.Seq)
		}
		if _, dup := got[seq]; dup {
			return fmt.Errorf("envelope %d recorded twice", seq)
		}
		got[seq] = r
		return nil
	}); err != nil {
		w.t.Fatal(err)
	}
	return got
}

var errCrash = errors.New("crash")

// TestRecorderCrashBoundaries stops the recorder at each step of recording an envelope, as a kill -9 would,
// restarts the store on the same data directory and checks that every stored envelope ends up with exactly
// one audit record, that nothing is reported recorded before its record is stored, and that the chain verifies.
func TestRecorderCrashBoundaries(t *testing.T) {
	for _, step := range []string{stepRead, stepRecorded, stepAdvanced} {
		t.Run(step, func(t *testing.T) {
			limit := testlimit.Start(t, 2*time.Minute)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dir := t.TempDir()

			limit.Step("store envelopes, then record them until a crash at %q of the 7th", step)
			w := openRecorderWorld(t, dir)
			headers := w.appendEnvelopes(ctx, 20)
			r := w.recorder()
			r.crashAt = func(at string, seq uint64) error {
				if at == step && (seq == 7 || at != stepRead && seq >= 7) {
					return errCrash
				}
				return nil
			}
			if err := r.follow(ctx); !errors.Is(err, errCrash) {
				t.Fatalf("follow = %v, want the crash", err)
			}
			// The crash hits the batch that holds the 7th envelope: before it is stored, nothing of that batch
			// counts; once the position has moved, all of it does.
			if got := r.position(); (got >= 7) != (step == stepAdvanced) {
				t.Fatalf("position after the crash at %q = %d", step, got)
			}
			short, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
			if err := r.wait(short, 7); (err == nil) != (step == stepAdvanced) {
				t.Errorf("wait for envelope 7 after a crash at %q: %v", step, err)
			}
			scancel()
			w.close()

			limit.Step("restart on the same data directory and record the rest")
			w = openRecorderWorld(t, dir)
			more := w.appendEnvelopes(ctx, 5) // sent after the restart
			r = w.recorder()
			rctx, rcancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() {
				defer close(done)
				r.run(rctx)
			}()
			if err := r.wait(ctx, 25); err != nil {
				t.Fatal(err)
			}
			rcancel()
			<-done

			limit.Step("compare the stream with the trail")
			recs := w.records(ctx)
			if len(recs) != 25 {
				t.Fatalf("%d envelopes recorded, want 25", len(recs))
			}
			for i, h := range append(headers, more...) {
				rec, ok := recs[uint64(i+1)]
				if !ok {
					t.Fatalf("envelope %d has no record", i+1)
				}
				var got workgroups.Header
				if err := json.Unmarshal(rec.Data, &got); err != nil {
					t.Fatal(err)
				}
				if got.ID != h.ID || got.Seq != h.Seq || rec.Actor != h.From.String() || rec.Workgroup != "acme/pricing" ||
					rec.Session != h.Session.String() || string(rec.Diagnostic) != `{"reasons":["policy0"]}` {
					t.Fatalf("record of envelope %d = %+v, want envelope %s seq %d", i+1, rec, h.ID, h.Seq)
				}
			}
			if _, err := w.trail.Verify(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}
