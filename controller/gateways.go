package controller

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// Gateways (MCP, LLM) hold identities of kind "gateway". They write their decisions into the one audit stream
// and look up the callers they serve; every record they write names them as the gateway it came through.

func isGateway(c caller) bool { return c.rec.Kind == api.GatewayKind && c.rec.State != stateRevoked }

func (s *Server) gatewayRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+api.PathAuditRecords, s.anyone(func(ctx context.Context, c caller, b []byte) (any, error) {
		if !isGateway(c) {
			return nil, failf(http.StatusForbidden, api.CodeForbidden, "only gateway identities append audit records")
		}
		var r audit.Record
		if err := strict(b, &r); err != nil {
			return nil, err
		}
		if !strings.HasPrefix(r.Kind, "mcp.") && !strings.HasPrefix(r.Kind, "llm.") {
			return nil, failf(http.StatusBadRequest, api.CodeBadRequest, "gateway records are of kind mcp.* or llm.*")
		}
		actor, err := spiffeid.FromString(r.Actor)
		if err != nil {
			return nil, failf(http.StatusBadRequest, api.CodeBadRequest, "actor must be the caller's SPIFFE ID")
		}
		if _, _, err := s.ids.get(ctx, actor); err != nil {
			return nil, failf(http.StatusBadRequest, api.CodeBadRequest, "actor %s is not a registered identity", actor)
		}
		r.Seq, r.Prev, r.Hash = 0, "", ""
		r.Data = jsonRaw(map[string]json.RawMessage{"via": jsonRaw(c.id.String()), "detail": orNull(r.Data)})
		out, err := s.gov.audit.Append(ctx, r)
		if err != nil {
			return nil, failf(http.StatusBadRequest, api.CodeBadRequest, "audit record refused: %v", err)
		}
		return map[string]any{"seq": out.Seq, "hash": out.Hash}, nil
	}))
	mux.HandleFunc("POST "+api.PathIdentityLookup, s.anyone(func(ctx context.Context, c caller, b []byte) (any, error) {
		if !isGateway(c) && !c.rec.Admin {
			return nil, failf(http.StatusForbidden, api.CodeForbidden, "only gateways and administrators look identities up")
		}
		var req api.LookupRequest
		if err := strict(b, &req); err != nil {
			return nil, err
		}
		id, err := spiffeid.FromString(req.SPIFFEID)
		if err != nil {
			return nil, failf(http.StatusBadRequest, api.CodeBadRequest, "%q is not a SPIFFE ID", req.SPIFFEID)
		}
		rec, _, err := s.ids.get(ctx, id)
		// An organisation administrator looks up its own organisation only; anything else is "not found".
		if errors.Is(err, errNoIdentity) || !isGateway(c) && !isPlatformAdmin(c) && rec.Org != c.rec.Org {
			return nil, failf(http.StatusNotFound, api.CodeNotFound, "no identity %s", id)
		} else if err != nil {
			return nil, internal(err)
		}
		ms, _, err := s.memberships(ctx, id)
		if err != nil {
			return nil, internal(err)
		}
		info := api.IdentityInfo{SPIFFEID: rec.SPIFFEID, Org: rec.Org, Kind: rec.Kind, Name: rec.Name, Admin: rec.Admin,
			Revoked: rec.State == stateRevoked, Workgroups: []string{}}
		for _, wg := range workgroups.ActiveWorkgroups(ms) {
			info.Workgroups = append(info.Workgroups, wg.String())
		}
		return info, nil
	}))
}

func orNull(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return b
}
