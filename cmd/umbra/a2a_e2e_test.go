package main

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	a2ago "github.com/a2aproject/a2a-go/a2a"
	"github.com/a2aproject/a2a-go/a2aclient"
	"github.com/a2aproject/a2a-go/a2aclient/agentcard"
	"github.com/a2aproject/a2a-go/a2asrv"
	"github.com/a2aproject/a2a-go/a2asrv/eventqueue"
)

// echoA2A is an A2A agent as another language would run it behind its own HTTP server: a message gets
// "echo: <text>" back; "task <text>" runs a task whose events are streamed.
type echoA2A struct{}

func (echoA2A) Execute(ctx context.Context, rc *a2asrv.RequestContext, q eventqueue.Queue) error {
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
	if err := q.Write(ctx, a2ago.NewArtifactEvent(rc, a2ago.TextPart{Text: "echo: " + rest})); err != nil {
		return err
	}
	done := a2ago.NewStatusUpdateEvent(rc, a2ago.TaskStateCompleted, nil)
	done.Final = true
	return q.Write(ctx, done)
}

func (echoA2A) Cancel(context.Context, *a2asrv.RequestContext, eventqueue.Queue) error { return nil }

// TestA2ABridge: a stock A2A server of acme's behind `umbra a2a serve`, and the official a2a-go client of globex's
// through `umbra a2a bridge`, talk across the two organisations under the session's contract, which refuses
// tasks/cancel; the bridge listens on loopback only.
func TestA2ABridge(t *testing.T) {
	c := newCLI(t, 5*time.Minute)
	if _, errs, err := c.run("", "a2a", "bridge", "--as", "x.json", "--ad", "x", "--listen", "0.0.0.0:8090"); err == nil ||
		!strings.Contains(errs, "loopback") {
		t.Fatalf("a2a bridge on a non-loopback address: err=%v %s", err, errs)
	}
	args, _ := devArgs(t, "data")
	c.start("umbra dev ready", args...)
	admin := "data/admin.json"
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(c.dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	enroll := func(orgAdmin, org, name string) string {
		write(name+".token", c.must("", "identity", "create", "--as", orgAdmin, "--org", org, "--name", name))
		c.must("", "enroll", "--token", name+".token", "--out", name+".json")
		return name + ".json"
	}
	for _, org := range []string{"acme", "globex"} {
		write(org+"-admin.token", c.must("", "org", "create", "--as", admin, "--name", org))
		c.must("", "enroll", "--token", org+"-admin.token", "--out", org+"-admin.json")
	}
	echo, buyer := enroll("acme-admin.json", "acme", "echo"), enroll("globex-admin.json", "globex", "buyer")
	c.must("", "workgroup", "create", "--as", "acme-admin.json", "--name", "a2a", "--invite", "globex")
	c.must("", "workgroup", "accept", "--as", "globex-admin.json", "acme/a2a")
	c.must("", "workgroup", "member", "add", "--as", "acme-admin.json", "a2a", "spiffe://umbra.local/acme/agent/echo")
	c.must("", "workgroup", "member", "add", "--as", "globex-admin.json", "acme/a2a", "spiffe://umbra.local/globex/agent/buyer")
	write("card.json", `{"name":"Echo","description":"says it back","version":"1.0","skills":[{"id":"echo","name":"Echo"}],"message_types":["a2a.*"]}`)
	write("terms.json", `{"max_duration":"1h","max_messages":20,"max_envelope_bytes":65536,"allowed_message_types":[`+
		`"a2a.message.send","a2a.message.send.result","a2a.message.stream","a2a.message.stream.*"]}`)
	ad := strings.TrimSpace(c.must("", "advertise", "--as", echo, "--card", "card.json", "--terms", "terms.json", "--workgroup", "a2a"))

	// acme's agent: an A2A server on loopback, made reachable only through its sessions.
	local := httptest.NewServer(a2asrv.NewJSONRPCHandler(a2asrv.NewHandler(echoA2A{})))
	t.Cleanup(local.Close)
	c.start("answering A2A calls", "a2a", "serve", "--as", echo, "--endpoint", local.URL+"/", "--interval", "200ms")
	port := strconv.Itoa(freePort(t))
	c.start("a2a bridge on", "a2a", "bridge", "--as", buyer, "--ad", ad, "--listen", "127.0.0.1:"+port)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := "http://127.0.0.1:" + port
	card, err := agentcard.DefaultResolver.Resolve(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	if card.Name != "Echo" || card.URL != base+"/" {
		t.Fatalf("card %+v", card)
	}
	client, err := a2aclient.NewFromCard(ctx, card)
	if err != nil {
		t.Fatal(err)
	}
	res, err := client.SendMessage(ctx, &a2ago.MessageSendParams{Message: a2ago.NewMessage(a2ago.MessageRoleUser, a2ago.TextPart{Text: "hi"})})
	if err != nil {
		t.Fatalf("message/send: %v", err)
	}
	if msg, ok := res.(*a2ago.Message); !ok || len(msg.Parts) != 1 || msg.Parts[0].(a2ago.TextPart).Text != "echo: hi" {
		t.Fatalf("message/send answered %#v", res)
	}
	var taskID a2ago.TaskID
	var events int
	for ev, err := range client.SendStreamingMessage(ctx, &a2ago.MessageSendParams{
		Message: a2ago.NewMessage(a2ago.MessageRoleUser, a2ago.TextPart{Text: "task x"})}) {
		if err != nil {
			t.Fatalf("message/stream: %v", err)
		}
		events++
		if task, ok := ev.(*a2ago.Task); ok {
			taskID = task.ID
		}
	}
	if events != 3 || taskID == "" {
		t.Fatalf("message/stream gave %d events (task %q), want the task, its artifact and completed", events, taskID)
	}
	_, err = client.CancelTask(ctx, &a2ago.TaskIDParams{ID: taskID})
	if err == nil || !strings.Contains(err.Error(), "type_not_allowed") {
		t.Fatalf("tasks/cancel: %v, want the contract's type_not_allowed", err)
	}
}
