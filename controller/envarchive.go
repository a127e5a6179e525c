package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/workgroups"
)

// The envelope stream keeps every envelope until it is archived: de-duplication and delivery rely on it while
// its session lives. Once a session has ended and left the session table (after the retention of ended
// sessions), the relay refuses anything more for it, so its envelopes are kept only as a record. An administrator
// exports them (JSON lines, with a manifest naming each session and the SHA-256 of its lines) and then archives
// them: the controller reads each session's envelopes again, checks that the export holds exactly them, writes an
// envelopes.archived audit record on the session naming the count and the digest, and only then removes them
// from the stream. A crash between the record and the removal is completed by running the archive again, which
// finds the record.

const (
	kindEnvelopesArchived = "envelopes.archived"
	// defaultExportSessions and maxExportSessions bound how many sessions one export holds.
	defaultExportSessions = 1000
	maxExportSessions     = 10000
)

// archivedData is the Data of an envelopes.archived record.
type archivedData struct {
	Envelopes int    `json:"envelopes"`
	Bytes     int64  `json:"bytes"`
	SHA256    string `json:"sha256"`
	FirstSeq  uint64 `json:"first_stream_seq"`
	LastSeq   uint64 `json:"last_stream_seq"`
}

// exportLine encodes one envelope as a line of an export, with its newline.
func exportLine(m envstore.Msg) ([]byte, error) {
	b, err := json.Marshal(api.ExportedEnvelope{StreamSeq: m.StreamSeq, Session: m.Session, ID: m.ID, To: m.To, Meta: m.Meta, Frame: m.Data})
	if err != nil {
		return nil, fmt.Errorf("encode envelope %d: %w", m.StreamSeq, err)
	}
	return append(b, '\n'), nil
}

// removedSession reports whether a session has left the session table (or was never in it).
func (s *Server) removedSession(ctx context.Context, id string) (bool, error) {
	_, _, err := s.gov.sessions.get(ctx, id)
	switch {
	case errors.Is(err, errNotFound):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("reading session %s: %w", id, err)
	}
	return false, nil
}

// exportEnvelopes writes to w, in stream order, every recorded envelope of up to maxSessions sessions that have
// left the session table, then the manifest.
func (s *Server) exportEnvelopes(ctx context.Context, w io.Writer, maxSessions int) (api.EnvelopeManifest, error) {
	man := api.EnvelopeManifest{Through: s.gov.rec.position(), Complete: true}
	type chosen struct {
		h hash.Hash
		n int
	}
	picked := map[string]*chosen{}
	var order []string
	seen := map[string]bool{} // session → removed
	err := s.gov.env.Scan(ctx, man.Through, func(m envstore.Msg) error {
		removed, ok := seen[m.Session]
		if !ok {
			var err error
			if removed, err = s.removedSession(ctx, m.Session); err != nil {
				return err
			}
			seen[m.Session] = removed
		}
		c := picked[m.Session]
		if c == nil {
			if !removed {
				return nil
			}
			if len(order) == maxSessions {
				man.Complete = false
				return nil
			}
			c = &chosen{h: sha256.New()}
			picked[m.Session], order = c, append(order, m.Session)
		}
		line, err := exportLine(m)
		if err != nil {
			return err
		}
		if _, err := w.Write(line); err != nil {
			return err
		}
		c.h.Write(line)
		c.n++
		man.Envelopes++
		man.Bytes += int64(len(m.Data))
		return nil
	})
	if err != nil {
		return man, err
	}
	man.Sessions = make([]api.ArchivedSession, 0, len(order))
	for _, id := range order {
		c := picked[id]
		man.Sessions = append(man.Sessions, api.ArchivedSession{Session: id, Envelopes: c.n, SHA256: hex.EncodeToString(c.h.Sum(nil))})
	}
	end, err := json.Marshal(api.EnvelopeExportEnd{Manifest: &man})
	if err != nil {
		return man, err
	}
	_, err = w.Write(append(end, '\n'))
	return man, err
}

// archiveEnvelopes removes the envelopes of the sessions req names, once each session's stored envelopes are
// exactly what the export holds, after recording it.
func (s *Server) archiveEnvelopes(ctx context.Context, c caller, req api.EnvelopeArchiveRequest) (api.EnvelopesArchived, error) {
	var out api.EnvelopesArchived
	if len(req.Sessions) == 0 || len(req.Sessions) > api.MaxArchiveSessions {
		return out, failf(http.StatusBadRequest, api.CodeBadRequest, "name 1 to %d sessions, as an export's manifest lists them", api.MaxArchiveSessions)
	}
	recorded := s.gov.rec.position()
	var records []audit.Record
	var purge []string
	named := map[string]bool{}
	for _, want := range req.Sessions {
		id := want.Session
		if !audit.ValidSessionID(id) {
			return out, failf(http.StatusBadRequest, api.CodeBadRequest, "a session id is 1 to 128 of [A-Za-z0-9_-], as an export's manifest lists them")
		}
		if named[id] {
			return out, failf(http.StatusBadRequest, api.CodeBadRequest, "session %s is named twice", id)
		}
		named[id] = true
		removed, err := s.removedSession(ctx, id)
		if err != nil {
			return out, internal(err)
		}
		if !removed {
			return out, failf(http.StatusConflict, api.CodeConflict,
				"session %s is still in the session table: only sessions removed after the retention of ended sessions are archived", id)
		}
		done, err := s.archivedBefore(ctx, id, want.SHA256)
		if err != nil {
			return out, internal(err)
		}
		if done {
			out.Completed++
			purge = append(purge, id)
			continue
		}
		msgs, err := s.gov.env.All(ctx, id)
		if err != nil {
			return out, internal(err)
		}
		d := archivedData{Envelopes: len(msgs)}
		h := sha256.New()
		for _, m := range msgs {
			if m.StreamSeq > recorded {
				return out, failf(http.StatusConflict, api.CodeConflict, "session %s: envelope %d is not in the audit trail yet; try again in a moment", id, m.StreamSeq)
			}
			line, err := exportLine(m)
			if err != nil {
				return out, internal(err)
			}
			h.Write(line)
			d.Bytes += int64(len(m.Data))
			d.FirstSeq, d.LastSeq = min(d.FirstSeq, m.StreamSeq), m.StreamSeq
			if d.FirstSeq == 0 {
				d.FirstSeq = m.StreamSeq
			}
		}
		d.SHA256 = hex.EncodeToString(h.Sum(nil))
		if len(msgs) == 0 || d.Envelopes != want.Envelopes || d.SHA256 != want.SHA256 {
			return out, failf(http.StatusConflict, api.CodeConflict,
				"session %s: the export does not hold what the stream holds (%d envelopes stored, %d exported, or their content differs); nothing was removed: export again",
				id, d.Envelopes, want.Envelopes)
		}
		records = append(records, audit.Record{Kind: kindEnvelopesArchived, Actor: c.id.String(), Session: id, Data: jsonRaw(d)})
		purge = append(purge, id)
		out.Envelopes += d.Envelopes
		out.Bytes += d.Bytes
	}
	// The records first: a crash after them leaves envelopes that the next archive of the same export removes.
	for len(records) > 0 {
		n := min(len(records), audit.MaxBatch)
		if _, err := s.gov.audit.AppendBatch(ctx, records[:n]); err != nil {
			return out, internal(fmt.Errorf("recording the archive: %w", err))
		}
		records = records[n:]
	}
	for _, id := range purge {
		if err := s.gov.env.PurgeSession(ctx, id); err != nil {
			return out, internal(err)
		}
		out.Sessions++
	}
	s.log.Info("envelopes archived", "sessions", out.Sessions, "envelopes", out.Envelopes, "bytes", out.Bytes,
		"completed", out.Completed, "by", c.id.String())
	return out, nil
}

// archivedBefore reports whether the audit trail already records the archive of this session's envelopes with
// this digest (an archive that stopped before removing them).
func (s *Server) archivedBefore(ctx context.Context, id, digest string) (bool, error) {
	recs, err := s.gov.audit.Session(ctx, id)
	if err != nil {
		return false, fmt.Errorf("reading the audit of session %s: %w", id, err)
	}
	for _, r := range recs {
		var d archivedData
		if r.Kind == kindEnvelopesArchived && json.Unmarshal(r.Data, &d) == nil && d.SHA256 == digest {
			return true, nil
		}
	}
	return false, nil
}

// archivedHeaders returns the headers of a session's envelopes as their envelope.accepted records hold them, for a
// session whose envelopes were archived.
func archivedHeaders(recs []audit.Record) []workgroups.Header {
	var out []workgroups.Header
	for _, r := range recs {
		if r.Kind != kindEnvelopeAccepted {
			continue
		}
		var h workgroups.Header
		if json.Unmarshal(r.Data, &h) == nil {
			out = append(out, h)
		}
	}
	return out
}

func (s *Server) envelopeArchiveRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+api.PathEnvelopesExport, func(w http.ResponseWriter, r *http.Request) {
		c := r.Context().Value(callerKey{}).(caller)
		if !isPlatformAdmin(c) {
			s.fail(w, r, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator exports envelopes"))
			return
		}
		max := defaultExportSessions
		if v := r.URL.Query().Get(api.EnvelopesMaxSessionsParam); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxExportSessions {
				s.fail(w, r, failf(http.StatusBadRequest, api.CodeBadRequest, "%s: want 1 to %d", api.EnvelopesMaxSessionsParam, maxExportSessions))
				return
			}
			max = n
		}
		// Streamed: an export that fails half-way lacks its manifest, the last line, and is refused by archive.
		w.Header().Set("Content-Type", "application/x-ndjson")
		if _, err := s.exportEnvelopes(r.Context(), w, max); err != nil {
			s.log.Warn("envelope export failed", "err", err)
		}
	})
	mux.HandleFunc("POST "+api.PathEnvelopesArchive, s.anyone(func(ctx context.Context, c caller, b []byte) (any, error) {
		if !isPlatformAdmin(c) {
			return nil, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator archives envelopes")
		}
		var req api.EnvelopeArchiveRequest
		if err := strict(b, &req); err != nil {
			return nil, err
		}
		return s.archiveEnvelopes(ctx, c, req)
	}))
}
