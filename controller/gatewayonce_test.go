package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
)

// A gateway that sends a record again because the answer to its first try was lost gets the record stored once,
// through the controller's real handler; another gateway cannot claim its record IDs; a record ID used for another
// record, a malformed ID or age and a try later than the retry window are refused.
func TestGatewayRecordStoredOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w, mux, mcp, llm := gatewayWorld(t, ctx)
	type answer struct {
		Seq       uint64 `json:"seq"`
		Hash      string `json:"hash"`
		Duplicate bool   `json:"duplicate"`
		Code      string `json:"code"`
	}
	send := func(gw caller, kind, id, age string) (int, answer) {
		t.Helper()
		body, _ := json.Marshal(audit.Record{Kind: kind, Actor: worldConsumer.String(), Reason: "once"})
		req := httptest.NewRequest(http.MethodPost, api.PathAuditRecords, bytes.NewReader(body)).
			WithContext(context.WithValue(ctx, callerKey{}, gw))
		if id != "" {
			req.Header.Set(api.HeaderRecordID, id)
		}
		if age != "" {
			req.Header.Set(api.HeaderRecordAge, age)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		var a answer
		if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
			t.Fatalf("answer %d %q: %v", rec.Code, rec.Body, err)
		}
		return rec.Code, a
	}
	stored := func() int {
		t.Helper()
		n := 0
		if _, err := w.s.gov.audit.Scan(ctx, 0, func(r audit.Record) error {
			if r.Reason == "once" {
				n++
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}

	code, first := send(mcp, "mcp.outcome", "rec-1", "")
	if code != http.StatusOK || first.Duplicate || first.Seq == 0 {
		t.Fatalf("first try: %d %+v", code, first)
	}
	for _, age := range []string{"1200", "9999"} {
		code, again := send(mcp, "mcp.outcome", "rec-1", age)
		if code != http.StatusOK || !again.Duplicate || again.Seq != first.Seq || again.Hash != first.Hash {
			t.Fatalf("try %s ms after the first: %d %+v, want the first record (%d) again", age, code, again, first.Seq)
		}
	}
	if n := stored(); n != 1 {
		t.Fatalf("%d records stored, want 1", n)
	}
	// Another gateway's record with the same ID is its own record.
	if code, other := send(llm, "llm.outcome", "rec-1", ""); code != http.StatusOK || other.Duplicate || other.Seq == first.Seq {
		t.Fatalf("another gateway's record under the same ID: %d %+v", code, other)
	}
	for _, tc := range []struct {
		name, kind, id, age, code string
		status                    int
	}{
		{"the ID of another record", "mcp.denied", "rec-1", "", api.CodeConflict, http.StatusConflict},
		{"a try past the retry window", "mcp.outcome", "rec-2", "10001", api.CodeRetryTooLate, http.StatusConflict},
		{"a malformed ID", "mcp.outcome", "rec 3", "", api.CodeBadRequest, http.StatusBadRequest},
		{"an over-long ID", "mcp.outcome", string(bytes.Repeat([]byte("a"), 65)), "", api.CodeBadRequest, http.StatusBadRequest},
		{"a malformed age", "mcp.outcome", "rec-4", "soon", api.CodeBadRequest, http.StatusBadRequest},
	} {
		if code, a := send(mcp, tc.kind, tc.id, tc.age); code != tc.status || a.Code != tc.code {
			t.Errorf("%s: %d %q, want %d %q", tc.name, code, a.Code, tc.status, tc.code)
		}
	}
	if n := stored(); n != 2 {
		t.Fatalf("%d records stored, want the two gateways' one each", n)
	}
	// Without an ID every try is a record (a client that does not send again).
	send(mcp, "mcp.outcome", "", "")
	send(mcp, "mcp.outcome", "", "")
	if n := stored(); n != 4 {
		t.Fatalf("%d records stored, want 4", n)
	}
}

// A gateway asks whether a record it sent under an ID, by a try too old to send again, was stored: the controller
// finds the gateway's own record in the span that try could have been stored in, not another gateway's under the
// same ID, and says to ask later while a try could still be stored.
func TestGatewayRecordFind(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w, mux, mcp, llm := gatewayWorld(t, ctx)
	w.s.findAfter = time.Second
	do := func(c caller, path string, body []byte, id string, header ...string) (int, []byte) {
		t.Helper()
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)).WithContext(context.WithValue(ctx, callerKey{}, c))
		if id != "" {
			req.Header.Set(api.HeaderRecordID, id)
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		return rec.Code, rec.Body.Bytes()
	}
	tried := time.Now()
	body, _ := json.Marshal(audit.Record{Kind: "mcp.outcome", Actor: worldConsumer.String(), Reason: "find"})
	code, raw := do(mcp, api.PathAuditRecords, body, "rec-1")
	var stored api.AuditRecordFound
	if err := json.Unmarshal(raw, &stored); code != http.StatusOK || err != nil {
		t.Fatalf("append: %d %s", code, raw)
	}
	find := func(c caller, id string, first time.Time) (int, api.AuditRecordFound, string) {
		t.Helper()
		b, _ := json.Marshal(api.AuditRecordFind{ID: id, FirstUnixMS: first.UnixMilli()})
		code, raw := do(c, api.PathAuditRecordFind, b, "")
		var out struct {
			api.AuditRecordFound
			Code string `json:"code"`
		}
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("find answer %d %s: %v", code, raw, err)
		}
		return code, out.AuditRecordFound, out.Code
	}
	if code, _, c := find(mcp, "rec-1", tried); code != http.StatusConflict || c != api.CodeAskLater {
		t.Fatalf("asked while a try could still be stored: %d %q, want 409 %s", code, c, api.CodeAskLater)
	}
	time.Sleep(1100 * time.Millisecond)
	if code, got, _ := find(mcp, "rec-1", tried); code != http.StatusOK || !got.Found || got.Seq != stored.Seq || got.Hash != stored.Hash {
		t.Fatalf("find the stored record: %d %+v, want seq %d", code, got, stored.Seq)
	}
	if code, got, _ := find(mcp, "rec-2", tried); code != http.StatusOK || got.Found {
		t.Fatalf("find a record never stored: %d %+v", code, got)
	}
	if code, got, _ := find(llm, "rec-1", tried); code != http.StatusOK || got.Found {
		t.Fatalf("another gateway found this one's record: %d %+v", code, got)
	}
	if code, got, _ := find(mcp, "rec-1", tried.Add(-time.Hour)); code != http.StatusOK || got.Found {
		t.Fatalf("find in a span before the record was stored: %d %+v", code, got)
	}
	for _, bad := range []api.AuditRecordFind{{ID: "rec 1", FirstUnixMS: tried.UnixMilli()}, {ID: "rec-1", FirstUnixMS: -1}} {
		b, _ := json.Marshal(bad)
		if code, raw := do(mcp, api.PathAuditRecordFind, b, ""); code != http.StatusBadRequest {
			t.Fatalf("%+v: %d %s, want 400", bad, code, raw)
		}
	}
	// A try that arrives long after the record's first try, by the gateway's clock, is refused, whatever its age
	// says: held up on the way, it must not be stored after the gateway stopped waiting for it.
	late := strconv.FormatInt(time.Now().Add(-api.AuditRetryWindow-api.AuditClockSkew-time.Second).UnixMilli(), 10)
	if code, raw := do(mcp, api.PathAuditRecords, body, "rec-3", api.HeaderRecordFirst, late); code != http.StatusConflict || !bytes.Contains(raw, []byte(api.CodeRetryTooLate)) {
		t.Fatalf("a try arriving late by the first try's time: %d %s", code, raw)
	}
	if code, raw := do(mcp, api.PathAuditRecords, body, "rec-4", api.HeaderRecordFirst, "yesterday"); code != http.StatusBadRequest {
		t.Fatalf("a malformed first-try time: %d %s", code, raw)
	}
	on := strconv.FormatInt(time.Now().UnixMilli(), 10)
	if code, raw := do(mcp, api.PathAuditRecords, body, "rec-5", api.HeaderRecordFirst, on); code != http.StatusOK {
		t.Fatalf("a try on time: %d %s", code, raw)
	}
	agent := caller{id: worldConsumer, rec: identityRecord{SPIFFEID: worldConsumer.String(), Org: "acme", Kind: "agent", Name: "buyer"}}
	b, _ := json.Marshal(api.AuditRecordFind{ID: "rec-1", FirstUnixMS: tried.UnixMilli()})
	if code, raw := do(agent, api.PathAuditRecordFind, b, ""); code != http.StatusForbidden {
		t.Fatalf("an agent asked after a gateway's record: %d %s", code, raw)
	}
}

// gatewayWorld is a governance world holding the consumer's identity, with the gateways' routes on mux, and the
// MCP and LLM gateways of acme as callers.
func gatewayWorld(t *testing.T, ctx context.Context) (w *govWorld, mux *http.ServeMux, mcp, llm caller) {
	t.Helper()
	w = openGovWorld(t, t.TempDir(), Config{ProposalsPerMinute: -1})
	if err := w.s.ids.create(ctx, identityRecord{SPIFFEID: worldConsumer.String(), Org: "acme", Kind: "agent", Name: "buyer"}); err != nil {
		t.Fatal(err)
	}
	mux = http.NewServeMux()
	w.s.gatewayRoutes(mux)
	gateway := func(name string) caller {
		id := spiffeid.RequireFromSegments(worldTD, "acme", "gateway", name)
		return caller{id: id, rec: identityRecord{SPIFFEID: id.String(), Org: "acme", Kind: api.GatewayKind, Name: name}}
	}
	return w, mux, gateway("mcp"), gateway("llm")
}
