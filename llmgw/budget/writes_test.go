package budget

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// slowStore is a MemoryStore whose writes take a store round trip, and which counts them.
type slowStore struct {
	*MemoryStore
	puts atomic.Int64
}

func (s *slowStore) Put(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	s.puts.Add(1)
	time.Sleep(2 * time.Millisecond)
	return s.MemoryStore.Put(ctx, key, value, revision)
}

// TestSettlesMergeWrites: 50 concurrent settles by one subject are all counted, exactly, per model too, in
// fewer store writes than one per settle and record.
func TestSettlesMergeWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store := &slowStore{MemoryStore: NewMemoryStore()}
	l := NewLimiter(store)
	const n = 50
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := l.Reserve(ctx, []Claim{{Subject: "id:a"}}, Estimate{})
			if err != nil {
				t.Error(err)
				return
			}
			model := []string{"m1", "m2"}[i%2]
			if err := r.Settle(ctx, model, Counts{InputTokens: 3, OutputTokens: int64(i)}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	day, month := periods(time.Now())
	for _, k := range []string{key("d", day, "id:a"), key("m", month, "id:a")} {
		b, _, _ := store.Get(ctx, k)
		var rec Record
		if err := json.Unmarshal(b, &rec); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if rec.Requests != n || rec.InputTokens != 3*n || rec.OutputTokens != n*(n-1)/2 ||
			rec.Models["m1"].Requests != n/2 || rec.Models["m2"].Requests != n/2 {
			t.Fatalf("%s holds %+v", k, rec)
		}
	}
	if puts := store.puts.Load(); puts >= 2*n {
		t.Fatalf("%d store writes for %d settles of 2 records each: nothing was merged", puts, n)
	}
	t.Logf("%d settles, %d store writes", n, store.puts.Load())
}
