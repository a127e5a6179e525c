package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
)

// TestAppendAfterWritesEachDerivedRecordOnce races four writers, each on a Log of its own, that all derive the
// same 200 records from the trail (record i is due once records up to i-1 are there) with AppendAfter, in batches
// of up to 8: each record must be stored exactly once and the chain must verify. A plain Append in their place
// writes records twice (each writer appends what it believed missing).
func TestAppendAfterWritesEachDerivedRecordOnce(t *testing.T) {
	const total, writers, batch = 200, 4, 8
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir())
	t.Cleanup(srv.Shutdown)

	var wg sync.WaitGroup
	errs := make(chan error, writers)
	var conflicts [writers]uint64
	for w := range writers {
		l, err := Open(ctx, connect(t, srv, fmt.Sprintf("writer-%d", w)), Options{})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer func() { conflicts[w] = l.conflicts }()
			var seen uint64 // records up to seen are read
			done := -1      // derived records up to done are in the trail
			learn := func(ctx context.Context, through uint64) error {
				if through <= seen {
					return nil
				}
				last, err := l.Scan(ctx, seen, func(r Record) error {
					var d struct{ I int }
					if err := json.Unmarshal(r.Data, &d); err != nil {
						return err
					}
					done = max(done, d.I)
					return nil
				})
				seen = max(seen, last)
				return err
			}
			for done < total-1 {
				stored, err := l.AppendAfter(ctx, func(ctx context.Context, lastSeq uint64) ([]Record, error) {
					if err := learn(ctx, lastSeq); err != nil {
						return nil, err
					}
					var rs []Record
					for i := done + 1; i < total && len(rs) < batch; i++ {
						rs = append(rs, record(i, ""))
					}
					return rs, nil
				})
				if err != nil {
					errs <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
				for _, r := range stored {
					var d struct{ I int }
					_ = json.Unmarshal(r.Data, &d)
					done = max(done, d.I)
					seen = r.Seq // conditional on the last record being the one learned through
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	l, err := Open(ctx, connect(t, srv, "reader"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustVerify(t, ctx, l, total)
	count := map[int]int{}
	if _, err := l.Scan(ctx, 0, func(r Record) error {
		var d struct{ I int }
		if err := json.Unmarshal(r.Data, &d); err != nil {
			return err
		}
		count[d.I]++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i := range total {
		if count[i] != 1 {
			t.Fatalf("record %d stored %d times", i, count[i])
		}
	}
	t.Logf("conflicts per writer: %v", conflicts)
}
