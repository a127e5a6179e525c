package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/mcpgw/approval"
)

const approvalPolicies = allowAcme + `
@id("writes-need-approval")
@sensitive
permit (principal in Umbra::Org::"acme", action == Umbra::Action::"call_tool", resource == Umbra::Tool::"notes__write");
`

func approvalEnv(t *testing.T, a Approvals) (*env, *client) {
	t.Helper()
	e, c, _ := approvalEnvEvents(t, a)
	return e, c
}

// approvalEnvEvents is approvalEnv that also returns what the backend saw.
func approvalEnvEvents(t *testing.T, a Approvals) (*env, *client, *events) {
	t.Helper()
	srv, ev := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: approvalPolicies, Approvals: a, Sensitive: []string{"notes__ech?"}})
	return e, e.connect(t, alice), ev
}

// pendingCall waits for exactly one pending approval request and returns it.
func (e *env) pendingCall(t *testing.T) approval.Request {
	t.Helper()
	var got approval.Request
	eventually(t, "a pending approval", func() bool {
		var out struct{ Approvals []approval.Request }
		if e.adminDo(t, adminID, "GET", "/admin/approvals", nil, &out) != http.StatusOK || len(out.Approvals) != 1 {
			return false
		}
		got = out.Approvals[0]
		return true
	})
	return got
}

func (e *env) decide(t *testing.T, verb, id, digest string) int {
	t.Helper()
	return e.adminDo(t, adminID, "POST", "/admin/approvals/"+id+"/"+verb, map[string]string{"digest": digest}, nil)
}

// giveUp makes a sensitive call that the gateway stops holding before a decision (Approvals.Hold): the answer
// names the request, which stays pending.
func giveUp(t *testing.T, e *env, c *client, args map[string]any) approval.Request {
	t.Helper()
	_, err := c.call(t, "notes__write", args)
	code, d := approvalCode(err)
	if code != CodeApproval || d.Approval == "" || !strings.Contains(err.Error(), "no decision yet on approval "+d.Approval) {
		t.Fatalf("a call held past Approvals.Hold: %v", err)
	}
	r := e.pendingCall(t)
	if r.ID != d.Approval {
		t.Fatalf("pending request %s, the answer named %s", r.ID, d.Approval)
	}
	return r
}

func retry(t *testing.T, c *client, args map[string]any, approvalID string) (*mcp.CallToolResult, error) {
	return c.cs.CallTool(ctxT(t), &mcp.CallToolParams{Name: "notes__write", Arguments: args, Meta: mcp.Meta{MetaApproval: approvalID}})
}

func approvalCode(err error) (int64, ErrorData) {
	var we *jsonrpc.Error
	var d ErrorData
	if errors.As(err, &we) {
		_ = json.Unmarshal(we.Data, &d)
		return we.Code, d
	}
	return 0, d
}

func TestApprovals(t *testing.T) {
	args := map[string]any{"text": "pay 10 EUR", "api_key": "sk-live-abcdefghijklmnopqrstuvwx"}

	t.Run("approve lets the waiting call proceed", func(t *testing.T) {
		e, c := approvalEnv(t, Approvals{Timeout: 15 * time.Second})
		done := make(chan *mcp.CallToolResult, 1)
		go func() {
			params := &mcp.CallToolParams{Name: "notes__write", Arguments: args}
			params.SetProgressToken("wait-1")
			res, err := c.cs.CallTool(ctxT(t), params)
			if err != nil {
				t.Error(err)
			}
			done <- res
		}()
		r := e.pendingCall(t)
		if r.Caller != alice || r.Tool != "notes__write" || r.ArgsDigest == "" || r.PolicyVersion == "" {
			t.Fatalf("request %+v", r)
		}
		if strings.Contains(string(r.Arguments), "abcdefghijklmnop") || !strings.Contains(string(r.Arguments), "pay 10 EUR") {
			t.Fatalf("arguments shown to the reviewer must be redacted, and only redacted: %s", r.Arguments)
		}
		eventually(t, "progress naming the approval", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			for _, p := range c.progress {
				if p.ProgressToken == "wait-1" && strings.Contains(p.Message, r.ID) {
					return true
				}
			}
			return false
		})
		select {
		case <-done:
			t.Fatal("the call did not wait")
		default:
		}
		if code := e.adminDo(t, alice, "POST", "/admin/approvals/"+r.ID+"/approve", nil, nil); code != http.StatusForbidden {
			t.Fatalf("the caller approved its own call: %d", code)
		}
		if code := e.decide(t, "approve", r.ID, "0000"); code != http.StatusConflict {
			t.Fatalf("approving other arguments than the reviewed: %d", code)
		}
		if code := e.decide(t, "approve", r.ID, r.ArgsDigest); code != http.StatusOK {
			t.Fatalf("approve: %d", code)
		}
		if res := <-done; res == nil || text(res) != "wrote pay 10 EUR" {
			t.Fatalf("approved call: %+v", res)
		}
		for _, want := range []struct{ actor, reason string }{{alice, "approval requested"}, {adminID, "call approved"}, {alice, "approval used"}} {
			e.rec.find(t, want.reason, func(rec audit.Record) bool {
				return rec.Kind == KindApproval && rec.Actor == want.actor && rec.Reason == want.reason
			})
		}
		e.rec.find(t, "the call with its approval", func(rec audit.Record) bool {
			return rec.Kind == KindCall && dataOf(rec)["approval"] == r.ID
		})
	})

	t.Run("deny refuses the waiting call", func(t *testing.T) {
		e, c := approvalEnv(t, Approvals{Timeout: 15 * time.Second})
		errc := make(chan error, 1)
		go func() { _, err := c.call(t, "notes__write", args); errc <- err }()
		r := e.pendingCall(t)
		if code := e.decide(t, "deny", r.ID, ""); code != http.StatusOK {
			t.Fatalf("deny: %d", code)
		}
		err := <-errc
		if code, d := approvalCode(err); code != CodeApproval || d.Approval != r.ID || !strings.Contains(err.Error(), "denied by "+adminID) {
			t.Fatalf("denied call: %v", err)
		}
	})

	t.Run("changed arguments are refused", func(t *testing.T) {
		e, c := approvalEnv(t, Approvals{Timeout: 15 * time.Second, Hold: 200 * time.Millisecond})
		r := giveUp(t, e, c, args)
		if code := e.decide(t, "approve", r.ID, ""); code != http.StatusOK {
			t.Fatalf("approve: %d", code)
		}
		changed := map[string]any{"text": "pay 10000 EUR", "api_key": args["api_key"]}
		_, err := retry(t, c, changed, r.ID)
		if code, _ := approvalCode(err); code != CodeApproval || !strings.Contains(err.Error(), "arguments differ") {
			t.Fatalf("changed arguments: %v", err)
		}
		if res, err := retry(t, c, args, r.ID); err != nil || text(res) != "wrote pay 10 EUR" {
			t.Fatalf("retry with the approved arguments: %v %v", res, err)
		}
		if _, err := retry(t, c, args, r.ID); err == nil || !strings.Contains(err.Error(), "already used") {
			t.Fatalf("second use of one approval: %v", err)
		}
		if _, err := e.connect(t, bob).cs.CallTool(ctxT(t), &mcp.CallToolParams{Name: "notes__write", Arguments: args,
			Meta: mcp.Meta{MetaApproval: r.ID}}); err == nil {
			t.Fatal("another caller used the approval")
		}
	})

	t.Run("a retry with the same arguments waits for the same request", func(t *testing.T) {
		e, c := approvalEnv(t, Approvals{Timeout: 15 * time.Second, Hold: 3 * time.Second})
		r := giveUp(t, e, c, args)
		errc := make(chan error, 1)
		go func() {
			params := &mcp.CallToolParams{Name: "notes__write", Arguments: args}
			params.SetProgressToken("retry-1")
			_, err := c.cs.CallTool(ctxT(t), params)
			errc <- err
		}()
		eventually(t, "the retry waiting on the first request", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			for _, p := range c.progress {
				if p.ProgressToken == "retry-1" && strings.Contains(p.Message, r.ID) {
					return true
				}
			}
			return false
		})
		if again := e.pendingCall(t); again.ID != r.ID {
			t.Fatalf("the retry opened another request %s", again.ID)
		}
		if code := e.decide(t, "approve", r.ID, ""); code != http.StatusOK {
			t.Fatalf("approve: %d", code)
		}
		if err := <-errc; err != nil {
			t.Fatalf("retry: %v", err)
		}
		if _, err := retry(t, c, args, r.ID); err == nil {
			t.Fatal("the approval was used twice")
		}
	})

	t.Run("expired approvals are refused", func(t *testing.T) {
		e, c := approvalEnv(t, Approvals{Timeout: 15 * time.Second, TTL: 200 * time.Millisecond, Hold: 200 * time.Millisecond})
		r := giveUp(t, e, c, args)
		if code := e.decide(t, "approve", r.ID, ""); code != http.StatusOK {
			t.Fatalf("approve: %d", code)
		}
		time.Sleep(300 * time.Millisecond)
		if _, err := retry(t, c, args, r.ID); err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("expired approval: %v", err)
		}
	})

	t.Run("a policy change voids approvals", func(t *testing.T) {
		e, c := approvalEnv(t, Approvals{Timeout: 15 * time.Second, Hold: 200 * time.Millisecond})
		r := giveUp(t, e, c, args)
		if code := e.decide(t, "approve", r.ID, ""); code != http.StatusOK {
			t.Fatalf("approve: %d", code)
		}
		if err := e.g.SetPolicies(context.Background(), approvalPolicies+"\n// reviewed\n", mustID(adminID)); err != nil {
			t.Fatal(err)
		}
		if _, err := retry(t, c, args, r.ID); err == nil || !strings.Contains(err.Error(), "policy version differ") {
			t.Fatalf("approval under old policies: %v", err)
		}
	})

	t.Run("no decision is a denial", func(t *testing.T) {
		e, c := approvalEnv(t, Approvals{Timeout: 300 * time.Millisecond})
		_, err := c.call(t, "notes__write", args)
		code, d := approvalCode(err)
		if code != CodeApproval || !strings.Contains(err.Error(), "no decision within") || d.Ref == "" {
			t.Fatalf("timed out call: %v", err)
		}
		e.rec.find(t, "timeout denial", func(rec audit.Record) bool {
			return rec.Kind == KindApproval && rec.Decision == audit.DecisionDeny && strings.Contains(rec.Reason, "no decision")
		})
		if code := e.decide(t, "approve", d.Approval, ""); code != http.StatusConflict {
			t.Fatalf("approving after the timeout: %d", code)
		}
	})

	t.Run("configured sensitive tools wait too", func(t *testing.T) {
		e, c := approvalEnv(t, Approvals{Timeout: 15 * time.Second})
		errc := make(chan error, 1)
		go func() { _, err := c.call(t, "notes__echo", map[string]any{"text": "x"}); errc <- err }()
		r := e.pendingCall(t)
		if r.Tool != "notes__echo" || !strings.Contains(r.Reason, "configured as sensitive") {
			t.Fatalf("request %+v", r)
		}
		e.decide(t, "approve", r.ID, "")
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if res, err := c.call(t, "notes__fail", map[string]any{}); err != nil || !res.IsError {
			t.Fatalf("a tool that is not sensitive must not wait: %v %v", res, err)
		}
	})
}

// requestStatus reads one approval request's status through the administration API.
func (e *env) requestStatus(t *testing.T, id string) approval.Status {
	t.Helper()
	var out struct{ Approvals []approval.Request }
	if code := e.adminDo(t, adminID, "GET", "/admin/approvals?all=1", nil, &out); code != http.StatusOK {
		t.Fatalf("list approvals: %d", code)
	}
	for _, r := range out.Approvals {
		if r.ID == id {
			return r.Status
		}
	}
	t.Fatalf("approval %s not listed", id)
	return ""
}

// A held call that is cancelled, or whose client goes away, withdraws its request: an approval given afterwards
// is refused and nothing runs; the audit trail says the call was cancelled.
func TestApprovalOfCancelledCall(t *testing.T) {
	args := map[string]any{"text": "pay 10 EUR"}
	withdrawn := func(t *testing.T, e *env, ev *events, r approval.Request) {
		t.Helper()
		eventually(t, "the request withdrawn", func() bool { return e.requestStatus(t, r.ID) == approval.Cancelled })
		e.rec.find(t, "the cancellation", func(rec audit.Record) bool {
			return rec.Kind == KindApproval && dataOf(rec)["approval"] == r.ID && strings.Contains(rec.Reason, "cancelled")
		})
		if code := e.decide(t, "approve", r.ID, ""); code != http.StatusConflict {
			t.Fatalf("approving a withdrawn request: %d", code)
		}
		time.Sleep(200 * time.Millisecond)
		if n := ev.writes.Load(); n != 0 {
			t.Fatalf("the backend wrote %d notes for a cancelled call", n)
		}
		for _, rec := range e.rec.records() {
			if rec.Kind == KindCall && dataOf(rec)["tool"] == "notes__write" {
				t.Fatalf("a call record for the cancelled call: %+v", rec)
			}
		}
	}

	t.Run("cancelled by the client", func(t *testing.T) {
		e, c, ev := approvalEnvEvents(t, Approvals{Timeout: 30 * time.Second})
		ctx, cancel := context.WithCancel(ctxT(t))
		errc := make(chan error, 1)
		go func() {
			_, err := c.cs.CallTool(ctx, &mcp.CallToolParams{Name: "notes__write", Arguments: args})
			errc <- err
		}()
		r := e.pendingCall(t)
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled call: %v", err)
		}
		withdrawn(t, e, ev, r)
		// The session goes on, and the same call asks anew.
		errc2 := make(chan error, 1)
		go func() { _, err := c.call(t, "notes__write", args); errc2 <- err }()
		var again approval.Request
		eventually(t, "a new request", func() bool {
			var out struct{ Approvals []approval.Request }
			e.adminDo(t, adminID, "GET", "/admin/approvals", nil, &out)
			if len(out.Approvals) == 1 && out.Approvals[0].ID != r.ID {
				again = out.Approvals[0]
				return true
			}
			return false
		})
		if code := e.decide(t, "approve", again.ID, ""); code != http.StatusOK {
			t.Fatalf("approve: %d", code)
		}
		if err := <-errc2; err != nil || ev.writes.Load() != 1 {
			t.Fatalf("the new call: %v, writes %d", err, ev.writes.Load())
		}
	})

	t.Run("the client ends its session", func(t *testing.T) {
		e, c, ev := approvalEnvEvents(t, Approvals{Timeout: 30 * time.Second})
		// The call itself would wait longer than the checks below: only the end of the session can withdraw it.
		long, stop := context.WithTimeout(context.Background(), time.Minute)
		t.Cleanup(stop)
		go func() { _, _ = c.cs.CallTool(long, &mcp.CallToolParams{Name: "notes__write", Arguments: args}) }()
		r := e.pendingCall(t)
		// The session ends as a transport closing it ends it (DELETE), without cancelling the call first.
		req, _ := http.NewRequestWithContext(ctxT(t), http.MethodDelete, e.url, nil)
		req.Header.Set("Mcp-Session-Id", c.cs.ID())
		resp, err := httpClient(alice).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("DELETE of the session: %s", resp.Status)
		}
		withdrawn(t, e, ev, r)
	})

	t.Run("the client's connection goes away", func(t *testing.T) {
		e, c, ev := approvalEnvEvents(t, Approvals{Timeout: 30 * time.Second})
		// A raw POST on the client's session, abandoned while the call is held: no cancellation is sent and the
		// session stays open; only the HTTP exchange ends.
		body := `{"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"notes__write","arguments":{"text":"pay 10 EUR"}}}`
		ctx, cancel := context.WithCancel(ctxT(t))
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Mcp-Session-Id", c.cs.ID())
		req.Header.Set(headerCarrier, "forged") // a client cannot name a carrier of its own
		errc := make(chan error, 1)
		go func() {
			resp, err := httpClient(alice).Do(req)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			errc <- err
		}()
		r := e.pendingCall(t)
		cancel()
		<-errc
		withdrawn(t, e, ev, r)
		if err := c.cs.Ping(ctxT(t), nil); err != nil {
			t.Fatalf("the session after the abandoned exchange: %v", err)
		}
	})
}
