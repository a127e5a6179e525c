package audit

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestFullTrailRefusesNewRecordsAndKeepsOld fills a small trail: the record that does not fit is refused with
// ErrFull, nothing already stored is dropped, and after the limit is raised the chain goes on where it stopped.
func TestFullTrailRefusesNewRecordsAndKeepsOld(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir())
	t.Cleanup(srv.Shutdown)
	js := connect(t, srv, t.Name())
	l, err := Open(ctx, js, Options{MaxBytes: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	stored := 0
	for i := range 10_000 {
		_, err := l.Append(ctx, record(i, "ses_full"))
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		stored++
	}
	if stored == 0 || stored == 10_000 {
		t.Fatalf("%d records stored in a 16 KiB trail", stored)
	}
	// A batch is refused whole.
	if _, err := l.AppendBatch(ctx, []Record{record(1, ""), record(2, "")}); !errors.Is(err, ErrFull) {
		t.Fatalf("batch into a full trail: %v, want ErrFull", err)
	}
	mustVerify(t, ctx, l, stored)

	l, err = Open(ctx, js, Options{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, record(stored, "ses_full")); err != nil {
		t.Fatalf("append after raising the limit: %v", err)
	}
	mustVerify(t, ctx, l, stored+1)

	info, err := l.stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := info.Config; c.MaxAge != 0 || c.MaxMsgsPerSubject > 0 || c.Discard != jetstream.DiscardNew {
		t.Fatalf("stream config: max age %v, per subject %d, discard %v; want no age, no per-subject limit, discard new", c.MaxAge, c.MaxMsgsPerSubject, c.Discard)
	}
	if _, err := Open(ctx, js, Options{MaxBytes: -1}); err == nil {
		t.Fatal("negative MaxBytes accepted")
	}
}
