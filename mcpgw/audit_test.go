package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
	"github.com/umbra-mesh/umbra/internal/testlimit"
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

// TestHeldUntilTheControllerIsReached: a record of what already happened (here the refusal of a call whose own
// record could not be written) whose append never reached the audit trail is held and appended once the trail
// can be reached, marked with the time it was first tried; one whose append failed otherwise (it may have been
// stored) is not tried again.
func TestHeldUntilTheControllerIsReached(t *testing.T) {
	e, p, c := probeEnv(t)
	e.rec.failWith(func(context.Context, audit.Record) error {
		return fmt.Errorf("dial umbra.controller: no router: %w", audit.ErrNotSent)
	})
	req := forwarded[0]
	if err := req.do(t, c); err == nil {
		t.Fatal("a call whose record was not sent was forwarded")
	}
	eventually(t, "the refusal's record held", func() bool { return e.g.held.Len() == 1 })
	time.Sleep(2 * heldRetry) // the worker tries it again and keeps it while it is not sent
	if e.g.held.Len() != 1 {
		t.Fatalf("%d held while the trail cannot be reached, want 1", e.g.held.Len())
	}
	e.rec.failWith(nil)
	held := e.rec.find(t, "the held refusal", func(r audit.Record) bool {
		return r.Kind == KindDenied && strings.Contains(string(r.Data), `"held_from"`)
	})
	if !strings.Contains(string(held.Data), `"ref"`) {
		t.Fatalf("held record lost its data: %s", held.Data)
	}
	eventually(t, "nothing held", func() bool { return e.g.held.Len() == 0 })

	// A record whose append may have been stored is not held.
	e.rec.failWith(func(context.Context, audit.Record) error { return errors.New("connection reset after the request") })
	if err := req.do(t, c); err == nil {
		t.Fatal("a call whose record was not confirmed was forwarded")
	}
	time.Sleep(heldRetry)
	denied := 0
	for _, r := range e.rec.records() {
		if r.Kind == KindDenied {
			denied++
		}
	}
	if denied != 1 || e.g.held.Len() != 0 || len(p.requests()) != 0 {
		t.Fatalf("%d refusal records, %d held, %d forwarded; want the held one only, stored once", denied, e.g.held.Len(), len(p.requests()))
	}
}

// A record held while the controller cannot be reached outlives the gateway: kept in its state store when it
// stops, it is appended, once, by the next gateway on that store.
func TestHeldOutlivesTheGateway(t *testing.T) {
	testlimit.Start(t, 2*time.Minute)
	js := natsdtest.Connect(t, natsdtest.Start(t), "mcpgw-test")
	srv, _ := newTestServer("ext")
	run := func(rec *recorder) (*Gateway, func()) {
		b, _ := inMemory("ext", srv, false)
		g, err := New(Config{Backends: []Backend{b}, Policies: allowAcme, State: js, BucketPrefix: "test_mcpgw_",
			Registry: prometheus.NewRegistry(), Identify: headerIdentity, Auditor: rec, AuditTimeout: 300 * time.Millisecond,
			Admins: []spiffeid.ID{spiffeid.RequireFromString(adminID)},
			Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- g.Run(ctx) }()
		select {
		case <-g.Ready():
		case <-time.After(testDeadline):
			t.Fatal("gateway not ready")
		}
		return g, func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(testDeadline):
				t.Fatal("the gateway did not stop")
			}
		}
	}
	unreachable := &recorder{t: t}
	unreachable.failWith(func(context.Context, audit.Record) error {
		return fmt.Errorf("dial umbra.controller: no router: %w", audit.ErrNotSent)
	})
	g1, stop1 := run(unreachable)
	// Besides this one, the first gateway holds the records of the tool definitions it pinned.
	g1.outbox.Append(context.Background(), audit.Record{Kind: KindDenied, Actor: alice, Data: json.RawMessage(`{"ref":"r1"}`)})
	stop1()
	held := g1.held.Len() // the pins' records may still have been on their way before the gateway stopped
	if held == 0 || g1.held.Unkept() != 0 {
		t.Fatalf("%d records held, %d of them not in the state store", held, g1.held.Unkept())
	}

	rec := &recorder{t: t}
	g2, stop2 := run(rec)
	defer stop2()
	got := rec.find(t, "the record held by the first gateway", func(r audit.Record) bool {
		return r.Kind == KindDenied && strings.Contains(string(r.Data), `"held_from"`)
	})
	if !strings.Contains(string(got.Data), `"ref":"r1"`) || got.Actor != alice {
		t.Fatalf("held record changed: %+v", got)
	}
	eventually(t, "nothing held", func() bool { return g2.held.Len() == 0 })
	time.Sleep(2 * heldRetry)
	denied, fromFirst := 0, 0
	for _, r := range rec.records() {
		if strings.Contains(string(r.Data), `"held_from"`) {
			fromFirst++
		}
		if r.Kind == KindDenied {
			denied++
		}
	}
	if denied != 1 || fromFirst != held {
		t.Fatalf("the second gateway appended the refusal %d times and %d held records; want it once, and all %d held", denied, fromFirst, held)
	}
}

// While a record is held (the controller could not be reached), the audit worker holds the records queued after it
// without a try of their own, so that it is not held up one try per record; once the controller can be reached
// they reach the trail in the order they happened, each once.
func TestQueuedRecordsHeldBehind(t *testing.T) {
	e, _, _ := probeEnv(t)
	var mu sync.Mutex
	tried := map[string]int{}
	var unreachable atomic.Bool
	unreachable.Store(true)
	e.rec.failWith(func(_ context.Context, r audit.Record) error {
		if r.Kind != KindDenied {
			return nil
		}
		var d struct{ Ref string }
		json.Unmarshal(r.Data, &d)
		mu.Lock()
		tried[d.Ref]++
		mu.Unlock()
		if unreachable.Load() {
			return fmt.Errorf("dial umbra.controller: no router: %w", audit.ErrNotSent)
		}
		return nil
	})
	const n = 20
	for i := range n {
		e.g.record(context.Background(), audit.Record{Kind: KindDenied, Actor: alice, Data: json.RawMessage(fmt.Sprintf(`{"ref":"q%02d"}`, i))})
	}
	eventually(t, "every record held", func() bool { return e.g.held.Len() == n })
	mu.Lock()
	for i := 1; i < n; i++ {
		if ref := fmt.Sprintf("q%02d", i); tried[ref] != 0 {
			mu.Unlock()
			t.Fatalf("record %s was tried %d times while the one before it was held", ref, tried[ref])
		}
	}
	mu.Unlock()
	unreachable.Store(false)
	eventually(t, "nothing held", func() bool { return e.g.held.Len() == 0 })
	var refs []string
	for _, r := range e.rec.records() {
		if r.Kind == KindDenied {
			var d struct{ Ref string }
			json.Unmarshal(r.Data, &d)
			refs = append(refs, d.Ref)
		}
	}
	if len(refs) != n {
		t.Fatalf("%d records stored, want %d: %v", len(refs), n, refs)
	}
	for i, ref := range refs {
		if ref != fmt.Sprintf("q%02d", i) {
			t.Fatalf("stored in the order %v", refs)
		}
	}
}

// onceRecorder appends records under their ID as the controller does (audit.OnceAppender, audit.HeldFinder), and
// loses the answer to the first try of every record of kind lose, before storing it.
type onceRecorder struct {
	*recorder
	lose string
	mu   sync.Mutex
	ids  map[string]bool // tried; true once stored
}

func (o *onceRecorder) AppendOnce(ctx context.Context, e audit.HeldRecord) error {
	if err := e.Sending(time.Now()); err != nil {
		return fmt.Errorf("%w: %w", audit.ErrNotSent, err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	stored, tried := o.ids[e.ID]
	switch {
	case stored:
		return nil // a repeat, answered with the record stored first
	case !tried && e.Record.Kind == o.lose:
		o.ids[e.ID] = false
		return errors.New("connection reset: the answer was lost")
	}
	o.ids[e.ID] = true
	return o.recorder.Append(ctx, e.Record)
}

func (o *onceRecorder) FindHeld(_ context.Context, e audit.HeldRecord) (bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ids[e.ID], nil
}

// A record of what already happened whose answer was lost is held under its ID, not lost: sent again within the
// retry window, it is stored once. Records queued after it are not held behind it.
func TestLostAnswerHeldUnderItsID(t *testing.T) {
	testlimit.Start(t, 2*time.Minute)
	srv, _ := newTestServer("ext")
	b, _ := inMemory("ext", srv, false)
	rec := &onceRecorder{recorder: &recorder{t: t}, lose: KindDenied, ids: map[string]bool{}}
	g, err := New(Config{Backends: []Backend{b}, Policies: allowAcme, Registry: prometheus.NewRegistry(), Identify: headerIdentity,
		Auditor: rec, AuditTimeout: 300 * time.Millisecond, Admins: []spiffeid.ID{spiffeid.RequireFromString(adminID)},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	g.record(context.Background(), audit.Record{Kind: KindDenied, Actor: alice, Data: json.RawMessage(`{"ref":"r1"}`)})
	g.record(context.Background(), audit.Record{Kind: KindOutcome, Actor: alice, Data: json.RawMessage(`{"ref":"r2"}`)})
	got := rec.find(t, "the refusal, sent again", func(r audit.Record) bool { return r.Kind == KindDenied })
	if !strings.Contains(string(got.Data), `"ref":"r1"`) {
		t.Fatalf("stored %s", got.Data)
	}
	// The record queued after it was not held behind it: a lost answer says nothing of whether the controller
	// can be reached, and the answer is certain only minutes later.
	var refs []string
	for _, r := range rec.records() {
		var d struct{ Ref string }
		if json.Unmarshal(r.Data, &d) == nil && (d.Ref == "r1" || d.Ref == "r2") {
			refs = append(refs, d.Ref)
		}
	}
	if len(refs) != 2 || refs[0] != "r2" {
		t.Fatalf("stored %v; want the record queued after the refusal stored first, at once", refs)
	}
	eventually(t, "nothing held", func() bool { return g.held.Len() == 0 })
	time.Sleep(heldRetry)
	n := 0
	for _, r := range rec.records() {
		if r.Kind == KindDenied {
			n++
		}
	}
	rec.mu.Lock()
	tries := len(rec.ids)
	rec.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d refusal records stored, want 1", n)
	}
	if tries < 1 {
		t.Fatal("no record was appended under an ID of its own")
	}
}
