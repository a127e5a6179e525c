package testlimit

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestStallNamesTheStep(t *testing.T) {
	out := &syncBuf{}
	exited := make(chan struct{})
	l := start("TestSomething", 50*time.Millisecond, out, func() { close(exited) })
	l.Step("dial service %s", "echo")
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the limit did not fire")
	}
	got := out.String()
	for _, want := range []string{"--- FAIL: TestSomething: stalled", `step "dial service echo"`, "goroutines at the stall:", "testlimit.TestStallNamesTheStep"} {
		if !strings.Contains(got, want) {
			t.Errorf("stall report lacks %q:\n%s", want, got)
		}
	}
}

func TestStopPreventsFiring(t *testing.T) {
	out := &syncBuf{}
	fired := make(chan struct{}, 1)
	l := start("TestQuick", 20*time.Millisecond, out, func() { fired <- struct{}{} })
	l.Stop()
	time.Sleep(100 * time.Millisecond)
	select {
	case <-fired:
		t.Fatalf("a stopped limit fired:\n%s", out.String())
	default:
	}
	if out.String() != "" {
		t.Fatalf("a stopped limit wrote %q", out.String())
	}
}
