package controller

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
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
	mux.HandleFunc("POST "+api.PathAuditRecords, func(w http.ResponseWriter, req *http.Request) {
		s.anyone(func(ctx context.Context, c caller, b []byte) (any, error) {
			if !isGateway(c) {
				return nil, failf(http.StatusForbidden, api.CodeForbidden, "only gateway identities append audit records")
			}
			id, err := gatewayRecordID(c, req.Header)
			if err != nil {
				return nil, err
			}
			var r audit.Record
			if err := strict(b, &r); err != nil {
				return nil, err
			}
			if id != "" { // stored within AuditStoreWithin of its arrival or not at all (findGatewayRecord)
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, api.AuditStoreWithin)
				defer cancel()
			}
			return s.appendGatewayRecord(ctx, c, r, id)
		})(w, req)
	})
	mux.HandleFunc("POST "+api.PathAuditRecordFind, s.anyone(func(ctx context.Context, c caller, b []byte) (any, error) {
		if !isGateway(c) {
			return nil, failf(http.StatusForbidden, api.CodeForbidden, "only gateway identities ask after their audit records")
		}
		var req api.AuditRecordFind
		if err := strict(b, &req); err != nil {
			return nil, err
		}
		return s.findGatewayRecord(ctx, c, req)
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

// gatewayRecordID is the de-duplication ID of a record a gateway sends (api.HeaderRecordID): its own ID scoped
// to the gateway, so that no gateway can claim another's, or "" when it sent none. A try later than
// api.AuditRetryWindow after the first is refused: the store may have forgotten the ID by then
// (audit.DedupWindow, which leaves room for the try's transit and a store leader's election).
func gatewayRecordID(c caller, h http.Header) (string, error) {
	id := h.Get(api.HeaderRecordID)
	if id == "" {
		return "", nil
	}
	if len(id) > 64 || !audit.ValidSessionID(id) { // a session ID's alphabet
		return "", failf(http.StatusBadRequest, api.CodeBadRequest, "%s must be 1 to 64 characters of [A-Za-z0-9_-]", api.HeaderRecordID)
	}
	if v := h.Get(api.HeaderRecordFirst); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return "", failf(http.StatusBadRequest, api.CodeBadRequest, "%s must be the decimal Unix milliseconds of the record's first try", api.HeaderRecordFirst)
		}
		if late := time.Since(time.UnixMilli(ms)); late > api.AuditRetryWindow+api.AuditClockSkew {
			return "", failf(http.StatusConflict, api.CodeRetryTooLate, "record %s first tried at %s, %s ago by this controller's clock: a try arriving more than %s after the first is refused (read the audit trail, or ask with %s, to learn whether it was stored; if the clocks differ by more than %s, set them right)",
				id, time.UnixMilli(ms).UTC().Format(time.RFC3339), late.Round(time.Second), api.AuditRetryWindow+api.AuditClockSkew, api.PathAuditRecordFind, api.AuditClockSkew)
		}
	}
	if v := h.Get(api.HeaderRecordAge); v != "" {
		ms, err := strconv.ParseUint(v, 10, 63)
		if err != nil {
			return "", failf(http.StatusBadRequest, api.CodeBadRequest, "%s must be the decimal milliseconds since the record's first try", api.HeaderRecordAge)
		}
		if age := time.Duration(ms) * time.Millisecond; age > api.AuditRetryWindow {
			return "", failf(http.StatusConflict, api.CodeRetryTooLate, "record %s first tried %s ago, more than the %s in which a repeat is recognised: read the audit trail to learn whether it was stored",
				id, age.Round(time.Millisecond), api.AuditRetryWindow)
		}
	}
	return gatewayMsgID(c, id), nil
}

// gatewayMsgID is the stream's de-duplication ID of the record the gateway c sent under id.
func gatewayMsgID(c caller, id string) string {
	sum := sha256.Sum256([]byte(c.id.String() + "\x00" + id))
	return "gw-" + hex.EncodeToString(sum[:16])
}

// findGatewayRecord answers whether the gateway c's record req.ID, first tried at req.FirstUnixMS by the gateway's
// clock, was stored (api.PathAuditRecordFind). A try is stored only if it arrives within AuditRetryWindow plus
// AuditClockSkew of that time by this controller's clock (gatewayRecordID), and within AuditStoreWithin of its
// arrival (the POST handler), so a stored copy is in the trail between the first try, less the skew, and the sum
// of the three after it; a margin on both sides covers the rest. One search runs at a time: each reads the
// headers of the records stored in that span.
func (s *Server) findGatewayRecord(ctx context.Context, c caller, req api.AuditRecordFind) (api.AuditRecordFound, error) {
	if len(req.ID) > 64 || !audit.ValidSessionID(req.ID) {
		return api.AuditRecordFound{}, failf(http.StatusBadRequest, api.CodeBadRequest, "id must be 1 to 64 characters of [A-Za-z0-9_-]")
	}
	if req.FirstUnixMS <= 0 {
		return api.AuditRecordFound{}, failf(http.StatusBadRequest, api.CodeBadRequest, "first_unix_ms must be the Unix milliseconds of the record's first try")
	}
	first := time.UnixMilli(req.FirstUnixMS)
	const margin = 5 * time.Second
	from, to := first.Add(-api.AuditClockSkew-margin), first.Add(api.AuditRetryWindow+api.AuditClockSkew+api.AuditStoreWithin+margin)
	if after := cmp.Or(s.findAfter, api.AuditFindAfter); time.Since(first) < after {
		return api.AuditRecordFound{}, failf(http.StatusConflict, api.CodeAskLater, "record %s was first tried at %s: whether it was stored is certain %s after that; ask again then",
			req.ID, first.UTC().Format(time.RFC3339), after)
	}
	for !s.findOnce.TryLock() {
		select {
		case <-ctx.Done():
			return api.AuditRecordFound{}, internal(ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	defer s.findOnce.Unlock()
	r, found, err := s.gov.audit.FindOnce(ctx, gatewayMsgID(c, req.ID), from, to)
	switch {
	case errors.Is(err, audit.ErrForgotten):
		return api.AuditRecordFound{}, failf(http.StatusConflict, api.CodeRetryTooLate, "record %s: the audit trail no longer holds the records of %s, when it was tried",
			req.ID, first.UTC().Format(time.RFC3339))
	case err != nil:
		return api.AuditRecordFound{}, internal(err)
	case !found:
		return api.AuditRecordFound{}, nil
	}
	return api.AuditRecordFound{Found: true, Seq: r.Seq, Hash: r.Hash}, nil
}

// appendGatewayRecord appends a record a gateway wrote about one of its callers (c is the gateway). A record sent
// again under the same id (gatewayRecordID) is stored once; a repeat is answered with the record stored first.
//
// An actor that has spent its day's audit budget may not start anything more through a gateway either: the record
// that begins a call is refused (429 audit_budget_exhausted), so the gateway refuses the call, and the gateway's
// records of the refusals that follow go through the same per-identity limiter as the relay's, so a spender
// hammering a gateway costs a few records a minute. Records of calls already under way (outcomes) are kept.
func (s *Server) appendGatewayRecord(ctx context.Context, c caller, r audit.Record, id string) (map[string]any, error) {
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
	out, dup, err := s.gov.audit.AppendOnce(ctx, r, id)
	if err != nil {
		return nil, failf(http.StatusBadRequest, api.CodeBadRequest, "audit record refused: %v", err)
	}
	if dup {
		if out.Kind != r.Kind || out.Actor != r.Actor {
			return nil, failf(http.StatusConflict, api.CodeConflict, "%s was already used for a %s record of %s: give every record its own id",
				api.HeaderRecordID, out.Kind, out.Actor)
		}
		return map[string]any{"seq": out.Seq, "hash": out.Hash, "duplicate": true}, nil
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
