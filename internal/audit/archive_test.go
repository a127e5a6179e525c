package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

const archiveActor = "spiffe://test.local/umbra/user/admin"

func exportAll(t *testing.T, ctx context.Context, l *Log) []Record {
	t.Helper()
	var buf bytes.Buffer
	if _, err := l.Export(ctx, &buf, nil); err != nil {
		t.Fatal(err)
	}
	rs, err := ReadJSONLines(&buf)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestArchiveTrimsTheTrailAndVerifyJoinsIt archives a trail through a checkpointed record: the trail then starts
// after it and verifies, live and exported, joined to the archived head; the old export and the new one join
// into the whole chain; a purge beyond what an audit.archived record names is still a truncation.
func TestArchiveTrimsTheTrailAndVerifyJoinsIt(t *testing.T) {
	ctx := testCtx(t)
	l, js := newLog(t, Options{Stream: "AUDIT_A"})
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	head := appendN(t, ctx, l, 5)[4]
	if _, ok, err := l.AppendCheckpoint(ctx, archiveActor, key); err != nil || !ok {
		t.Fatalf("checkpoint: %v %v", ok, err)
	}
	later := appendN(t, ctx, l, 3)
	old := exportAll(t, ctx, l)
	kept := Anchor{Seq: head.Seq, Hash: head.Hash}

	// Refused: a record no checkpoint covers, a wrong hash.
	if _, err := l.Archive(ctx, archiveActor, pub, Anchor{Seq: later[0].Seq, Hash: later[0].Hash}); !errors.Is(err, ErrNotCheckpointed) {
		t.Fatalf("archive through an unsigned record: %v, want ErrNotCheckpointed", err)
	}
	if _, err := l.Archive(ctx, archiveActor, pub, Anchor{Seq: head.Seq, Hash: later[0].Hash}); !errors.Is(err, ErrNotCheckpointed) {
		t.Fatalf("archive with a wrong hash: %v, want ErrNotCheckpointed", err)
	}
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := l.Archive(ctx, archiveActor, other, kept); !errors.Is(err, ErrNotCheckpointed) {
		t.Fatalf("archive checked with another key: %v, want ErrNotCheckpointed", err)
	}

	rec, err := l.Archive(ctx, archiveActor, pub, kept)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ParseArchived(rec)
	if err != nil || a.Seq != head.Seq || a.Hash != head.Hash || a.CheckpointSeq != head.Seq+1 {
		t.Fatalf("audit.archived %+v, %v", a, err)
	}
	st, err := l.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.FirstSeq != head.Seq+1 || st.Records != 5 { // the checkpoint, 3 records, audit.archived
		t.Fatalf("after the archive: %+v", st)
	}
	if _, err := l.Archive(ctx, archiveActor, pub, kept); !errors.Is(err, ErrAlreadyArchived) {
		t.Fatalf("archive again: %v, want ErrAlreadyArchived", err)
	}

	// Live: the rest verifies, joined to the archived head; the archived head verifies as a kept checkpoint,
	// an older one is the archive's to check.
	if rep, err := l.Verify(ctx); err != nil || rep.Records != 5 || rep.LastSeq != rec.Seq {
		t.Fatalf("verify after the archive: %+v, %v", rep, err)
	}
	if _, err := l.VerifyAnchored(ctx, pub, AnchorOptions{After: []Anchor{kept}, RequireCheckpoint: true}); err != nil {
		t.Fatalf("anchored verify after the archive: %v", err)
	}
	if _, err := l.VerifyAnchored(ctx, pub, AnchorOptions{After: []Anchor{{Seq: head.Seq, Hash: later[0].Hash}}}); !errors.Is(err, ErrAnchor) {
		t.Fatalf("a wrong kept head: %v, want ErrAnchor", err)
	}
	if _, err := l.VerifyAnchored(ctx, pub, AnchorOptions{After: []Anchor{{Seq: 2, Hash: old[1].Hash}}}); !errors.Is(err, ErrAnchor) ||
		!strings.Contains(err.Error(), "archived part") {
		t.Fatalf("a kept checkpoint in the archived part: %v, want ErrAnchor saying so", err)
	}

	// Exported: the new export alone, and joined to the old one.
	cur := exportAll(t, ctx, l)
	if _, err := VerifyAnchored(cur, pub, AnchorOptions{After: []Anchor{kept}, RequireCheckpoint: true}); err != nil {
		t.Fatalf("verify the export after the archive: %v", err)
	}
	joined, err := JoinExports(old, cur)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := VerifyAnchored(joined, pub, AnchorOptions{After: []Anchor{{Seq: 2, Hash: old[1].Hash}}}); err != nil || rep.Records != int(rec.Seq) {
		t.Fatalf("verify old and new joined: %+v, %v", rep, err)
	}
	// Joining files that do not overlap, or disagree, fails.
	if _, err := JoinExports(old[:3], cur); !errors.Is(err, ErrBroken) {
		t.Fatalf("join with a gap: %v", err)
	}
	forged := append([]Record(nil), cur...)
	forged[1].Hash = forged[2].Hash
	if _, err := JoinExports(old, forged); !errors.Is(err, ErrBroken) {
		t.Fatalf("join of files that disagree: %v", err)
	}
	// The new export with its first records cut is a truncation, not an archive.
	if err := VerifyRecords(cur[2:]); !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), "not archived") {
		t.Fatalf("verify a cut export: %v", err)
	}

	// A reopened log continues the chain.
	l2, err := Open(ctx, js, Options{Stream: "AUDIT_A"})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, ctx, l2, 1)
	if _, err := l2.Verify(ctx); err != nil {
		t.Fatal(err)
	}

	// A purge beyond the archived head, with no audit.archived naming it, is detected.
	s, err := js.Stream(ctx, "AUDIT_A")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSequence(later[1].Seq)); err != nil {
		t.Fatal(err)
	}
	if _, err := l2.Verify(ctx); !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), "truncated, not archived") {
		t.Fatalf("verify after a rogue purge: %v, want a truncation", err)
	}
}

// TestArchiveRefusedOnATrailThatDeniesPurges: a stream created before archiving existed refuses purges for good;
// Open keeps it so and Archive says what to do.
func TestArchiveRefusedOnATrailThatDeniesPurges(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir())
	t.Cleanup(srv.Shutdown)
	js := connect(t, srv, t.Name())
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "AUDIT_OLD", Subjects: []string{"audit_old.>"},
		Storage: jetstream.FileStorage, DenyDelete: true, DenyPurge: true, AllowAtomicPublish: true}); err != nil {
		t.Fatal(err)
	}
	l, err := Open(ctx, js, Options{Stream: "AUDIT_OLD"})
	if err != nil {
		t.Fatal(err)
	}
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	head := appendN(t, ctx, l, 2)[1]
	if _, _, err := l.AppendCheckpoint(ctx, archiveActor, key); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Archive(ctx, archiveActor, pub, Anchor{Seq: head.Seq, Hash: head.Hash}); !errors.Is(err, ErrPurgeDenied) {
		t.Fatalf("archive: %v, want ErrPurgeDenied", err)
	}
	mustVerify(t, ctx, l, 3)
}
