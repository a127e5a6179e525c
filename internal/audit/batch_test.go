package audit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestAppendBatchChains: a batch continues the chain after single appends, its records are stored contiguous
// and in order, and single appends continue after it.
func TestAppendBatchChains(t *testing.T) {
	ctx := testCtx(t)
	l, _ := newLog(t, Options{})
	appendN(t, ctx, l, 3)
	batch := make([]Record, 50)
	for i := range batch {
		batch[i] = record(100+i, fmt.Sprintf("ses_b%d", i%4))
	}
	got, err := l.AppendBatch(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range got {
		if r.Seq != uint64(4+i) || r.Reason != batch[i].Reason {
			t.Fatalf("batch record %d stored as %+v", i, r)
		}
		if i > 0 && r.Prev != got[i-1].Hash {
			t.Fatalf("batch record %d does not link to the one before", i)
		}
	}
	if _, err := l.Append(ctx, record(200, "")); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, ctx, l, 3+50+1)
	recs, err := l.Session(ctx, "ses_b1")
	if err != nil || len(recs) != 13 {
		t.Fatalf("session ses_b1: %d records, %v; want 13", len(recs), err)
	}
}

// TestAppendBatchRefusesWholeBatch: a batch with one invalid record stores nothing.
func TestAppendBatchRefusesWholeBatch(t *testing.T) {
	ctx := testCtx(t)
	l, _ := newLog(t, Options{})
	bad := record(2, "")
	bad.Kind = ""
	if _, err := l.AppendBatch(ctx, []Record{record(1, ""), bad, record(3, "")}); err == nil || !strings.Contains(err.Error(), "record 1 of the batch") {
		t.Fatalf("AppendBatch with an invalid record: %v", err)
	}
	big := record(4, "")
	big.Reason = strings.Repeat("r", MaxRecordSize)
	if _, err := l.AppendBatch(ctx, []Record{record(1, ""), big}); err == nil {
		t.Fatal("AppendBatch with an oversized record succeeded")
	}
	if _, err := l.AppendBatch(ctx, make([]Record, MaxBatch+1)); err == nil {
		t.Fatal("AppendBatch over MaxBatch succeeded")
	}
	rep, err := l.Verify(ctx)
	if err != nil || rep.Records != 0 {
		t.Fatalf("after refused batches: %+v, %v; want an empty chain", rep, err)
	}
}

// TestAppendRecordsPipelined: on a single-replica stream AppendRecords pipelines its records, which continue the
// chain after single appends and are stored contiguous and in order, each with the sequence returned.
func TestAppendRecordsPipelined(t *testing.T) {
	ctx := testCtx(t)
	l, _ := newLog(t, Options{})
	appendN(t, ctx, l, 2)
	batch := make([]Record, MaxBatch)
	for i := range batch {
		batch[i] = record(100+i, fmt.Sprintf("ses_p%d", i%3))
	}
	got, err := l.AppendRecords(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(batch) {
		t.Fatalf("%d records stored, want %d", len(got), len(batch))
	}
	for i, r := range got {
		if r.Seq != uint64(3+i) || r.Reason != batch[i].Reason {
			t.Fatalf("record %d stored as seq %d %q", i, r.Seq, r.Reason)
		}
	}
	if _, err := l.Append(ctx, record(999, "")); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, ctx, l, 2+MaxBatch+1)
}

// TestAppendRecordsPipelinedStoresOnlyAPrefix fills a small trail with pipelined writes whose records alternate
// large and small: when a large record is refused, the small ones sent after it would still fit, and each must be
// refused all the same, since it links to the refused one. What is stored is exactly what was returned, and the
// chain verifies.
func TestAppendRecordsPipelinedStoresOnlyAPrefix(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir())
	t.Cleanup(srv.Shutdown)
	l, err := Open(ctx, connect(t, srv, t.Name()), Options{MaxBytes: 24 << 10})
	if err != nil {
		t.Fatal(err)
	}
	stored := 0
	for round := range 100 {
		batch := make([]Record, 8)
		for i := range batch {
			batch[i] = record(round*8+i, "ses_full")
			if i%2 == 0 {
				batch[i].Reason = strings.Repeat("r", 1500)
			}
		}
		got, err := l.AppendRecords(ctx, batch)
		stored += len(got)
		if errors.Is(err, ErrFull) {
			if len(got) == len(batch) {
				t.Fatalf("round %d: ErrFull with every record stored", round)
			}
			mustVerify(t, ctx, l, stored)
			return
		}
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	t.Fatal("a 24 KiB trail never filled")
}

// TestWritesOfSeveralRecordsRaceOtherWriters: atomic batches, and pipelined writes, from one Log while another
// appends single records to the same stream keep one chain, with nothing stored twice or lost. A pipelined write
// that loses a race part-way stores a prefix, which it returns.
func TestWritesOfSeveralRecordsRaceOtherWriters(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(*Log, context.Context, []Record) ([]Record, error)
	}{
		{"batch", (*Log).AppendBatch},
		{"pipelined", (*Log).appendPipelined},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			srv := startServer(t, t.TempDir())
			t.Cleanup(srv.Shutdown)
			a, err := Open(ctx, connect(t, srv, "a"), Options{})
			if err != nil {
				t.Fatal(err)
			}
			b, err := Open(ctx, connect(t, srv, "b"), Options{})
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			errs := make(chan error, 2)
			written := 0
			wg.Go(func() {
				for i := range 40 {
					got, err := tc.write(a, ctx, []Record{record(i, "ses_x"), record(i, "ses_y"), record(i, ""), record(i, "ses_x")})
					written += len(got)
					if err != nil && len(got) == 0 {
						errs <- err
						return
					}
				}
			})
			wg.Go(func() {
				for i := range 80 {
					if _, err := b.Append(ctx, record(i, "ses_x")); err != nil {
						errs <- err
						return
					}
				}
			})
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if written == 0 {
				t.Fatal("no record of the writes of several stored")
			}
			mustVerify(t, ctx, a, written+80)
		})
	}
}
