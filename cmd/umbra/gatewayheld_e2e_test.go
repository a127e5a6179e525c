package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestGatewayHeldRecordSurvivesKills: a call under way through `umbra mcpgw` when `umbra dev` is killed with
// SIGKILL ends with an outcome record the gateway cannot send; the gateway holds it in its state store. The
// gateway is then killed with SIGKILL too. Once both are started again, the new gateway appends the held outcome,
// and the trail holds the call's record and exactly one outcome for it, and verifies.
func TestGatewayHeldRecordSurvivesKills(t *testing.T) {
	c := newCLI(t, 6*time.Minute)
	args, _ := devArgs(t, "data")
	dev := c.start("umbra dev ready", args...)
	admin := "data/admin.json"
	enroll := func(org, kind, name string) string { return c.enroll(admin, org, kind, name) }
	gw := enroll("acme", "gateway", "mcpgw")
	analyst := enroll("acme", "agent", "analyst")
	c.must("", "service", "grant", "--as", admin, "--service", "mcpgw", "--bind", gw, "--dial", analyst)
	config := `service: mcpgw
data: mcpgw-data
policies: |
  @id("analyst-all") permit (principal == Umbra::Identity::"` + analyst + `", action, resource);
backends:
  - name: slow
    trusted: true
    stdio:
      command: ["` + c.bin + `", "mcp", "sample-server", "--name", "slow", "--delay", "6s"]
`
	if err := os.WriteFile(filepath.Join(c.dir, "mcpgw.yaml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	gateway := c.start("umbra mcpgw ready", "mcpgw", "--as", "mcpgw.json", "--config", "mcpgw.yaml")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	connect := exec.Command(c.bin, "mcp", "connect", "--as", "analyst.json")
	connect.Dir = c.dir
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "1"}, nil).Connect(ctx, &mcp.CommandTransport{Command: connect}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	callCtx, stopCall := context.WithTimeout(ctx, 30*time.Second)
	defer stopCall()
	called := make(chan struct{})
	go func() {
		defer close(called)
		_, _ = cs.CallTool(callCtx, &mcp.CallToolParams{Name: "slow__echo", Arguments: map[string]any{"text": "held"}})
	}()
	// The call's own record is stored before the backend is called; then the controller and its router die.
	c.limit.Step("the call's record stored")
	for !strings.Contains(c.must("", "audit", "export", "--as", admin), `"kind":"mcp.call"`) {
		if ctx.Err() != nil {
			t.Fatal("the call's record was never stored")
		}
		time.Sleep(200 * time.Millisecond)
	}
	dev.kill()
	c.limit.Step("the outcome held")
	for !strings.Contains(gateway.errb.String(), "audit record held until the controller is reached") {
		if ctx.Err() != nil {
			t.Fatalf("the outcome was never held:\n%s", gateway.errb.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	gateway.kill()
	stopCall()
	<-called

	c.start("umbra dev ready", args...)
	gateway = c.start("umbra mcpgw ready", "mcpgw", "--as", "mcpgw.json", "--config", "mcpgw.yaml")
	if !strings.Contains(gateway.errb.String(), "audit records held by an earlier run") {
		t.Logf("the restarted gateway did not say it took held records before ready:\n%s", gateway.errb.String())
	}
	c.limit.Step("the held outcome appended")
	var call, outcome map[string]any
	var outcomes int
	for {
		call, outcome, outcomes = nil, nil, 0
		sc := bufio.NewScanner(strings.NewReader(c.must("", "audit", "export", "--as", admin)))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var r struct {
				Kind string `json:"kind"`
				Data struct {
					Detail map[string]any `json:"detail"` // what the gateway recorded
				} `json:"data"`
			}
			if json.Unmarshal(sc.Bytes(), &r) != nil {
				continue
			}
			switch r.Kind {
			case "mcp.call":
				call = r.Data.Detail
			case "mcp.outcome":
				outcome = r.Data.Detail
				outcomes++
			}
		}
		if outcome != nil || ctx.Err() != nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if call == nil || outcome == nil || outcomes != 1 {
		t.Fatalf("the trail holds call %v and %d outcomes (last %v); want the call and one outcome", call, outcomes, outcome)
	}
	if outcome["ref"] != call["ref"] || outcome["held_from"] == nil {
		t.Fatalf("the outcome %v is not the held outcome of call %v", outcome, call)
	}
	time.Sleep(3 * time.Second) // the gateway's next try, were the record still held
	if out := c.must("", "audit", "export", "--as", admin); strings.Count(out, `"kind":"mcp.outcome"`) != 1 {
		t.Fatalf("the held outcome was appended more than once:\n%s", out)
	}
	c.must("", "audit", "verify", "--as", admin)
}
