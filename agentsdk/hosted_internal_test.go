package agentsdk

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openziti/sdk-golang/ziti/edge"
)

// countingListener is the overlay SDK's listener as WaitHosted sees it: its count of established terminators.
type countingListener struct {
	edge.Listener
	established atomic.Uint32
}

func (c *countingListener) IsClosed() bool            { return false }
func (c *countingListener) GetEstablishedCount() uint { return uint(c.established.Load()) }

func TestWaitHosted(t *testing.T) {
	zl := &countingListener{}
	var inStore atomic.Int32
	a := &Agent{opts: options{log: slog.New(slog.DiscardHandler)},
		storeCount: func(string) (int, error) { return int(inStore.Load()), nil }}
	l := &listener{agent: a, service: "svc", done: make(chan struct{})}

	// Not bound yet (Listen went on in the background), then bound without a terminator: not hosted.
	for _, bound := range []bool{false, true} {
		if bound {
			l.zl = zl
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*hostedPoll)
		err := WaitHosted(ctx, l)
		cancel()
		want := map[bool]string{false: "not bound", true: "no router has confirmed"}[bound]
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), want) {
			t.Fatalf("bound=%v: WaitHosted = %v, want a deadline error saying %q", bound, err, want)
		}
	}

	// A router creates the terminator while WaitHosted waits; the overlay's store gets it later.
	done := make(chan error, 1)
	go func() { done <- WaitHosted(context.Background(), l) }()
	time.Sleep(2 * hostedPoll)
	zl.established.Store(1)
	select {
	case err := <-done:
		t.Fatalf("WaitHosted = %v before the overlay's store held the terminator", err)
	case <-time.After(2 * storeAskEvery):
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*hostedPoll)
	err := WaitHosted(ctx, l)
	cancel()
	if want := "the overlay's store holds none"; !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), want) {
		t.Fatalf("confirmed by a router, not in the store: WaitHosted = %v, want a deadline error saying %q", err, want)
	}
	inStore.Store(1)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitHosted = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitHosted did not return once the terminator was established")
	}

	// The terminator lost with its router: not hosted again until one is made again.
	zl.established.Store(0)
	ctx, cancel = context.WithTimeout(context.Background(), 3*hostedPoll)
	defer cancel()
	if err := WaitHosted(ctx, l); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("after the terminator was lost: WaitHosted = %v, want a deadline error", err)
	}

	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	if err := WaitHosted(context.Background(), l); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("closed listener: WaitHosted = %v, want net.ErrClosed", err)
	}
	if err := WaitHosted(context.Background(), fakeNetListener{}); err == nil {
		t.Fatal("WaitHosted accepted a listener not from Listen")
	}
}

type fakeNetListener struct{ net.Listener }
