package agentsdk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// hangLimit ends the test process with every goroutine's stack if t is still running after d: a call that
// ignores its deadline hangs, and the stacks show where. (The SDK's module has no test harness of its own; the
// network tests with theirs are in package sdktest of the root module.)
func hangLimit(t *testing.T, d time.Duration) {
	timer := time.AfterFunc(d, func() {
		buf := make([]byte, 1<<20)
		fmt.Fprintf(os.Stderr, "%s: still running after %s\n%s\n", t.Name(), d, buf[:runtime.Stack(buf, true)])
		os.Exit(2)
	})
	t.Cleanup(func() { timer.Stop() })
}

// TestAwaitAbandonsAndCleansUp checks that await returns at the deadline while the call runs on, and that a
// result arriving afterwards is discarded exactly once.
func TestAwaitAbandonsAndCleansUp(t *testing.T) {
	hangLimit(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	release := make(chan struct{})
	var discarded atomic.Int32
	discardedNow := make(chan struct{})
	start := time.Now()
	_, err := await(ctx, func() (int, error) {
		<-release
		return 7, nil
	}, func(v int) {
		if v == 7 {
			discarded.Add(1)
		}
		close(discardedNow)
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("await returned after %s", took)
	}
	close(release)
	select {
	case <-discardedNow:
	case <-time.After(10 * time.Second):
		t.Fatal("late result never discarded")
	}
	if n := discarded.Load(); n != 1 {
		t.Fatalf("discarded %d times", n)
	}
}

// TestAwaitDeliversResult checks that a result in time is returned and not discarded, and that a done context
// does not even start the call.
func TestAwaitDeliversResult(t *testing.T) {
	hangLimit(t, 4*time.Minute)
	v, err := await(context.Background(), func() (string, error) { return "ok", nil }, func(string) {
		t.Error("discarded a delivered result")
	})
	if err != nil || v != "ok" {
		t.Fatalf("await = %q, %v", v, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	if _, err := await(ctx, func() (int, error) { called = true; return 0, nil }, nil); !errors.Is(err, context.Canceled) || called {
		t.Fatalf("await on a done context: err %v, called %v", err, called)
	}
}

func TestBackoff(t *testing.T) {
	hangLimit(t, 4*time.Minute)
	b := backoff{first: 100 * time.Millisecond, limit: 5 * time.Second}
	var got []time.Duration
	for range 8 {
		got = append(got, b.fail())
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delays %v, want %v ms", got, want)
		}
	}
	b.reset()
	if d := b.fail(); d != 100*time.Millisecond {
		t.Fatalf("after reset: %s", d)
	}
}

func TestIsSessionLost(t *testing.T) {
	hangLimit(t, 4*time.Minute)
	for _, tc := range []struct {
		err  string
		lost bool
	}{
		{"unable to dial service 'umbra.relay' (dial failed: invalid session)", true},
		{"dial failed: invalid api session", true},
		{"no apiSession, authentication attempt failed: x", true},
		{"[POST /sessions][401] createSessionUnauthorized", true},
		{"INVALID_AUTH", true},
		{"unable to dial service 'x' (dial failed: access token has been revoked by identity)", true},
		{"dial failed: service access token has been revoked by identity", true},
		{"service 'x' not found", false},
		{"no edge routers connected in time", false},
		{"context deadline exceeded", false},
	} {
		if got := isSessionLost(errors.New(tc.err)); got != tc.lost {
			t.Errorf("isSessionLost(%q) = %v, want %v", tc.err, got, tc.lost)
		}
	}
}

// TestAwaitRecoversOverlayFault: a call into the overlay SDK that panics (as its dial does when its API session
// is cleared between its own check and its use) fails that call with errOverlayFault instead of killing the
// process.
func TestAwaitRecoversOverlayFault(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var session interface{ GetIdentityName() string }
	_, err := await(ctx, func() (string, error) { return session.GetIdentityName(), nil }, nil)
	if !errors.Is(err, errOverlayFault) || !strings.Contains(err.Error(), "nil pointer") {
		t.Fatalf("await of a panicking call = %v, want errOverlayFault", err)
	}
}

func TestIsControllerGone(t *testing.T) {
	hangLimit(t, 4*time.Minute)
	for _, tc := range []struct {
		err  string
		gone bool
	}{
		{`Post "https://127.0.0.1:4410/edge/client/v1/sessions": dial tcp 127.0.0.1:4410: connect: connection refused`, true},
		{`Get "https://10.0.0.1:1280/edge/client/v1/services": dial tcp 10.0.0.1:1280: i/o timeout`, true},
		{`Post "https://10.0.0.1:1280/oidc/oauth/token": EOF`, true},
		{"dial tcp 127.0.0.1:3022: connect: connection refused", false}, // a router, not a controller
		{`[POST /sessions][401] createSessionUnauthorized`, false},
		{"service 'x' not found", false},
	} {
		if got := isControllerGone(errors.New(tc.err)); got != tc.gone {
			t.Errorf("isControllerGone(%q) = %v, want %v", tc.err, got, tc.gone)
		}
	}
}
