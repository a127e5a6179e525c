package controller_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/controllertest"
)

// TestRunWaitsForEverythingItStarted stops a controller that has open relay connections and a long-polling
// client, and checks that once Run has returned no goroutine of the controller is left.
func TestRunWaitsForEverythingItStarted(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a controller and a router")
	}
	env, err := controllertest.Start(controllertest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			env.Close()
		}
	})
	agent := env.NewAgent(t, "acme", "agent", "idler")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Two relay connections left open: one that said hello and then nothing, one in the middle of its hello.
	for _, hello := range []string{`{"mode":"send"}` + "\n", ""} {
		conn, err := agent.Dial(ctx, api.RelayService)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if hello != "" {
			if _, err := conn.Write([]byte(hello)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The agent follows the revocation feed and the session event feed: two long polls are in flight on the API
	// when the controller stops.
	if _, err := agent.SessionEvents(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // let the connections reach the relay

	if running := controllerGoroutines(); len(running) == 0 {
		t.Fatal("no goroutine of the controller seen while it runs: the check below would prove nothing")
	}
	stopped := make(chan struct{})
	go func() {
		env.Close()
		close(stopped)
	}()
	select {
	case <-stopped:
		closed = true
	case <-time.After(45 * time.Second):
		t.Fatal("the controller did not stop")
	}
	var left []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		left = controllerGoroutines()
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Fatalf("%d goroutines of the controller outlived Run:\n\n%s", len(left), strings.Join(left, "\n\n"))
	}
}

// controllerGoroutines returns the stacks of the goroutines (other than the caller's) that mention package
// controller or controller/relay: running their code, or started by it. The harness (controllertest) and the
// router it runs are not the controller's.
func controllerGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 { // this goroutine
			continue
		}
		if strings.Contains(g, "umbra-mesh/umbra/controller.") || strings.Contains(g, "umbra-mesh/umbra/controller/relay.") {
			out = append(out, g)
		}
	}
	return out
}
