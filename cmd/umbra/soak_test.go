package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// crashMarkers are what the Go runtime prints when a process dies of a fault or an unrecovered panic.
var crashMarkers = []string{"fatal error:", "unexpected fault address", "SIGSEGV", "panic:", "goroutine 1 ["}

func crashed(stderr string) string {
	for _, m := range crashMarkers {
		if i := strings.Index(stderr, m); i >= 0 {
			end := min(len(stderr), i+400)
			return stderr[i:end]
		}
	}
	return ""
}

// restartCycles is how many kill -9 / restart cycles TestKillRestartCycles runs: 2 by default, which CI
// runs; UMBRA_RESTART_CYCLES=50 is the soak recorded in docs/benchmarks.md.
func restartCycles(t *testing.T) int {
	s := os.Getenv("UMBRA_RESTART_CYCLES")
	if s == "" {
		return 2
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("UMBRA_RESTART_CYCLES=%q: want a positive number", s)
	}
	return n
}

// TestKillRestartCycles kills `umbra dev` with SIGKILL and restarts it on the same data directory and ports,
// cycle after cycle. Every cycle hosts the service again (a new terminator: the controller's database keeps
// growing, which is what made OpenZiti v1.7.2's controller fault on circuit creation) and opens new circuits
// to it. No cycle may crash the controller, and every dial must reach the service.
func TestKillRestartCycles(t *testing.T) {
	cycles := restartCycles(t)
	c := newCLI(t, 2*time.Minute+time.Duration(cycles)*time.Minute)
	args, _ := devArgs(t, "data")
	admin := "data/admin.json"
	host, client := "spiffe://umbra.local/acme/agent/host", "spiffe://umbra.local/acme/agent/client"

	dev := c.start("umbra dev ready", args...)
	for _, name := range []string{"host", "client"} {
		tok := c.must("", "identity", "create", "--as", admin, "--org", "acme", "--kind", "agent", "--name", name)
		if err := os.WriteFile(filepath.Join(c.dir, name+".token"), []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		c.must("", "enroll", "--token", name+".token", "--out", name+".json")
	}
	c.must("", "service", "grant", "--as", admin, "--service", "soak-echo", "--bind", host, "--dial", client)

	started := time.Now()
	for cycle := 1; cycle <= cycles; cycle++ {
		if cycle > 1 {
			dev = c.start("umbra dev ready", args...)
		}
		serve := c.start("serving soak-echo", "service", "serve", "--as", "host.json", "--service", "soak-echo", "--echo")
		for i := range 3 {
			msg := fmt.Sprintf("cycle %d dial %d\n", cycle, i)
			// The first dial after a restart may race the service's terminator reaching the new controller.
			deadline := time.Now().Add(30 * time.Second)
			for {
				out, errs, err := c.run(msg, "service", "dial", "--as", "client.json", "--service", "soak-echo")
				if err == nil && out == msg {
					break
				}
				if why := crashed(dev.errb.String()); why != "" {
					t.Fatalf("cycle %d: the controller crashed:\n%s", cycle, why)
				}
				if time.Now().After(deadline) {
					t.Fatalf("cycle %d: dial %d did not reach the service within 30s: err=%v out=%q stderr=%s", cycle, i, err, out, errs)
				}
				time.Sleep(250 * time.Millisecond)
			}
		}
		serve.kill()
		if why := crashed(dev.errb.String()); why != "" {
			t.Fatalf("cycle %d: the controller crashed:\n%s", cycle, why)
		}
		dev.kill()
	}
	t.Logf("%d kill -9 / restart cycles with 3 new circuits each, 0 crashes, in %s", cycles, time.Since(started).Round(time.Second))
}
