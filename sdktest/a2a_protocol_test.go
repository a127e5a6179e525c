package sdktest

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	a2ago "github.com/a2aproject/a2a-go/a2a"
	"github.com/a2aproject/a2a-go/a2aclient"
	"github.com/a2aproject/a2a-go/a2aclient/agentcard"
	"github.com/a2aproject/a2a-go/a2asrv"
	"github.com/a2aproject/a2a-go/a2asrv/eventqueue"

	"github.com/umbra-mesh/umbra/agentsdk/a2a"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// echoExecutor is a stock a2a-go agent: a message gets "echo: <text>" back; "task <text>" runs a task
// (submitted, working, an artifact "echo: <text>", completed).
type echoExecutor struct{}

func (echoExecutor) Execute(ctx context.Context, rc *a2asrv.RequestContext, q eventqueue.Queue) error {
	text := ""
	for _, p := range rc.Message.Parts {
		if tp, ok := p.(a2ago.TextPart); ok {
			text += tp.Text
		}
	}
	rest, isTask := strings.CutPrefix(text, "task ")
	if !isTask {
		return q.Write(ctx, a2ago.NewMessage(a2ago.MessageRoleAgent, a2ago.TextPart{Text: "echo: " + text}))
	}
	if rc.StoredTask == nil {
		if err := q.Write(ctx, a2ago.NewSubmittedTask(rc, rc.Message)); err != nil {
			return err
		}
	}
	if err := q.Write(ctx, a2ago.NewStatusUpdateEvent(rc, a2ago.TaskStateWorking, nil)); err != nil {
		return err
	}
	if err := q.Write(ctx, a2ago.NewArtifactEvent(rc, a2ago.TextPart{Text: "echo: " + rest})); err != nil {
		return err
	}
	done := a2ago.NewStatusUpdateEvent(rc, a2ago.TaskStateCompleted, nil)
	done.Final = true
	return q.Write(ctx, done)
}

func (echoExecutor) Cancel(ctx context.Context, rc *a2asrv.RequestContext, q eventqueue.Queue) error {
	ev := a2ago.NewStatusUpdateEvent(rc, a2ago.TaskStateCanceled, nil)
	ev.Final = true
	return q.Write(ctx, ev)
}

func textOf(parts a2ago.ContentParts) string {
	var b strings.Builder
	for _, p := range parts {
		if tp, ok := p.(a2ago.TextPart); ok {
			b.WriteString(tp.Text)
		}
	}
	return b.String()
}

// TestA2AProtocol drives the official a2a-go client of one organisation against a stock a2a-go agent of another,
// through the relay: the card is found where A2A clients look for it, message/send, message/stream and tasks/get
// are answered under the session's contract, tasks/cancel (which the contract does not allow) is refused with a
// JSON-RPC error naming the rule, and the session's audit holds every A2A envelope and the refusal.
func TestA2AProtocol(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	w := newPricingWorld(t, defaultTerms())
	step := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
		t.Cleanup(cancel)
		return ctx
	}

	// acme's agent offers A2A calls, but not tasks/cancel.
	card := workgroups.AgentCard{Name: "Echo", Description: "echoes what it is told", Version: "2.1",
		Skills:       []workgroups.Skill{{ID: "echo", Name: "Echo", Description: "says it back", Tags: []string{"echo"}}},
		MessageTypes: []string{"a2a.*"}}
	terms := workgroups.Terms{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 40, MaxEnvelopeBytes: 64 << 10,
		AllowedMessageTypes: []string{"a2a.message.send", "a2a.message.send.result", "a2a.message.stream",
			"a2a.message.stream.*", "a2a.tasks.get", "a2a.tasks.get.result"}}
	ad, err := w.quoter.Advertise(step(), card, terms, w.wg)
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stopServing := context.WithCancel(context.Background())
	served := make(chan error, 1)
	srv := a2a.NewServer(a2asrv.NewJSONRPCHandler(a2asrv.NewHandler(echoExecutor{})), a2a.ServerConfig{})
	go func() { served <- w.quoter.Serve(serveCtx, 200*time.Millisecond, srv.Handle) }()
	t.Cleanup(func() {
		stopServing()
		<-served
	})

	// globex's buyer finds it by discovery and serves it to A2A clients on a loopback address.
	found, err := w.buyer.Discover(step(), api.DiscoverRequest{Skill: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	var echoAd workgroups.Advertisement
	for _, f := range found {
		if f.ID == ad.ID {
			echoAd = f
		}
	}
	if echoAd.ID.IsZero() {
		t.Fatalf("the buyer does not discover the A2A agent: %+v", found)
	}
	proxy, err := a2a.NewProxy(a2a.ProxyConfig{Agent: w.buyer, Advertisement: echoAd, CallTimeout: 40 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(proxy)
	t.Cleanup(func() {
		hs.Close()
		proxy.Close()
	})

	// The unmodified a2a-go client: card resolution, then the JSON-RPC transport the card names.
	resolved, err := agentcard.NewResolver(hs.Client()).Resolve(step(), hs.URL)
	if err != nil {
		t.Fatalf("resolve the agent card at %s%s: %v", hs.URL, a2a.CardPath, err)
	}
	if resolved.Name != "Echo" || resolved.Version != "2.1" || resolved.URL != hs.URL+"/" ||
		len(resolved.Skills) != 1 || resolved.Skills[0].ID != "echo" || !resolved.Capabilities.Streaming {
		t.Fatalf("agent card %+v, want the advertisement's card with the proxy's URL", resolved)
	}
	client, err := a2aclient.NewFromCard(step(), resolved, a2aclient.WithJSONRPCTransport(hs.Client()))
	if err != nil {
		t.Fatal(err)
	}

	// message/send
	res, err := client.SendMessage(step(), &a2ago.MessageSendParams{
		Message: a2ago.NewMessage(a2ago.MessageRoleUser, a2ago.TextPart{Text: "hello"})})
	if err != nil {
		t.Fatalf("message/send: %v", err)
	}
	if msg, ok := res.(*a2ago.Message); !ok || textOf(msg.Parts) != "echo: hello" {
		t.Fatalf("message/send answered %#v, want the message echo: hello", res)
	}

	// message/stream
	var events []a2ago.Event
	var taskID a2ago.TaskID
	for ev, err := range client.SendStreamingMessage(step(), &a2ago.MessageSendParams{
		Message: a2ago.NewMessage(a2ago.MessageRoleUser, a2ago.TextPart{Text: "task widgets"})}) {
		if err != nil {
			t.Fatalf("message/stream after %d events: %v", len(events), err)
		}
		events = append(events, ev)
		if task, ok := ev.(*a2ago.Task); ok {
			taskID = task.ID
		}
	}
	artifact := ""
	for _, ev := range events {
		if a, ok := ev.(*a2ago.TaskArtifactUpdateEvent); ok {
			artifact = textOf(a.Artifact.Parts)
		}
	}
	last, _ := events[len(events)-1].(*a2ago.TaskStatusUpdateEvent)
	if len(events) < 4 || taskID == "" || artifact != "echo: widgets" || last == nil || !last.Final ||
		last.Status.State != a2ago.TaskStateCompleted {
		t.Fatalf("message/stream gave %d events (task %q, artifact %q, last %#v), want the task, working, the artifact and completed",
			len(events), taskID, artifact, events[len(events)-1])
	}

	// tasks/get
	task, err := client.GetTask(step(), &a2ago.TaskQueryParams{ID: taskID})
	if err != nil {
		t.Fatalf("tasks/get: %v", err)
	}
	if task.ID != taskID || task.Status.State != a2ago.TaskStateCompleted {
		t.Fatalf("tasks/get answered %+v, want task %s completed", task, taskID)
	}

	// tasks/cancel: the contract does not allow it.
	_, err = client.CancelTask(step(), &a2ago.TaskIDParams{ID: taskID})
	if err == nil || !strings.Contains(err.Error(), "type_not_allowed") || !strings.Contains(err.Error(), "tasks/cancel") ||
		!strings.Contains(err.Error(), "contract") {
		t.Fatalf("tasks/cancel: %v, want a JSON-RPC error naming the contract rule type_not_allowed", err)
	}
	t.Logf("tasks/cancel refused: %v", err)

	// The session's audit: every call and answer an envelope, and the refusal recorded.
	sess := proxy.Session()
	if sess == nil {
		t.Fatal("the proxy has no session after its calls")
	}
	trail, err := w.acme.Controller().AuditSession(step(), sess.ID())
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	requests := map[string]string{}
	for _, h := range trail.Envelopes {
		count[h.Type]++
		if _, ok := a2a.Method(h.Type); ok {
			if h.From != w.buyer.ID() {
				t.Errorf("call %s %s from %s, want the buyer", h.ID, h.Type, h.From)
			}
			requests[h.ID.String()] = h.Type
		}
	}
	for _, h := range trail.Envelopes {
		if _, ok := a2a.Method(h.Type); ok {
			continue
		}
		if call := requests[h.CorrelationID]; h.From != w.quoter.ID() || call == "" || !strings.HasPrefix(h.Type, call+".") {
			t.Errorf("answer %s %s from %s correlates to %q (a call of type %q), want the quoter answering that call",
				h.ID, h.Type, h.From, h.CorrelationID, call)
		}
	}
	want := map[string]int{"a2a.message.send": 1, "a2a.message.send.result": 1, "a2a.message.stream": 1,
		"a2a.message.stream.result": 1, "a2a.tasks.get": 1, "a2a.tasks.get.result": 1}
	for typ, n := range want {
		if count[typ] != n {
			t.Errorf("the audit holds %d envelopes of type %s, want %d (all: %v)", count[typ], typ, n, count)
		}
	}
	if n := count["a2a.message.stream.event"] + 1; n != len(events) {
		t.Errorf("the stream's %d events travelled as %d envelopes", len(events), n)
	}
	if count["a2a.tasks.cancel"] != 0 {
		t.Errorf("a refused call was delivered: %v", count)
	}
	refused := false
	for _, raw := range trail.Records {
		var r auditEntry
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatalf("audit record %s: %v", raw, err)
		}
		var h workgroups.Header
		_ = json.Unmarshal(r.Data, &h)
		if r.Kind == "envelope.rejected" && h.Type == "a2a.tasks.cancel" && r.Actor == w.buyer.ID().String() &&
			strings.HasPrefix(r.Reason, string(workgroups.ViolationTypeNotAllowed)) {
			refused = true
		}
	}
	if !refused {
		t.Errorf("the session's audit has no envelope.rejected record of the buyer's a2a.tasks.cancel")
	}
}

// TestA2AProtocolMessageBudget: a session's max_messages counts A2A calls and answers alike. A call with no room
// left for its answer fails at once with a JSON-RPC error naming the rule, and is not sent: the provider never
// runs a call whose answer the relay would refuse.
func TestA2AProtocolMessageBudget(t *testing.T) {
	testlimit.Start(t, 3*time.Minute)
	w := newPricingWorld(t, defaultTerms())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	card := workgroups.AgentCard{Name: "Echo", Version: "1", MessageTypes: []string{"a2a.*"}}
	terms := workgroups.Terms{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 3, MaxEnvelopeBytes: 64 << 10,
		AllowedMessageTypes: []string{"a2a.message.send", "a2a.message.send.result"}}
	ad, err := w.quoter.Advertise(ctx, card, terms, w.wg)
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stopServing := context.WithCancel(context.Background())
	served := make(chan error, 1)
	srv := a2a.NewServer(a2asrv.NewJSONRPCHandler(a2asrv.NewHandler(echoExecutor{})), a2a.ServerConfig{})
	go func() { served <- w.quoter.Serve(serveCtx, 200*time.Millisecond, srv.Handle) }()
	t.Cleanup(func() {
		stopServing()
		<-served
	})
	proxy, err := a2a.NewProxy(a2a.ProxyConfig{Agent: w.buyer, Advertisement: ad, CallTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(proxy)
	t.Cleanup(func() {
		hs.Close()
		proxy.Close()
	})
	client, err := a2aclient.NewFromCard(ctx, proxy.Card(hs.URL+"/"), a2aclient.WithJSONRPCTransport(hs.Client()))
	if err != nil {
		t.Fatal(err)
	}
	send := func(text string) (time.Duration, error) {
		start := time.Now()
		_, err := client.SendMessage(ctx, &a2ago.MessageSendParams{Message: a2ago.NewMessage(a2ago.MessageRoleUser, a2ago.TextPart{Text: text})})
		return time.Since(start), err
	}
	if _, err := send("one"); err != nil {
		t.Fatalf("first call: %v", err)
	}
	// The call would be envelope 3 and its answer envelope 4.
	took, err := send("two")
	if err == nil || !strings.Contains(err.Error(), "max_messages") {
		t.Fatalf("second call: %v, want an error naming max_messages", err)
	}
	if took > 30*time.Second {
		t.Errorf("the second call failed only after %s: it waited for its call timeout", took)
	}
	t.Logf("second call: %v", err)
	if _, err := send("three"); err == nil || !strings.Contains(err.Error(), "max_messages") {
		t.Fatalf("third call: %v, want the contract's refusal", err)
	}
	trail, err := w.acme.Controller().AuditSession(ctx, proxy.Session().ID())
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, h := range trail.Envelopes {
		types = append(types, h.Type)
	}
	if len(types) != 2 || types[0] != "a2a.message.send" || types[1] != "a2a.message.send.result" {
		t.Errorf("the session's envelopes are %v, want the first call and its answer only", types)
	}
}
