package controller

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// readExport splits an envelope export into its lines and its manifest.
func readExport(t *testing.T, b []byte) ([]api.ExportedEnvelope, api.EnvelopeManifest) {
	t.Helper()
	var lines []api.ExportedEnvelope
	var man *api.EnvelopeManifest
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		if man != nil {
			t.Fatal("a line after the manifest")
		}
		var end api.EnvelopeExportEnd
		if json.Unmarshal(sc.Bytes(), &end) == nil && end.Manifest != nil {
			man = end.Manifest
			continue
		}
		var e api.ExportedEnvelope
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		lines = append(lines, e)
	}
	if man == nil {
		t.Fatal("the export has no manifest")
	}
	return lines, *man
}

// TestEnvelopeArchive exports the envelopes of sessions removed after the retention, archives them and checks
// that exactly they leave the stream, after their archive is recorded; that a live session and a wrong digest are
// refused without removing anything; that archiving again completes an interrupted archive; and that the session's
// audit still shows its envelopes and the trail verifies.
func TestEnvelopeArchive(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const retention = time.Hour
	w := openGovWorld(t, t.TempDir(), Config{ClosedSessionRetention: retention})

	sessions := []workgroups.Session{w.mustPropose(ctx, false), w.mustPropose(ctx, false), w.mustPropose(ctx, false)}
	for i, sess := range sessions {
		for seq := uint64(1); seq <= uint64(3+i); seq++ {
			w.sendAs(ctx, sess, worldConsumer, worldProvider, seq)
		}
	}
	live := sessions[2]
	for _, sess := range sessions[:2] {
		if _, err := w.s.closeByCaller(ctx, w.consumer, sess.ID.String(), "done"); err != nil {
			t.Fatal(err)
		}
	}
	// Ended but not yet removed: not exported.
	var buf bytes.Buffer
	if _, err := w.s.exportEnvelopes(ctx, &buf, 10); err != nil {
		t.Fatal(err)
	}
	if lines, man := readExport(t, buf.Bytes()); len(lines) != 0 || len(man.Sessions) != 0 || !man.Complete {
		t.Fatalf("before the retention: export of %d envelopes, manifest %+v; want none", len(lines), man)
	}
	if n, err := w.s.purgeEndedSessions(ctx, time.Now().Add(retention+time.Minute)); err != nil || n != 2 {
		t.Fatalf("retention removed %d sessions, err %v; want 2", n, err)
	}

	// One session per export: the manifest says more remain.
	buf.Reset()
	if _, err := w.s.exportEnvelopes(ctx, &buf, 1); err != nil {
		t.Fatal(err)
	}
	if _, man := readExport(t, buf.Bytes()); len(man.Sessions) != 1 || man.Complete {
		t.Fatalf("export of one session: manifest %+v, want one session and not complete", man)
	}
	buf.Reset()
	if _, err := w.s.exportEnvelopes(ctx, &buf, 10); err != nil {
		t.Fatal(err)
	}
	lines, man := readExport(t, buf.Bytes())
	if len(man.Sessions) != 2 || !man.Complete || man.Envelopes != 3+4 || len(lines) != 7 {
		t.Fatalf("export: %d lines, manifest %+v; want the 7 envelopes of the 2 removed sessions", len(lines), man)
	}
	for _, l := range lines {
		if l.Session == live.ID.String() {
			t.Fatalf("the live session's envelope %d was exported", l.StreamSeq)
		}
		if _, _, err := workgroups.DecodeFrame(bytes.NewReader(l.Frame), relayLimits); err != nil {
			t.Fatalf("exported envelope %d does not decode: %v", l.StreamSeq, err)
		}
	}

	stored := func() uint64 {
		t.Helper()
		info, err := w.s.gov.rec.stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	before := stored()

	// Refused, nothing removed: a session still in the table, a digest that is not the stream's, bad requests.
	_, err := w.s.archiveEnvelopes(ctx, w.consumer, api.EnvelopeArchiveRequest{Sessions: []api.ArchivedSession{{Session: live.ID.String(), Envelopes: 5, SHA256: man.Sessions[0].SHA256}}})
	wantFault(t, err, http.StatusConflict, api.CodeConflict, "still in the session table")
	wrong := append([]api.ArchivedSession(nil), man.Sessions...)
	wrong[1].SHA256 = wrong[0].SHA256
	_, err = w.s.archiveEnvelopes(ctx, w.consumer, api.EnvelopeArchiveRequest{Sessions: wrong})
	wantFault(t, err, http.StatusConflict, api.CodeConflict, "export again")
	_, err = w.s.archiveEnvelopes(ctx, w.consumer, api.EnvelopeArchiveRequest{Sessions: []api.ArchivedSession{man.Sessions[0], man.Sessions[0]}})
	wantFault(t, err, http.StatusBadRequest, api.CodeBadRequest, "named twice")
	_, err = w.s.archiveEnvelopes(ctx, w.consumer, api.EnvelopeArchiveRequest{Sessions: []api.ArchivedSession{{Session: "a.b", SHA256: "x"}}})
	wantFault(t, err, http.StatusBadRequest, api.CodeBadRequest, "session id")
	if n := stored(); n != before {
		t.Fatalf("a refused archive changed the stream: %d messages, were %d", n, before)
	}

	out, err := w.s.archiveEnvelopes(ctx, w.consumer, api.EnvelopeArchiveRequest{Sessions: man.Sessions})
	if err != nil {
		t.Fatal(err)
	}
	if out.Sessions != 2 || out.Envelopes != 7 || out.Completed != 0 || out.Bytes != man.Bytes {
		t.Fatalf("archive: %+v, want 2 sessions, 7 envelopes, %d bytes", out, man.Bytes)
	}
	if n := stored(); n != before-7 {
		t.Fatalf("after the archive the stream holds %d messages, want %d", n, before-7)
	}
	if msgs, err := w.s.gov.env.All(ctx, live.ID.String()); err != nil || len(msgs) != 5 {
		t.Fatalf("the live session holds %d envelopes after the archive (err %v), want 5", len(msgs), err)
	}
	// The relay goes on: the live session takes its next envelope and it is recorded.
	w.sendAs(ctx, live, worldConsumer, worldProvider, 6)

	// Archiving the same export again completes it (as after a crash between the records and the removal).
	again, err := w.s.archiveEnvelopes(ctx, w.consumer, api.EnvelopeArchiveRequest{Sessions: man.Sessions})
	if err != nil || again.Completed != 2 || again.Envelopes != 0 {
		t.Fatalf("archive again: %+v, %v; want both sessions completed, nothing new", again, err)
	}

	// The session's audit: its archive record, and its envelopes' headers from their records.
	for i, s := range man.Sessions {
		got, err := w.s.auditableSession(ctx, w.consumer, s.Session)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := w.s.sessionAudit(ctx, got)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Envelopes) != s.Envelopes {
			t.Fatalf("session %d: the audit shows %d envelopes, want %d", i, len(rep.Envelopes), s.Envelopes)
		}
		archived := 0
		for _, raw := range rep.Records {
			var r struct{ Kind, Actor string }
			_ = json.Unmarshal(raw, &r)
			if r.Kind == kindEnvelopesArchived && r.Actor == w.consumer.id.String() {
				archived++
			}
		}
		if archived != 1 {
			t.Fatalf("session %d: %d envelopes.archived records, want 1", i, archived)
		}
	}
	if rep, err := w.s.gov.audit.Verify(ctx); err != nil || rep.Records == 0 {
		t.Fatalf("audit verify after the archive: %+v, %v", rep, err)
	}
}
