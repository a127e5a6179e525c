package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/natsd"
)

func startServer(t testing.TB, dir string) *natsd.Server {
	t.Helper()
	srv, err := natsd.Start(natsd.Config{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// connect opens a client on srv, closed at the end of the test.
func connect(t testing.TB, srv *natsd.Server, name string) jetstream.JetStream {
	t.Helper()
	nc, err := srv.Connect(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// newLog starts a server of its own and opens a Log on it.
func newLog(t testing.TB, opts Options) (*Log, jetstream.JetStream) {
	t.Helper()
	srv := startServer(t, t.TempDir())
	t.Cleanup(srv.Shutdown)
	js := connect(t, srv, t.Name())
	l, err := Open(context.Background(), js, opts)
	if err != nil {
		t.Fatal(err)
	}
	return l, js
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func record(i int, session string) Record {
	return Record{
		Kind:          "envelope.accepted",
		Actor:         testActor,
		Session:       session,
		Decision:      DecisionAllow,
		Reason:        fmt.Sprintf("record %d", i),
		PolicyVersion: "v1",
		Data:          json.RawMessage(fmt.Sprintf(`{"i": %d}`, i)),
	}
}

func appendN(t testing.TB, ctx context.Context, l *Log, n int) []Record {
	t.Helper()
	out := make([]Record, n)
	for i := range out {
		r, err := l.Append(ctx, record(i, ""))
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		out[i] = r
	}
	return out
}

func mustVerify(t testing.TB, ctx context.Context, l *Log, records int) Report {
	t.Helper()
	rep, err := l.Verify(ctx)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if rep.Records != records || rep.LastSeq != uint64(records) {
		t.Fatalf("verify: got %+v, want %d records", rep, records)
	}
	return rep
}

func wantBreak(t testing.TB, err error, seq uint64, p Problem) {
	t.Helper()
	var be *BreakError
	if !errors.Is(err, ErrBroken) || !errors.As(err, &be) {
		t.Fatalf("want a chain break, got %v", err)
	}
	if be.Seq != seq || be.Problem != p {
		t.Fatalf("got break at %d (%s), want %d (%s): %v", be.Seq, be.Problem, seq, p, err)
	}
}

func TestAppendVerifyExportSession(t *testing.T) {
	ctx := testCtx(t)
	l, _ := newLog(t, Options{})

	rep, err := l.Verify(ctx)
	if err != nil || rep != (Report{}) {
		t.Fatalf("empty stream: %+v, %v", rep, err)
	}

	sessions := []string{"", "ses_AAAA", "ses_BBBB", "ses_AAAA", "", "ses_AAAA", "ses_BBBB"}
	var appended []Record
	for i, s := range sessions {
		in := record(i, s)
		in.Prev, in.Hash, in.Seq = "forged", "forged", 1000 // ignored
		r, err := l.Append(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d got seq %d", i, r.Seq)
		}
		if i == 0 && r.Prev != "" || i > 0 && r.Prev != appended[i-1].Hash {
			t.Fatalf("record %d: prev %q does not link", i, r.Prev)
		}
		if r.Time.IsZero() || r.Time.Location() != time.UTC {
			t.Fatalf("record %d: time %v", i, r.Time)
		}
		appended = append(appended, r)
	}
	rep = mustVerify(t, ctx, l, len(sessions))
	if rep.LastHash != appended[len(appended)-1].Hash {
		t.Fatalf("report hash %s, want %s", rep.LastHash, appended[len(appended)-1].Hash)
	}

	t.Run("session", func(t *testing.T) {
		got, err := l.Session(ctx, "ses_AAAA")
		if err != nil {
			t.Fatal(err)
		}
		var seqs []uint64
		for _, r := range got {
			seqs = append(seqs, r.Seq)
			if r.Hash != appended[r.Seq-1].Hash {
				t.Fatalf("seq %d: hash differs from the appended record", r.Seq)
			}
		}
		if fmt.Sprint(seqs) != "[2 4 6]" {
			t.Fatalf("session seqs %v, want [2 4 6]", seqs)
		}
		if got, err := l.Session(ctx, "ses_unknown"); err != nil || len(got) != 0 {
			t.Fatalf("unknown session: %v, %v", got, err)
		}
		for _, bad := range []string{"", "ses_AAAA.x", "*", ">", "ses AAAA"} {
			if _, err := l.Session(ctx, bad); err == nil {
				t.Fatalf("session ID %q accepted", bad)
			}
		}
	})

	t.Run("export", func(t *testing.T) {
		var buf bytes.Buffer
		n, err := l.Export(ctx, &buf, nil)
		if err != nil || n != len(sessions) {
			t.Fatalf("export: %d, %v", n, err)
		}
		rs, err := ReadJSONLines(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyRecords(rs); err != nil {
			t.Fatal(err)
		}
		for i, r := range rs {
			// What Append returned is what the stream holds, byte for byte where it is hashed.
			a, _ := json.Marshal(appended[i])
			b, _ := json.Marshal(r)
			if !bytes.Equal(a, b) {
				t.Fatalf("record %d:\nappended %s\nexported %s", i+1, a, b)
			}
		}
		buf.Reset()
		n, err = l.Export(ctx, &buf, func(r Record) bool { return r.Session == "ses_BBBB" })
		if err != nil || n != 2 || strings.Count(buf.String(), "\n") != 2 {
			t.Fatalf("filtered export: %d, %v\n%s", n, err, buf.String())
		}
	})
}

func TestAppendRejectsInvalidRecords(t *testing.T) {
	ctx := testCtx(t)
	l, _ := newLog(t, Options{})
	tests := []struct {
		name string
		edit func(*Record)
	}{
		{"empty kind", func(r *Record) { r.Kind = "" }},
		{"empty actor", func(r *Record) { r.Actor = "" }},
		{"actor not spiffe", func(r *Record) { r.Actor = "controller" }},
		{"bad decision", func(r *Record) { r.Decision = "permit" }},
		{"session with wildcard", func(r *Record) { r.Session = "ses_>" }},
		{"session with dot", func(r *Record) { r.Session = "ses_a.b" }},
		{"data not json", func(r *Record) { r.Data = json.RawMessage(`{"a":`) }},
		{"too large", func(r *Record) {
			r.Data = json.RawMessage(`"` + strings.Repeat("x", MaxRecordSize) + `"`)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := record(0, "ses_ok")
			tt.edit(&r)
			if _, err := l.Append(ctx, r); err == nil || !strings.HasPrefix(err.Error(), "audit: ") {
				t.Fatalf("want an audit error, got %v", err)
			}
		})
	}
	// Nothing reached the stream, and the chain still starts at 1.
	mustVerify(t, ctx, l, 0)
	if r, err := l.Append(ctx, record(1, "")); err != nil || r.Seq != 1 || r.Prev != "" {
		t.Fatalf("first valid append: %+v, %v", r, err)
	}
	// A stray byte in free text (often quoted from a peer) is replaced, not a reason to lose the record.
	odd := record(3, "")
	odd.Reason = "bad frame: \xff\xfe"
	r, err := l.Append(ctx, odd)
	if err != nil || r.Reason != "bad frame: \uFFFD" {
		t.Fatalf("append with invalid UTF-8: %q, %v", r.Reason, err)
	}
	// Just under the limit is fine.
	big := record(2, "")
	big.Data = json.RawMessage(`"` + strings.Repeat("x", MaxRecordSize-1024) + `"`)
	if _, err := l.Append(ctx, big); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, ctx, l, 3)
}

func TestStreamRefusesDeletesAndVerifyCatchesPurges(t *testing.T) {
	ctx := testCtx(t)
	l, js := newLog(t, Options{Stream: "AUDIT_X"})
	appendN(t, ctx, l, 3)
	s, err := js.Stream(ctx, "AUDIT_X")
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if !cfg.DenyDelete || cfg.DenyPurge || cfg.Storage != jetstream.FileStorage ||
		cfg.Subjects[0] != "audit_x.>" || cfg.MaxMsgs != -1 || cfg.MaxAge != 0 {
		t.Fatalf("stream config: %+v", cfg)
	}
	if err := s.DeleteMsg(ctx, 2); err == nil {
		t.Fatal("delete allowed")
	}
	// Loosening the stream is refused too.
	cfg.DenyDelete = false
	if _, err := js.UpdateStream(ctx, cfg); err == nil {
		t.Fatal("update to allow deletes accepted")
	}
	mustVerify(t, ctx, l, 3)
	// A purge that is not an archive (no audit.archived record names what it removed) is a truncation.
	if err := s.Purge(ctx, jetstream.WithPurgeSequence(2)); err != nil {
		t.Fatal(err)
	}
	_, err = l.Verify(ctx)
	var be *BreakError
	if !errors.As(err, &be) || be.Problem != ProblemGap || !strings.Contains(err.Error(), "truncated, not archived") {
		t.Fatalf("verify after a rogue purge: %v, want a truncation", err)
	}
}

func TestVerifyDetectsDeletedRecords(t *testing.T) {
	tests := []struct {
		name    string
		delete  []uint64
		seq     uint64
		problem Problem
	}{
		{"middle", []uint64{5}, 5, ProblemGap},
		{"first", []uint64{1}, 1, ProblemGap},
		{"last", []uint64{10}, 10, ProblemGap},
		{"several", []uint64{3, 4, 8}, 3, ProblemGap},
		{"all", []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 1, ProblemGap},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			l, js := newLog(t, Options{Stream: "HOLEY", allowDelete: true})
			appendN(t, ctx, l, 10)
			mustVerify(t, ctx, l, 10)
			s, err := js.Stream(ctx, "HOLEY")
			if err != nil {
				t.Fatal(err)
			}
			for _, seq := range tt.delete {
				if err := s.DeleteMsg(ctx, seq); err != nil {
					t.Fatal(err)
				}
			}
			_, err = l.Verify(ctx)
			wantBreak(t, err, tt.seq, tt.problem)
			_, err = l.Export(ctx, &bytes.Buffer{}, nil)
			if err != nil {
				t.Fatalf("export of a holey stream: %v", err)
			}
		})
	}
}

func TestDeletedLastRecord(t *testing.T) {
	ctx := testCtx(t)
	l, js := newLog(t, Options{Stream: "HOLEY", allowDelete: true})
	last := appendN(t, ctx, l, 3)[2]
	s, err := js.Stream(ctx, "HOLEY")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(ctx, 3); err != nil {
		t.Fatal(err)
	}
	// Another Log (a restarted controller) must not chain onto record 2 as if 3 never existed.
	_, err = Open(ctx, js, Options{Stream: "HOLEY", allowDelete: true})
	wantBreak(t, err, 3, ProblemGap)
	// The Log that wrote 3 still links to it (the stream's last sequence stays 3), so the hole stays
	// visible to Verify instead of being papered over.
	rs, err := l.Append(ctx, record(9, ""))
	if err != nil {
		t.Fatal(err)
	}
	if rs.Seq != 4 || rs.Prev != last.Hash {
		t.Fatalf("append after deletion: seq %d, prev %.16s, want 4, %.16s", rs.Seq, rs.Prev, last.Hash)
	}
	_, err = l.Verify(ctx)
	wantBreak(t, err, 3, ProblemGap)
}

func TestForeignMessageBreaksChain(t *testing.T) {
	ctx := testCtx(t)
	l, js := newLog(t, Options{})
	appendN(t, ctx, l, 2)
	if _, err := js.Publish(ctx, "umbra_audit.g", []byte(`{"not":"a record"}`)); err != nil {
		t.Fatal(err)
	}
	_, err := l.Verify(ctx)
	wantBreak(t, err, 3, ProblemMalformed)
	_, err = l.Append(ctx, record(3, ""))
	wantBreak(t, err, 3, ProblemMalformed)
	_, err = Open(ctx, js, Options{})
	wantBreak(t, err, 3, ProblemMalformed)
}

func TestRecordOnWrongSubjectBreaksChain(t *testing.T) {
	ctx := testCtx(t)
	l, js := newLog(t, Options{})
	rs := appendN(t, ctx, l, 2)
	// A well-formed, correctly linked record, but published outside its session's subject, would hide
	// from Session(); Verify must notice.
	r := record(2, "ses_hidden")
	if err := normalize(&r, time.Now()); err != nil {
		t.Fatal(err)
	}
	r.Prev = rs[1].Hash
	r.Hash, _ = hashOf(r)
	payload, _ := stored(r)
	if _, err := js.Publish(ctx, "umbra_audit.g", payload); err != nil {
		t.Fatal(err)
	}
	_, err := l.Verify(ctx)
	wantBreak(t, err, 3, ProblemMalformed)
}

func TestSurvivesRestart(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	const n = 25

	srv := startServer(t, dir)
	nc, err := srv.Connect("before")
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(ctx, js, Options{})
	if err != nil {
		t.Fatal(err)
	}
	before := appendN(t, ctx, l, n)
	nc.Close()
	srv.Shutdown()

	srv = startServer(t, dir)
	t.Cleanup(srv.Shutdown)
	l, err = Open(ctx, connect(t, srv, "after"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, ctx, l, n)
	if rep.LastHash != before[n-1].Hash {
		t.Fatalf("last hash after restart %s, want %s", rep.LastHash, before[n-1].Hash)
	}
	r, err := l.Append(ctx, record(n, "ses_after"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Seq != n+1 || r.Prev != before[n-1].Hash {
		t.Fatalf("append after restart: seq %d prev %s", r.Seq, r.Prev)
	}
	mustVerify(t, ctx, l, n+1)
}

func TestConcurrentAppends(t *testing.T) {
	ctx := testCtx(t)
	l, _ := newLog(t, Options{})
	const writers, each = 8, 50
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		seen = map[uint64]bool{}
		errs = make(chan error, writers)
	)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				r, err := l.Append(ctx, record(w*each+i, fmt.Sprintf("ses_w%d", w)))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				seen[r.Seq] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(seen) != writers*each {
		t.Fatalf("%d distinct sequences, want %d", len(seen), writers*each)
	}
	mustVerify(t, ctx, l, writers*each)
	got, err := l.Session(ctx, "ses_w3")
	if err != nil || len(got) != each {
		t.Fatalf("session of one writer: %d records, %v", len(got), err)
	}
}

// Two Logs on one stream stand for two controller replicas: they must not fork the chain.
func TestTwoWritersKeepOneChain(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir())
	t.Cleanup(srv.Shutdown)
	a, err := Open(ctx, connect(t, srv, "replica-a"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, connect(t, srv, "replica-b"), Options{})
	if err != nil {
		t.Fatal(err)
	}

	// Interleaved: each must pick up what the other wrote.
	ra1, err := a.Append(ctx, record(1, ""))
	if err != nil {
		t.Fatal(err)
	}
	rb1, err := b.Append(ctx, record(2, ""))
	if err != nil {
		t.Fatal(err)
	}
	ra2, err := a.Append(ctx, record(3, ""))
	if err != nil {
		t.Fatal(err)
	}
	if rb1.Prev != ra1.Hash || ra2.Prev != rb1.Hash || ra2.Seq != 3 {
		t.Fatalf("interleaved appends do not chain: %+v %+v %+v", ra1, rb1, ra2)
	}
	// Both went through the conflict path: b's tail was 0 when it tried, a's was 1.
	if a.conflicts != 1 || b.conflicts != 1 {
		t.Fatalf("conflicts: a %d, b %d, want 1 each", a.conflicts, b.conflicts)
	}

	// At the same time.
	const each = 60
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for _, l := range []*Log{a, b, a, b} {
		wg.Go(func() {
			for i := range each / 2 {
				if _, err := l.Append(ctx, record(i, "ses_race")); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	mustVerify(t, ctx, a, 3+2*each)
	mustVerify(t, ctx, b, 3+2*each)
}

func TestOpenOptions(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir())
	t.Cleanup(srv.Shutdown)
	js := connect(t, srv, "opts")
	for _, opts := range []Options{{Stream: "a.b"}, {Stream: "a b"}, {Stream: "a>"}, {Replicas: -1}} {
		if _, err := Open(ctx, js, opts); err == nil {
			t.Errorf("Open(%+v) accepted", opts)
		}
	}
	if _, err := Open(ctx, nil, Options{}); err == nil {
		t.Error("Open with nil JetStream accepted")
	}
	// Reopening is idempotent and continues the same chain.
	l1, err := Open(ctx, js, Options{})
	if err != nil {
		t.Fatal(err)
	}
	r1, err := l1.Append(ctx, record(1, ""))
	if err != nil {
		t.Fatal(err)
	}
	l2, err := Open(ctx, js, Options{})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := l2.Append(ctx, record(2, ""))
	if err != nil || r2.Prev != r1.Hash {
		t.Fatalf("reopened log does not continue the chain: %+v, %v", r2, err)
	}
}

func BenchmarkAppend(b *testing.B) {
	ctx := context.Background()
	l, _ := newLog(b, Options{})
	r := record(0, "ses_bench")
	r.Data = json.RawMessage(`"` + strings.Repeat("d", 198) + `"`) // 200 bytes
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := l.Append(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkAppendBatch compares appending records one at a time, pipelined (AppendRecords on a single-replica
// stream) and in atomic batches, for several sizes, side by side on fsync-always servers: records/s and time per
// write of n records.
func BenchmarkAppendBatch(b *testing.B) {
	ctx := context.Background()
	r := record(0, "ses_bench")
	r.Data = json.RawMessage(`"` + strings.Repeat("d", 198) + `"`) // 200 bytes
	for _, n := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("one-by-one-%d", n), func(b *testing.B) {
			l, _ := newLog(b, Options{})
			for b.Loop() {
				for range n {
					if _, err := l.Append(ctx, r); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "records/s")
		})
		b.Run(fmt.Sprintf("pipelined-%d", n), func(b *testing.B) {
			l, _ := newLog(b, Options{})
			rs := make([]Record, n)
			for i := range rs {
				rs[i] = r
			}
			for b.Loop() {
				if _, err := l.AppendRecords(ctx, rs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "records/s")
		})
		b.Run(fmt.Sprintf("batch-%d", n), func(b *testing.B) {
			l, _ := newLog(b, Options{})
			rs := make([]Record, n)
			for i := range rs {
				rs[i] = r
			}
			for b.Loop() {
				if _, err := l.AppendBatch(ctx, rs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "records/s")
		})
	}
}
