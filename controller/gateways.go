package controller

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
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
		return s.appendGatewayRecord(ctx, c, r)
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
		ms, err := s.membershipsOf(ctx, id)
		if err != nil {
			return nil, internal(err)
		}
		info := api.IdentityInfo{SPIFFEID: rec.SPIFFEID, Org: rec.Org, Kind: rec.Kind, Name: rec.Name, Admin: rec.Admin,
			Revoked: rec.State == stateRevoked, Suspended: rec.Suspended, Workgroups: []string{}}
		for _, wg := range workgroups.ActiveWorkgroups(ms) {
			info.Workgroups = append(info.Workgroups, wg.String())
		}
		return info, nil
	}))
}

// gatewayReport is a gateway's newest report (api.GatewayReport), kept for the inventory and the findings.
type gatewayReport struct {
	Gateway string            `json:"gateway"`
	Kind    string            `json:"kind"` // "mcp" or "llm"
	At      time.Time         `json:"at"`   // of its audit record
	Report  api.GatewayReport `json:"report"`
}

// gatewayReportOf reads the report a gateway record carries, if it is one: a gateway reports on itself only.
func gatewayReportOf(c caller, r audit.Record) (gatewayReport, bool, error) {
	kind, ok := map[string]string{api.KindGatewayReportMCP: "mcp", api.KindGatewayReportLLM: "llm"}[r.Kind]
	if !ok {
		return gatewayReport{}, false, nil
	}
	if r.Actor != c.id.String() {
		return gatewayReport{}, false, failf(http.StatusBadRequest, api.CodeBadRequest, "a gateway reports on itself: the actor of a %s record must be %s", r.Kind, c.id)
	}
	out := gatewayReport{Gateway: c.id.String(), Kind: kind}
	if err := json.Unmarshal(r.Data, &out.Report); err != nil {
		return out, false, failf(http.StatusBadRequest, api.CodeBadRequest, "%s record: data is not a gateway report: %v", r.Kind, err)
	}
	return out, true, nil
}

// checkGatewayRecordScope refuses a gateway record that ties its actor to a session or workgroup the actor is
// not a party to: a gateway speaks for the callers it served, not for anyone's sessions.
// gatewayBegins are the kinds of the record a gateway writes, and waits for, before it forwards a call: refusing
// one refuses the call.
var gatewayBegins = map[string]bool{"mcp.call": true, "mcp.prompt": true, "mcp.read": true, "llm.call": true}

// appendGatewayRecord appends a record a gateway wrote about one of its callers (c is the gateway).
//
// An actor that has spent its day's audit budget may not start anything more through a gateway either: the record
// that begins a call is refused (429 audit_budget_exhausted), so the gateway refuses the call, and the gateway's
// records of the refusals that follow go through the same per-identity limiter as the relay's, so a spender
// hammering a gateway costs a few records a minute. Records of calls already under way (outcomes) are kept.
func (s *Server) appendGatewayRecord(ctx context.Context, c caller, r audit.Record) (map[string]any, error) {
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
	if err := s.checkGatewayRecordScope(ctx, actor, r); err != nil {
		return nil, err
	}
	report, isReport, err := gatewayReportOf(c, r)
	if err != nil {
		return nil, err
	}
	// The controller's clock times the record (a gateway keeps its own times in the detail); Append sets it.
	r.Seq, r.Prev, r.Hash, r.Time = 0, "", "", time.Time{}
	r.Data = jsonRaw(map[string]json.RawMessage{"via": jsonRaw(c.id.String()), "detail": orNull(r.Data)})
	switch {
	case gatewayBegins[r.Kind] && r.Decision == audit.DecisionAllow:
		denied := strings.SplitN(r.Kind, ".", 2)[0] + ".denied"
		if err := s.admitAuditBytes(ctx, actor, denied, r.Session, map[string]any{"via": c.id.String(), "refused": r.Kind}, true); err != nil {
			return nil, err
		}
	case r.Decision == audit.DecisionDeny:
		f, err := s.gov.budget.refusal(ctx, actor, true)
		if err != nil {
			return nil, internal(err)
		}
		if f != nil {
			s.recordRefusal(ctx, api.CodeAuditBudgetExhausted, r)
			return map[string]any{"limited": true}, nil
		}
	}
	out, err := s.gov.audit.Append(ctx, r)
	if err != nil {
		return nil, failf(http.StatusBadRequest, api.CodeBadRequest, "audit record refused: %v", err)
	}
	if isReport {
		report.At = out.Time
		raw, err := json.Marshal(report)
		if err != nil {
			return nil, internal(err)
		}
		if _, err := s.gov.reports.kv.Put(ctx, idKey(c.id), raw); err != nil {
			return nil, internal(err)
		}
	}
	return map[string]any{"seq": out.Seq, "hash": out.Hash}, nil
}

func (s *Server) checkGatewayRecordScope(ctx context.Context, actor spiffeid.ID, r audit.Record) error {
	if r.Session != "" {
		sess, _, err := s.gov.sessions.get(ctx, r.Session)
		if err != nil || sess.Consumer != actor && sess.Provider != actor {
			return failf(http.StatusBadRequest, api.CodeBadRequest, "actor %s is not a party to session %q", actor, r.Session)
		}
		if r.Workgroup != "" && r.Workgroup != sess.Workgroup.String() {
			return failf(http.StatusBadRequest, api.CodeBadRequest, "session %q is not in workgroup %q", r.Session, r.Workgroup)
		}
	}
	if r.Workgroup != "" {
		ms, err := s.membershipsOf(ctx, actor)
		if err != nil {
			return internal(err)
		}
		for _, wg := range workgroups.ActiveWorkgroups(ms) {
			if wg.String() == r.Workgroup {
				return nil
			}
		}
		return failf(http.StatusBadRequest, api.CodeBadRequest, "actor %s is not a member of workgroup %q", actor, r.Workgroup)
	}
	return nil
}

func orNull(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return b
}
