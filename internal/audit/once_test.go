package audit

import (
	"context"
	"testing"
	"time"
)

// A record sent again under the same id is stored once, whichever writer sends it again, after another record,
// after a restart of the server, until the stream's de-duplication window has passed.
func TestAppendOnce(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	const window = 3 * time.Second
	opts := Options{Stream: "ONCE", dedupWindow: window}
	srv := startServer(t, dir)
	t.Cleanup(srv.Shutdown)
	js := connect(t, srv, "first")
	l, err := Open(ctx, js, opts)
	if err != nil {
		t.Fatal(err)
	}
	first, dup, err := l.AppendOnce(ctx, record(1, ""), "g-a")
	if err != nil || dup {
		t.Fatalf("first append: dup %v, %v", dup, err)
	}
	once := func(l *Log, what string) {
		t.Helper()
		again := record(1, "")
		again.Time = time.Now().Add(time.Second) // a later try of the same record
		got, dup, err := l.AppendOnce(ctx, again, "g-a")
		if err != nil || !dup || got.Seq != first.Seq || got.Hash != first.Hash {
			t.Fatalf("%s: got seq %d dup %v err %v, want the record stored first (%d)", what, got.Seq, dup, err, first.Seq)
		}
	}
	once(l, "sent again at once")
	if _, err := l.Append(ctx, record(2, "")); err != nil {
		t.Fatal(err)
	}
	once(l, "sent again after another record")
	// A second writer whose tail is behind (it opened before the records above were stored).
	other, err := Open(ctx, connect(t, srv, "other"), opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, record(3, "")); err != nil {
		t.Fatal(err)
	}
	once(other, "sent again by another writer")
	srv.Shutdown()

	srv = startServer(t, dir)
	t.Cleanup(srv.Shutdown)
	l, err = Open(ctx, connect(t, srv, "restarted"), opts)
	if err != nil {
		t.Fatal(err)
	}
	once(l, "sent again after a restart")
	mustVerify(t, ctx, l, 3)

	// Past the window the id is forgotten: the writer must not send a record again that late.
	time.Sleep(time.Until(first.Time.Add(window + 500*time.Millisecond)))
	late, dup, err := l.AppendOnce(ctx, record(1, ""), "g-a")
	if err != nil || dup || late.Seq != 4 {
		t.Fatalf("sent again after the window: seq %d dup %v err %v, want it stored as record 4", late.Seq, dup, err)
	}
	mustVerify(t, ctx, l, 4)

	if _, _, err := l.AppendOnce(context.Background(), record(5, ""), string(make([]byte, maxMsgID+1))); err == nil {
		t.Fatal("an over-long id was taken")
	}
}
