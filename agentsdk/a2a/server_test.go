package a2a

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	a2ago "github.com/a2aproject/a2a-go/a2a"
	"github.com/a2aproject/a2a-go/a2asrv"
	"github.com/a2aproject/a2a-go/a2asrv/eventqueue"

	"github.com/umbra-mesh/umbra/workgroups"
)

// echoAgent answers a message with "echo: <text>"; a message "task <text>" runs a task instead: submitted,
// working, an artifact, completed (each a streamed event), pausing gap before the artifact.
type echoAgent struct {
	runs atomic.Int32
	gap  time.Duration
}

func (e *echoAgent) Execute(ctx context.Context, rc *a2asrv.RequestContext, q eventqueue.Queue) error {
	e.runs.Add(1)
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
	time.Sleep(e.gap)
	if err := q.Write(ctx, a2ago.NewArtifactEvent(rc, a2ago.TextPart{Text: "echo: " + rest})); err != nil {
		return err
	}
	done := a2ago.NewStatusUpdateEvent(rc, a2ago.TaskStateCompleted, nil)
	done.Final = true
	return q.Write(ctx, done)
}

func (e *echoAgent) Cancel(ctx context.Context, rc *a2asrv.RequestContext, q eventqueue.Queue) error {
	ev := a2ago.NewStatusUpdateEvent(rc, a2ago.TaskStateCanceled, nil)
	ev.Final = true
	return q.Write(ctx, ev)
}

func TestMessageTypes(t *testing.T) {
	seen := map[string]bool{}
	for _, m := range Methods() {
		typ, err := MessageType(m)
		if err != nil {
			t.Fatalf("MessageType(%q): %v", m, err)
		}
		if err := workgroups.ValidateMessageType(typ); err != nil {
			t.Errorf("MessageType(%q) = %q: %v", m, typ, err)
		}
		for _, suffix := range []string{ResultSuffix, EventSuffix} {
			if err := workgroups.ValidateMessageType(typ + suffix); err != nil {
				t.Errorf("answer type of %q: %v", m, err)
			}
		}
		if back, ok := Method(typ); !ok || back != m {
			t.Errorf("Method(%q) = %q, %v; want %q", typ, back, ok, m)
		}
		if seen[typ] {
			t.Errorf("two methods map to %q", typ)
		}
		seen[typ] = true
	}
	if typ, _ := MessageType("message/send"); typ != "a2a.message.send" {
		t.Errorf(`MessageType("message/send") = %q`, typ)
	}
	for _, bad := range []string{"", "message/Send", "tasks/list", "a2a.message.send"} {
		if typ, err := MessageType(bad); err == nil {
			t.Errorf("MessageType(%q) = %q, want an error", bad, typ)
		}
	}
	if m, ok := Method("a2a.message.send.result"); ok {
		t.Errorf("an answer type carries method %q", m)
	}
}

type sent struct {
	typ     string
	payload []byte
	at      time.Time
}

// collect answers one call through srv and returns the envelopes it sent.
func collect(t *testing.T, srv *Server, method, body string) []sent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	typ, err := MessageType(method)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var out []sent
	reply := func(_ context.Context, typ string, payload []byte) error {
		mu.Lock()
		defer mu.Unlock()
		out = append(out, sent{typ, payload, time.Now()})
		return nil
	}
	if err := srv.answer(ctx, typ, method, []byte(body), reply); err != nil {
		t.Fatalf("answer %s: %v", method, err)
	}
	return out
}

func call(id, method, params string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%q,"method":%q,"params":%s}`, id, method, params)
}

func message(text string) string {
	return fmt.Sprintf(`{"message":{"kind":"message","messageId":"m-%d","role":"user","parts":[{"kind":"text","text":%q}]}}`,
		time.Now().UnixNano(), text)
}

type rpcResponse struct {
	ID     string          `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *rpcError       `json:"error"`
}

func decode(t *testing.T, b []byte) rpcResponse {
	t.Helper()
	var r rpcResponse
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("answer %q: %v", b, err)
	}
	return r
}

func TestServerAnswersOneResult(t *testing.T) {
	agent := &echoAgent{}
	srv := NewServer(a2asrv.NewJSONRPCHandler(a2asrv.NewHandler(agent)), ServerConfig{})
	out := collect(t, srv, "message/send", call("1", "message/send", message("hi")))
	if len(out) != 1 || out[0].typ != "a2a.message.send.result" {
		t.Fatalf("answers %+v, want one a2a.message.send.result", out)
	}
	r := decode(t, out[0].payload)
	ev, err := a2ago.UnmarshalEventJSON(r.Result)
	if err != nil || r.ID != "1" {
		t.Fatalf("answer %s: id %q, %v", out[0].payload, r.ID, err)
	}
	msg, ok := ev.(*a2ago.Message)
	if !ok || len(msg.Parts) != 1 || msg.Parts[0].(a2ago.TextPart).Text != "echo: hi" {
		t.Fatalf("answer %s, want the message echo: hi", out[0].payload)
	}
}

func TestServerStreamsEventsThenResult(t *testing.T) {
	agent := &echoAgent{gap: 300 * time.Millisecond}
	srv := NewServer(a2asrv.NewJSONRPCHandler(a2asrv.NewHandler(agent)), ServerConfig{Hold: 50 * time.Millisecond})
	start := time.Now()
	out := collect(t, srv, "message/stream", call("7", "message/stream", message("task widgets")))
	if len(out) < 3 {
		t.Fatalf("%d answers, want the task, its updates and its artifact: %+v", len(out), out)
	}
	for i, s := range out {
		want := "a2a.message.stream.event"
		if i == len(out)-1 {
			want = "a2a.message.stream.result"
		}
		if s.typ != want {
			t.Errorf("answer %d has type %s, want %s", i, s.typ, want)
		}
		if r := decode(t, s.payload); r.Error != nil || r.ID != "7" {
			t.Errorf("answer %d: %s", i, s.payload)
		}
	}
	// The events before the pause went out before it ended: a stream is not held back to its end.
	if early := out[0].at.Sub(start); early >= agent.gap {
		t.Errorf("the first event went out %s after the call, not before the agent's %s pause", early, agent.gap)
	}
	last, err := a2ago.UnmarshalEventJSON(decode(t, out[len(out)-1].payload).Result)
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := last.(*a2ago.TaskStatusUpdateEvent); !ok || !st.Final || st.Status.State != a2ago.TaskStateCompleted {
		t.Errorf("the result is %T %+v, want the final completed status", last, last)
	}
}

func TestServerRunsOnlyTheEnvelopesMethod(t *testing.T) {
	agent := &echoAgent{}
	srv := NewServer(a2asrv.NewJSONRPCHandler(a2asrv.NewHandler(agent)), ServerConfig{})
	// The contract allowed a2a.tasks.get; the body asks for message/send.
	out := collect(t, srv, "tasks/get", call("3", "message/send", message("sneak")))
	if len(out) != 1 || out[0].typ != "a2a.tasks.get.result" {
		t.Fatalf("answers %+v, want one a2a.tasks.get.result", out)
	}
	if r := decode(t, out[0].payload); r.Error == nil || r.Error.Code != codeInvalidRequest || r.ID != "3" {
		t.Errorf("answer %s, want an invalid request error", out[0].payload)
	}
	out = collect(t, srv, "message/send", `{"not json-rpc"`)
	if r := decode(t, out[0].payload); len(out) != 1 || r.Error == nil || r.Error.Code != codeParseError {
		t.Errorf("answers %+v, want one parse error", out)
	}
	if n := agent.runs.Load(); n != 0 {
		t.Errorf("the agent ran %d times", n)
	}
}

func TestEventsRoundTrip(t *testing.T) {
	in := [][]byte{[]byte(`{"a":1}`), []byte("two\nlines"), []byte(`{"b":2}`)}
	w := &recorder{}
	for _, d := range in {
		if err := writeEvent(w, d); err != nil {
			t.Fatal(err)
		}
	}
	var got [][]byte
	err := readEvents(strings.NewReader(": comment\n"+w.b.String()), func(d []byte) error {
		got = append(got, d)
		return nil
	})
	if err != nil || len(got) != len(in) {
		t.Fatalf("read %q, %v", got, err)
	}
	for i := range in {
		if string(got[i]) != string(in[i]) {
			t.Errorf("event %d: %q, want %q", i, got[i], in[i])
		}
	}
}
