package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
)

type copyRec struct {
	Key string `json:"key"`
	N   int    `json:"n"`
}

// openCopyTables starts an embedded NATS server and opens one bucket through two connections, as two controllers
// sharing it would.
func openCopyTables(t *testing.T) (table[copyRec], table[copyRec]) {
	t.Helper()
	ns := natsdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func(name string) table[copyRec] {
		tb, err := openTable[copyRec](ctx, natsdtest.Connect(t, ns, name), "umbra_copy_test")
		if err != nil {
			t.Fatal(err)
		}
		return tb
	}
	return open("a"), open("b")
}

func keysOf(rs []copyRec) []string {
	var ks []string
	for _, r := range rs {
		ks = append(ks, r.Key)
	}
	slices.Sort(ks)
	return ks
}

// TestTableCopyIsCurrent: what current returns holds every write acknowledged before the call, through this
// connection or another one (another controller), deletes included, before the copy is live, while it is, and
// after its watch has stopped.
func TestTableCopyIsCurrent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mine, theirs := openCopyTables(t)
	for i := range 20 {
		if err := mine.create(ctx, fmt.Sprintf("k%03d", i), copyRec{Key: fmt.Sprintf("k%03d", i), N: i}); err != nil {
			t.Fatal(err)
		}
	}
	c := newTableCopy(mine, "test records", slog.New(slog.DiscardHandler))
	if got, err := c.current(ctx); err != nil || len(got) != 20 {
		t.Fatalf("before the watch runs: %d records, %v; want 20 from the bucket", len(got), err)
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { c.run(runCtx) })
	want := map[string]bool{}
	for i := range 20 {
		want[fmt.Sprintf("k%03d", i)] = true
	}
	for i := 20; i < 220; i++ {
		key := fmt.Sprintf("k%03d", i)
		w := mine
		if i%2 == 1 {
			w = theirs
		}
		if err := w.create(ctx, key, copyRec{Key: key, N: i}); err != nil {
			t.Fatal(err)
		}
		want[key] = true
		if i%7 == 0 { // and a delete now and then
			old := fmt.Sprintf("k%03d", i-10)
			if err := theirs.kv.Delete(ctx, old); err != nil {
				t.Fatal(err)
			}
			delete(want, old)
		}
		got, err := c.current(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ks := keysOf(got); len(ks) != len(want) || !allIn(ks, want) {
			t.Fatalf("after write %d: current has %d records, want %d", i, len(ks), len(want))
		}
	}
	if !c.isLive() {
		t.Fatal("the copy never went live")
	}
	// The cached view catches up too.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := c.cached(ctx)
		if err == nil && len(got) == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cached: %d records, %v; want %d", len(got), err, len(want))
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	wg.Wait()
	if err := theirs.create(ctx, "late", copyRec{Key: "late"}); err != nil {
		t.Fatal(err)
	}
	if got, err := c.current(ctx); err != nil || len(got) != len(want)+1 {
		t.Fatalf("after the watch stopped: %d records, %v; want %d from the bucket", len(got), err, len(want)+1)
	}
}

// TestTableCopyIndex: currentIn returns exactly the records the index files under the names asked for, each
// once, as the records move between names (another controller's writes included), are deleted, and are put back;
// before the copy is live, while it is, and after its watch has stopped.
func TestTableCopyIndex(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mine, theirs := openCopyTables(t)
	// A record is filed under "n%3" and, for multiples of 5, also under "five".
	index := func(r copyRec) []string {
		names := []string{fmt.Sprintf("n%d", r.N%3)}
		if r.N%5 == 0 {
			names = append(names, "five", "five") // twice: still returned once
		}
		return names
	}
	state := map[string]int{}
	put := func(w table[copyRec], key string, n int) {
		t.Helper()
		b, _ := json.Marshal(copyRec{Key: key, N: n})
		if _, err := w.kv.Put(ctx, key, b); err != nil {
			t.Fatal(err)
		}
		state[key] = n
	}
	want := func(names ...string) []string {
		var ks []string
		for key, n := range state {
			if slices.ContainsFunc(index(copyRec{N: n}), func(x string) bool { return slices.Contains(names, x) }) {
				ks = append(ks, key)
			}
		}
		slices.Sort(ks)
		return ks
	}
	c := newTableCopy(mine, "test records", slog.New(slog.DiscardHandler))
	c.index = index
	check := func(when string, names ...string) {
		t.Helper()
		got, err := c.currentIn(ctx, names)
		if err != nil {
			t.Fatal(err)
		}
		if ks, w := keysOf(got), want(names...); !slices.Equal(ks, w) {
			t.Fatalf("%s: currentIn(%q) = %v, want %v", when, names, ks, w)
		}
	}
	for i := range 10 {
		put(mine, fmt.Sprintf("k%02d", i), i)
	}
	check("before the watch runs", "n1", "five")
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { c.run(runCtx) })
	for i := range 60 {
		key := fmt.Sprintf("k%02d", i%15)
		w := mine
		if i%2 == 1 {
			w = theirs
		}
		switch {
		case i%7 == 3:
			if err := w.kv.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
			delete(state, key)
		default:
			put(w, key, i) // moves the record to another name, or puts it back after a delete
		}
		check(fmt.Sprintf("after write %d", i), "n0", "five")
		check(fmt.Sprintf("after write %d", i), "n2")
		check(fmt.Sprintf("after write %d", i))
	}
	if !c.isLive() {
		t.Fatal("the copy never went live")
	}
	stop()
	wg.Wait()
	put(theirs, "late", 5)
	check("after the watch stopped", "five")
	if _, err := newTableCopy(mine, "unindexed", slog.New(slog.DiscardHandler)).currentIn(ctx, []string{"n0"}); err == nil {
		t.Fatal("currentIn of a copy without an index answered")
	}
}

func allIn(ks []string, want map[string]bool) bool {
	for _, k := range ks {
		if !want[k] {
			return false
		}
	}
	return true
}

// TestTableCopyReadersAndWriters: readers of the copy race writers and the watch without a data race, and each
// reader owns the slice it is given.
func TestTableCopyReadersAndWriters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mine, theirs := openCopyTables(t)
	c := newTableCopy(mine, "test records", slog.New(slog.DiscardHandler))
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { c.run(runCtx) })
	var writers sync.WaitGroup
	for w, tb := range []table[copyRec]{mine, theirs} {
		writers.Go(func() {
			for i := range 100 {
				key := fmt.Sprintf("w%d-%03d", w, i)
				if err := tb.create(ctx, key, copyRec{Key: key}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	var readers sync.WaitGroup
	for range 4 {
		readers.Go(func() {
			for range 100 {
				got, err := c.current(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				slices.Reverse(got) // the caller's own slice
			}
		})
	}
	writers.Wait()
	readers.Wait()
	if got, err := c.current(ctx); err != nil || len(got) != 200 {
		t.Fatalf("%d records, %v; want 200", len(got), err)
	}
	stop()
	wg.Wait()
}

// TestTableCopyWatchesAgainWhenItsConsumerIsGone: the consumer behind a live copy's watch disappears without a
// word, as it does with the server holding it; the copy must see a later write within watchStale, its check and
// a new watch (the client alone noticed after 10-20 s).
func TestTableCopyWatchesAgainWhenItsConsumerIsGone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := natsdtest.Start(t)
	js := natsdtest.Connect(t, ns, "copy")
	tb, err := openTable[copyRec](ctx, js, "umbra_copy_gone")
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.create(ctx, "first", copyRec{Key: "first"}); err != nil {
		t.Fatal(err)
	}
	c := newTableCopy(tb, "test records", slog.New(slog.DiscardHandler))
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { c.run(runCtx) })
	defer func() { stop(); wg.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); !c.isLive(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the copy never went live")
		}
	}
	stream, err := js.Stream(ctx, "KV_umbra_copy_gone")
	if err != nil {
		t.Fatal(err)
	}
	names := stream.ConsumerNames(ctx)
	deleted := 0
	for name := range names.Name() {
		if err := stream.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
		deleted++
	}
	if names.Err() != nil || deleted != 1 {
		t.Fatalf("deleted %d consumers (%v), want the watch's one", deleted, names.Err())
	}
	written := time.Now()
	if err := tb.create(ctx, "second", copyRec{Key: "second"}); err != nil {
		t.Fatal(err)
	}
	bound := 8 * time.Second // watchStale, a check or two more, a new watch; room for a loaded machine
	for {
		got, err := c.cached(ctx)
		if err == nil && len(got) == 2 && c.isLive() {
			t.Logf("the copy holds the write %s after it", time.Since(written).Round(time.Millisecond))
			break
		}
		if time.Since(written) > bound {
			t.Fatalf("%s after the watch's consumer went: cached %v (%v), live %v; want both records", bound, keysOf(got), err, c.isLive())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
