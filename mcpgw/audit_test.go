package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/umbra-mesh/umbra/internal/audit"
)

// probe is a backend that notes every request it receives, with the audit records held at that moment.
type probe struct {
	mu   sync.Mutex
	rec  *recorder
	seen [][]audit.Record
}

func (p *probe) saw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	var held []audit.Record
	if p.rec != nil {
		held = p.rec.records()
	}
	p.seen = append(p.seen, held)
}

func (p *probe) requests() [][]audit.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]audit.Record(nil), p.seen...)
}

func (p *probe) server() *mcp.Server {
	srv := mcp.NewServer(&mcp.Implementation{Name: "probe", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "echo", Description: "Returns the text it is given."},
		func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
			p.saw()
			return nil, echoOut{Text: in.Text, Server: "probe"}, nil
		})
	srv.AddPrompt(&mcp.Prompt{Name: "greet", Description: "Greets someone."},
		func(ctx context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			if req.Params.Meta[pinCheckMeta] == nil { // the gateway's own pin checks are no caller's requests
				p.saw()
			}
			return &mcp.GetPromptResult{Messages: []*mcp.PromptMessage{{Role: "user", Content: &mcp.TextContent{Text: "Say hello"}}}}, nil
		})
	srv.AddResource(&mcp.Resource{Name: "readme", URI: "mem://probe/readme", MIMEType: "text/plain"},
		func(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			if req.Params.Meta[pinCheckMeta] == nil {
				p.saw()
			}
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, Text: "readme"}}}, nil
		})
	return srv
}

// probeEnv runs a gateway in front of a probe, with a short audit deadline.
func probeEnv(t *testing.T) (*env, *probe, *client) {
	t.Helper()
	p := &probe{}
	b, _ := inMemory("probe", p.server(), true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme, AuditTimeout: 300 * time.Millisecond})
	p.mu.Lock()
	p.rec = e.rec
	p.mu.Unlock()
	return e, p, e.connect(t, alice)
}

// forwarded is one kind of request the gateway forwards, and the record kind written before it is.
var forwarded = []struct {
	name, kind, key, item string
	do                    func(t *testing.T, c *client) error
}{
	{"tool call", KindCall, "tool", "probe__echo", func(t *testing.T, c *client) error {
		res, err := c.call(t, "probe__echo", map[string]any{"text": "hi"})
		if err == nil && res.IsError {
			err = errors.New(text(res))
		}
		return err
	}},
	{"prompt get", KindPrompt, "prompt", "probe__greet", func(t *testing.T, c *client) error {
		_, err := c.cs.GetPrompt(ctxT(t), &mcp.GetPromptParams{Name: "probe__greet"})
		return err
	}},
	{"resource read", KindRead, "resource", "probe+mem://probe/readme", func(t *testing.T, c *client) error {
		_, err := c.cs.ReadResource(ctxT(t), &mcp.ReadResourceParams{URI: "probe+mem://probe/readme"})
		return err
	}},
}

// TestAuditFailsClosed checks that a request whose record the audit trail does not confirm, because the
// Auditor fails or does not answer within AuditTimeout, is refused and never reaches the backend.
func TestAuditFailsClosed(t *testing.T) {
	for _, fault := range []struct {
		name string
		set  func(t *testing.T, r *recorder)
	}{
		{"auditor fails", func(t *testing.T, r *recorder) {
			r.failWith(func(context.Context, audit.Record) error { return errors.New("audit stream unavailable") })
		}},
		{"auditor slower than its deadline", func(t *testing.T, r *recorder) {
			// It ignores its context: the gateway's deadline must hold all the same.
			release := make(chan struct{})
			t.Cleanup(func() { close(release) })
			r.failWith(func(context.Context, audit.Record) error {
				<-release
				return errors.New("answered too late")
			})
		}},
	} {
		t.Run(fault.name, func(t *testing.T) {
			e, p, c := probeEnv(t)
			fault.set(t, e.rec)
			for _, req := range forwarded {
				before := counted(e.g.metrics.auditFails)
				begun := time.Now()
				err := req.do(t, c)
				var we *jsonrpc.Error
				if !errors.As(err, &we) || we.Code != CodeAuditUnavailable {
					t.Fatalf("%s: got %v, want a JSON-RPC error with code %d", req.name, err, CodeAuditUnavailable)
				}
				var data ErrorData
				if json.Unmarshal(we.Data, &data) != nil || data.Code != "audit_unavailable" || data.Ref == "" ||
					!strings.Contains(we.Message, "its audit record could not be written; try again later") {
					t.Errorf("%s: error %q data %s", req.name, we.Message, we.Data)
				}
				if waited := time.Since(begun); waited > 10*time.Second {
					t.Errorf("%s: refused after %s, want about the audit deadline", req.name, waited)
				}
				if n := len(p.requests()); n != 0 {
					t.Fatalf("%s: the backend received %d requests whose record was not written", req.name, n)
				}
				if counted(e.g.metrics.auditFails) <= before {
					t.Errorf("%s: audit failure not counted", req.name)
				}
			}
			for _, r := range e.rec.records() {
				if r.Kind == KindCall || r.Kind == KindPrompt || r.Kind == KindRead || r.Kind == KindOutcome {
					t.Errorf("record %s %s kept although the audit trail refused it", r.Kind, r.Data)
				}
			}
			// Once the audit trail answers again, so does the gateway.
			e.rec.failWith(nil)
			if err := forwarded[0].do(t, c); err != nil {
				t.Fatalf("after the audit trail healed: %v", err)
			}
			if n := len(p.requests()); n != 1 {
				t.Fatalf("the backend received %d requests, want 1", n)
			}
		})
	}
}

// TestAuditBeforeForward checks that the record of an allowed request is in the audit trail before the backend
// sees the request, and that its outcome follows under the same ref.
func TestAuditBeforeForward(t *testing.T) {
	e, p, c := probeEnv(t)
	for i, req := range forwarded {
		if err := req.do(t, c); err != nil {
			t.Fatalf("%s: %v", req.name, err)
		}
		seen := p.requests()
		if len(seen) != i+1 {
			t.Fatalf("%s: the backend received %d requests in all, want %d", req.name, len(seen), i+1)
		}
		var ref any
		for _, r := range seen[i] {
			if d := dataOf(r); r.Kind == req.kind && d[req.key] == req.item {
				ref = d["ref"]
				if r.Decision != audit.DecisionAllow || r.Actor != alice || len(r.Diagnostic) == 0 {
					t.Errorf("%s: record %+v", req.name, r)
				}
			}
		}
		if ref == nil {
			t.Fatalf("%s: the backend saw the request before its %s record was written", req.name, req.kind)
		}
		for _, r := range seen[i] {
			if r.Kind == KindOutcome && dataOf(r)["ref"] == ref {
				t.Fatalf("%s: an outcome was recorded before the backend saw the request", req.name)
			}
		}
		e.rec.find(t, req.name+" outcome", func(r audit.Record) bool {
			d := dataOf(r)
			return r.Kind == KindOutcome && d["ref"] == ref && d["status"] == statusOK && d[req.key] == req.item &&
				d["result_bytes"] != nil
		})
	}
	if n := counted(e.g.metrics.auditFails); n != 0 {
		t.Errorf("%v audit failures with a healthy audit trail", n)
	}
}

// counted is the value of a counter.
func counted(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// TestAuditBudgetRefusesCalls checks that a request whose record the controller refuses because the caller has
// spent its day's audit budget is refused with that reason, not as an unavailable trail, and never forwarded.
func TestAuditBudgetRefusesCalls(t *testing.T) {
	e, p, c := probeEnv(t)
	const spent = "your actions wrote 9000 bytes of audit records today, over the budget of 8192 bytes per identity and day"
	e.rec.failWith(func(_ context.Context, r audit.Record) error {
		if r.Decision == audit.DecisionAllow {
			return &audit.BudgetError{Message: spent, RetryAfter: time.Hour}
		}
		return nil
	})
	for _, req := range forwarded {
		err := req.do(t, c)
		var we *jsonrpc.Error
		if !errors.As(err, &we) || we.Code != CodeAuditBudget {
			t.Fatalf("%s: got %v, want a JSON-RPC error with code %d", req.name, err, CodeAuditBudget)
		}
		var data ErrorData
		if json.Unmarshal(we.Data, &data) != nil || data.Code != "audit_budget_exhausted" || !strings.Contains(we.Message, spent) {
			t.Errorf("%s: error %q data %s", req.name, we.Message, we.Data)
		}
	}
	if n := len(p.requests()); n != 0 {
		t.Fatalf("the backend received %d requests whose record was refused", n)
	}
	denied := 0
	for deadline := time.Now().Add(5 * time.Second); denied < len(forwarded) && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		denied = 0
		for _, r := range e.rec.records() {
			if r.Kind == KindDenied && strings.Contains(r.Reason, "audit_budget_exhausted") {
				denied++
			}
		}
	}
	if denied != len(forwarded) {
		t.Errorf("%d denial records name the audit budget, want %d", denied, len(forwarded))
	}
}
