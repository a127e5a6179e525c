package sdktest

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// leakSettle is how long a goroutine of agentsdk may take to end after the test that started it: the overlay
// SDK's own calls (which agentsdk abandons at a deadline but cannot stop) return within their HTTP timeouts.
const leakSettle = 20 * time.Second

// sdkFrame marks a stack that runs code of package agentsdk itself (not of its tests).
const sdkFrame = "github.com/umbra-mesh/umbra/agentsdk."

// goroutines returns the stack of every goroutine, by goroutine ID.
func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		head, _, _ := strings.Cut(string(g), "\n")
		var id string
		if _, err := fmt.Sscanf(head, "goroutine %s", &id); err == nil {
			out[id] = string(g)
		}
	}
	return out
}

// sdkGoroutines returns the stacks of goroutines running agentsdk code that are not in before and whose stack
// contains match.
func sdkGoroutines(before map[string]string, match string) []string {
	var left []string
	for id, stack := range goroutines() {
		if _, old := before[id]; old || !strings.Contains(stack, sdkFrame) || !strings.Contains(stack, match) {
			continue
		}
		left = append(left, stack)
	}
	return left
}

// waitGoroutinesGone waits until no goroutine started since before runs agentsdk code matching match, and
// reports the ones left after leakSettle.
func waitGoroutinesGone(t *testing.T, before map[string]string, match string) {
	t.Helper()
	deadline := time.Now().Add(leakSettle)
	for {
		left := sdkGoroutines(before, match)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d goroutines of agentsdk still running %s after the test:\n\n%s", len(left), leakSettle,
				strings.Join(left, "\n\n"))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkNoLeaks, called first in a test, makes the test fail if a goroutine running agentsdk code that started
// during the test is still there after every other cleanup of the test and a settle period. Like
// go.uber.org/goleak it compares runtime.Stack goroutine lists; it looks only at agentsdk's own frames because
// the shared test network keeps goroutines of its own. Tests using it must not run in parallel.
func checkNoLeaks(t *testing.T) {
	t.Helper()
	before := goroutines()
	t.Cleanup(func() { waitGoroutinesGone(t, before, "") })
}
