// Package testlimit gives a test that starts a network a deadline of its own, well below the package timeout,
// and names the step it was in when the deadline passed.
//
// A test that can hang is a failing test, but Go's package timeout reports it only after every other test of the
// package has waited too. A Limit fails the stalled test on its own deadline instead: it prints the test, the
// step it was in, how long that step had run and every goroutine's stack, then ends the test binary (a test
// stuck in a blocking call cannot be stopped any other way).
package testlimit

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Limit is one test's deadline. Its zero value is not usable; call Start.
type Limit struct {
	name  string
	limit time.Duration
	out   io.Writer
	exit  func()

	mu      sync.Mutex
	step    string
	stepAt  time.Time
	started time.Time
	timer   *time.Timer
	done    bool
}

// Start gives t a deadline of d from now. The test's cleanup stops it.
func Start(t testing.TB, d time.Duration) *Limit {
	l := start(t.Name(), d, os.Stderr, func() { os.Exit(2) })
	t.Cleanup(l.Stop)
	return l
}

func start(name string, d time.Duration, out io.Writer, exit func()) *Limit {
	now := time.Now()
	l := &Limit{name: name, limit: d, out: out, exit: exit, step: "start", stepAt: now, started: now}
	l.timer = time.AfterFunc(d, l.expire)
	return l
}

// Step names what the test does next: the message on a stall names the last step begun. A nil Limit ignores it.
func (l *Limit) Step(format string, args ...any) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.step, l.stepAt = fmt.Sprintf(format, args...), time.Now()
}

// Stop ends the deadline (the test finished).
func (l *Limit) Stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.done = true
	l.timer.Stop()
}

func (l *Limit) expire() {
	l.mu.Lock()
	if l.done {
		l.mu.Unlock()
		return
	}
	msg := fmt.Sprintf("%s: stalled: no end after %s; step %q has run for %s\n", l.name, l.limit, l.step,
		time.Since(l.stepAt).Round(time.Millisecond))
	l.mu.Unlock()
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	fmt.Fprintf(l.out, "--- FAIL: %s", msg)
	fmt.Fprintf(l.out, "goroutines at the stall:\n%s\n", buf)
	fmt.Fprintf(l.out, "FAIL: %s", msg)
	l.exit()
}
