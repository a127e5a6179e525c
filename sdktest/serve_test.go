package sdktest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// relayBreaker hands the test the provider's receive connections to the relay, and can make the next ones
// fail at once.
type relayBreaker struct {
	mu       sync.Mutex
	recvs    []net.Conn
	opened   int
	failNext int
}

func (b *relayBreaker) hook(mode string, c net.Conn) net.Conn {
	if mode != "recv" {
		return c
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.opened++
	if b.failNext > 0 {
		b.failNext--
		c.Close()
		return c
	}
	// Broken from the test's goroutine below the TLS connection, as a router or the relay dropping it would.
	b.recvs = append(b.recvs, c.(*tls.Conn).NetConn())
	return c
}

// breakAll closes every open receive connection and makes the next n fail.
func (b *relayBreaker) breakAll(n int) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.recvs {
		c.Close()
	}
	broken := len(b.recvs)
	b.recvs, b.failNext = nil, n
	return broken
}

func (b *relayBreaker) opens() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.opened
}

// TestServeSurvivesBrokenReceive breaks the relay connection a serving provider receives on, and makes the
// next attempts fail too: serving resumes by itself, every envelope is answered, and once the session closes
// Serve stops serving it.
func TestServeSurvivesBrokenReceive(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	checkNoLeaks(t)
	w := newPricingWorld(t, defaultTerms())
	breaker := &relayBreaker{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	provider, err := agentsdk.Connect(ctx, w.quoter.Identity(), agentsdk.WithRelayConnHook(breaker.hook))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { provider.Close() })
	sess, err := w.buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}

	served := make(chan string, 16)
	serveCtx, stopServe := context.WithCancel(ctx)
	serveDone := make(chan error, 1)
	before := goroutines()
	go func() {
		serveDone <- provider.Serve(serveCtx, 100*time.Millisecond, func(_ context.Context, _ *agentsdk.Session, in agentsdk.Envelope) (string, []byte, error) {
			served <- string(in.Payload)
			return "quote.response", []byte(fmt.Sprintf(`{"re":%s}`, in.Payload)), nil
		})
	}()
	defer func() {
		stopServe()
		<-serveDone
	}()

	request := func(n int) {
		t.Helper()
		payload := fmt.Sprintf(`{"n":%d}`, n)
		sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
		defer scancel()
		if _, err := sess.Send(sctx, "quote.request", []byte(payload)); err != nil {
			t.Fatalf("send %s: %v", payload, err)
		}
		select {
		case got := <-served:
			if got != payload {
				t.Fatalf("served %s, want %s", got, payload)
			}
		case <-sctx.Done():
			t.Fatalf("request %s not served: %v", payload, sctx.Err())
		}
		env, err := sess.Receive(sctx)
		if err != nil {
			t.Fatalf("reply to %s: %v", payload, err)
		}
		if want := fmt.Sprintf(`{"re":%s}`, payload); string(env.Payload) != want {
			t.Fatalf("reply %s, want %s", env.Payload, want)
		}
	}

	request(1)
	opensBefore := breaker.opens()
	if n := breaker.breakAll(3); n == 0 {
		t.Fatal("the provider had no receive connection to break")
	}
	request(2)
	if opened := breaker.opens() - opensBefore; opened < 4 {
		t.Fatalf("serving resumed after %d receive connections, want at least 4 (3 refused, then one that works)", opened)
	}
	breaker.breakAll(0)
	request(3)

	// Closing the session ends its serving; Serve itself runs on.
	cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
	defer ccancel()
	if err := sess.Close(cctx, "done"); err != nil {
		t.Fatal(err)
	}
	waitGoroutinesGone(t, before, "serveSession")
	select {
	case err := <-serveDone:
		t.Fatalf("Serve returned while its context was live: %v", err)
	default:
	}
}
