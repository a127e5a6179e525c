package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// governanceRoutes serves organisations, workgroups, advertisements, sessions and audit on the overlay API.
func (s *Server) governanceRoutes(mux *http.ServeMux) {
	body := func(op func(ctx context.Context, c caller, body []byte) (any, error)) http.HandlerFunc {
		return s.anyone(op)
	}
	decodeInto := func(b []byte, v any) error { return strict(b, v) }

	mux.HandleFunc("POST "+api.PathOrgs, body(func(ctx context.Context, c caller, b []byte) (any, error) {
		var req api.CreateOrgRequest
		if err := decodeInto(b, &req); err != nil {
			return nil, err
		}
		return s.createOrg(ctx, c, req)
	}))
	mux.HandleFunc("POST "+api.PathWorkgroups, body(func(ctx context.Context, c caller, b []byte) (any, error) {
		var req api.CreateWorkgroupRequest
		if err := decodeInto(b, &req); err != nil {
			return nil, err
		}
		return s.createWorkgroup(ctx, c, req)
	}))
	mux.HandleFunc("GET "+api.PathWorkgroups, body(func(ctx context.Context, c caller, _ []byte) (any, error) {
		return s.listWorkgroups(ctx, c)
	}))
	mux.HandleFunc("POST "+api.PathWorkgroupAnswer, body(func(ctx context.Context, c caller, b []byte) (any, error) {
		var req api.AnswerWorkgroupRequest
		if err := decodeInto(b, &req); err != nil {
			return nil, err
		}
		return s.answerWorkgroup(ctx, c, req)
	}))
	mux.HandleFunc("POST "+api.PathWorkgroupMembers, body(func(ctx context.Context, c caller, b []byte) (any, error) {
		var req api.MemberRequest
		if err := decodeInto(b, &req); err != nil {
			return nil, err
		}
		return s.changeMember(ctx, c, req)
	}))
	mux.HandleFunc("POST "+api.PathWorkgroupDelete, body(func(ctx context.Context, c caller, b []byte) (any, error) {
		var req api.DeleteWorkgroupRequest
		if err := decodeInto(b, &req); err != nil {
			return nil, err
		}
		return struct{}{}, s.deleteWorkgroup(ctx, c, req)
	}))
	mux.HandleFunc("POST "+api.PathAdvertisements, body(func(ctx context.Context, c caller, b []byte) (any, error) {
		var req api.AdvertiseRequest
		if err := decodeInto(b, &req); err != nil {
			return nil, err
		}
		return s.advertise(ctx, c, req)
	}))
	mux.HandleFunc("POST "+api.PathDiscover, body(func(ctx context.Context, c caller, b []byte) (any, error) {
		var req api.DiscoverRequest
		if err := decodeInto(b, &req); err != nil {
			return nil, err
		}
		return s.discover(ctx, c, req)
	}))
	mux.HandleFunc("POST "+api.PathSessions, body(func(ctx context.Context, c caller, b []byte) (any, error) {
		var req api.ProposeRequest
		if err := decodeInto(b, &req); err != nil {
			return nil, err
		}
		return s.propose(ctx, c, req)
	}))
	mux.HandleFunc("GET "+api.PathSessions, func(w http.ResponseWriter, r *http.Request) {
		c := r.Context().Value(callerKey{}).(caller)
		out, err := s.listSessions(r.Context(), c, r.URL.Query().Get("state"))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		reply(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET "+api.PathSessionEvents, s.serveSessionEvents)
	mux.HandleFunc("GET "+api.PathSessions+"/{id}", func(w http.ResponseWriter, r *http.Request) {
		c := r.Context().Value(callerKey{}).(caller)
		sess, err := s.sessionFor(r.Context(), c, r.PathValue("id"))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		reply(w, http.StatusOK, s.sessionView(r.Context(), sess))
	})
	for _, action := range []string{"accept", "reject", "close", "withdraw"} {
		mux.HandleFunc("POST "+api.PathSessions+"/{id}/"+action, func(w http.ResponseWriter, r *http.Request) {
			c := r.Context().Value(callerKey{}).(caller)
			var req api.SessionActionRequest
			if err := decode(w, r, &req); err != nil {
				s.fail(w, r, err)
				return
			}
			var sess workgroups.Session
			var err error
			id := r.PathValue("id")
			switch action {
			case "accept", "reject":
				sess, err = s.answerSession(r.Context(), c, id, action == "accept", req.Reason)
			case "withdraw":
				sess, err = s.withdrawSession(r.Context(), c, id, req.Reason)
			default:
				unlock := s.gov.lockSession(id)
				sess, err = s.closeByCaller(r.Context(), c, id, req.Reason)
				unlock()
			}
			if err != nil {
				s.fail(w, r, err)
				return
			}
			reply(w, http.StatusOK, s.sessionView(r.Context(), sess))
		})
	}
	mux.HandleFunc("GET "+api.PathAuditVerify, func(w http.ResponseWriter, r *http.Request) {
		c := r.Context().Value(callerKey{}).(caller)
		if !isPlatformAdmin(c) {
			s.fail(w, r, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator verifies the audit chain"))
			return
		}
		out, err := s.verifyAudit(r.Context(), r.URL.Query().Get(api.AuditAfterParam))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		reply(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET "+api.PathAuditExport, func(w http.ResponseWriter, r *http.Request) {
		c := r.Context().Value(callerKey{}).(caller)
		if !isPlatformAdmin(c) {
			s.fail(w, r, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator exports the audit stream"))
			return
		}
		// Every export ends in a signed checkpoint (unless records raced in after it), so that it can be
		// checked offline.
		if err := s.checkpoint(r.Context()); err != nil {
			s.fail(w, r, internal(fmt.Errorf("checkpoint before export: %w", err)))
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		if _, err := s.gov.audit.Export(r.Context(), w, nil); err != nil {
			s.log.Warn("audit export failed", "err", err)
		}
	})
	mux.HandleFunc("POST "+api.PathAuditArchive, body(func(ctx context.Context, c caller, b []byte) (any, error) {
		if !isPlatformAdmin(c) {
			return nil, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator archives the audit trail")
		}
		var req api.AuditArchiveRequest
		if err := decodeInto(b, &req); err != nil {
			return nil, err
		}
		return s.archiveAudit(ctx, c, req.Through)
	}))
	mux.HandleFunc("GET "+api.PathAuditKey, body(func(context.Context, caller, []byte) (any, error) {
		return s.auditKeyView()
	}))
	mux.HandleFunc("GET "+api.PathAuditSession+"{id}", func(w http.ResponseWriter, r *http.Request) {
		c := r.Context().Value(callerKey{}).(caller)
		sess, err := s.auditableSession(r.Context(), c, r.PathValue("id"))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		out, err := s.sessionAudit(r.Context(), sess)
		if err != nil {
			s.fail(w, r, internal(err))
			return
		}
		reply(w, http.StatusOK, out)
	})
}

// sessionAudit reconstructs a session from the audit stream and the envelope stream.
func (s *Server) sessionAudit(ctx context.Context, sess workgroups.Session) (api.SessionAudit, error) {
	out := api.SessionAudit{Session: sess, Records: []json.RawMessage{}, Envelopes: []workgroups.Header{}}
	recs, err := s.gov.audit.Session(ctx, sess.ID.String())
	if err != nil {
		return out, err
	}
	for _, r := range recs {
		out.Records = append(out.Records, jsonRaw(r))
	}
	msgs, err := s.gov.env.All(ctx, sess.ID.String())
	if err != nil {
		return out, err
	}
	for _, m := range msgs {
		h, _, err := workgroups.DecodeFrame(bytes.NewReader(m.Data), relayLimits)
		if err != nil {
			return out, err
		}
		out.Envelopes = append(out.Envelopes, h)
	}
	if len(msgs) == 0 {
		// Archived envelopes (or none): their headers are in their audit records.
		if hs := archivedHeaders(recs); len(hs) > 0 {
			out.Envelopes = hs
		}
	}
	return out, nil
}
