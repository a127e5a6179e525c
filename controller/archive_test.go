package controller

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
)

// TestArchiveAuditThroughAnExportedCheckpoint archives the controller's trail through the checkpoint an export
// ends with: refused for a record no checkpoint covers or bad input, then the trail starts after the archived
// head, verifies with it as the kept checkpoint, and the controller goes on recording.
func TestArchiveAuditThroughAnExportedCheckpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := openGovWorld(t, t.TempDir(), Config{})
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	w.s.auditKey = key
	admin := caller{id: worldAdmin, rec: identityRecord{SPIFFEID: worldAdmin.String(), Org: api.PlatformAdminOrg, Admin: true}}
	for range 3 {
		w.mustPropose(ctx, false)
	}
	// What an export does before it writes: sign the head.
	if err := w.s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := w.s.verifyAudit(ctx, "")
	if err != nil || !rep.OK || rep.LastCheckpoint == nil {
		t.Fatalf("verify before the archive: %+v, %v", rep, err)
	}
	kept := audit.Anchor{Seq: rep.LastCheckpoint.Seq, Hash: rep.LastCheckpoint.Hash}
	w.mustPropose(ctx, false) // records after the export

	_, err = w.s.archiveAudit(ctx, admin, "twelve")
	wantFault(t, err, http.StatusBadRequest, api.CodeBadRequest, "SEQ:HASH")
	_, err = w.s.archiveAudit(ctx, admin, audit.Anchor{Seq: rep.LastSeq + 1, Hash: kept.Hash}.String())
	wantFault(t, err, http.StatusConflict, api.CodeConflict, "not a checkpointed record")

	out, err := w.s.archiveAudit(ctx, admin, kept.String())
	if err != nil {
		t.Fatal(err)
	}
	if out.Seq != kept.Seq || out.Hash != kept.Hash || out.FirstSeq != kept.Seq+1 || out.RecordSeq <= kept.Seq {
		t.Fatalf("archived %+v, want through %s", out, kept)
	}
	st, err := w.s.gov.audit.Stats(ctx)
	if err != nil || st.FirstSeq != kept.Seq+1 {
		t.Fatalf("trail after the archive: %+v, %v", st, err)
	}
	_, err = w.s.archiveAudit(ctx, admin, kept.String())
	wantFault(t, err, http.StatusConflict, api.CodeConflict, "already archived")

	w.mustPropose(ctx, false)
	after, err := w.s.verifyAudit(ctx, kept.String())
	if err != nil || !after.OK || after.LastCheckpoint == nil {
		t.Fatalf("verify after the archive, kept the archived head: %+v, %v", after, err)
	}
	if after.Records >= int(after.LastSeq) {
		t.Fatalf("verify after the archive counted %d records up to %d: nothing was removed", after.Records, after.LastSeq)
	}
}
