package sdktest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/enrolltoken"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// stallProxy stands in front of the overlay controller's API. It forwards TCP connections to target until
// stall is called; from then on it accepts connections and never answers, and the connections it forwarded
// stop carrying bytes: a controller that is up but unhappy. Closing it drops every connection.
type stallProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	stalled bool
	clients []net.Conn
	ups     []net.Conn
	wg      sync.WaitGroup
}

// newStallProxy starts a proxy to target (empty: one that never answers from the start), closed when the test
// ends.
func newStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, stalled: target == ""}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *stallProxy) addr() string { return p.ln.Addr().String() }

func (p *stallProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.clients = append(p.clients, c)
		stalled := p.stalled
		p.mu.Unlock()
		if stalled {
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.ups = append(p.ups, up)
		p.mu.Unlock()
		// Neither copy closes the client's side: once stalled, the client waits for an answer that never comes.
		p.wg.Add(2)
		go func() { defer p.wg.Done(); _, _ = io.Copy(up, c) }()
		go func() { defer p.wg.Done(); _, _ = io.Copy(c, up) }()
	}
}

// stall stops answering.
func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
	for _, up := range p.ups {
		up.Close()
	}
}

func (p *stallProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range append(p.clients, p.ups...) {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// viaProxy returns id with its overlay API moved to the proxy.
func viaProxy(t *testing.T, id *agentsdk.Identity, p *stallProxy) *agentsdk.Identity {
	t.Helper()
	f := rawIdentity(t, id)
	u, err := url.Parse(f.OverlayAPI)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = p.addr()
	f.OverlayAPI = u.String()
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "proxied.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	moved, err := agentsdk.LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	return moved
}

// connectVia connects id through the proxy, closed when the test ends.
func connectVia(t *testing.T, id *agentsdk.Identity, p *stallProxy) *agentsdk.Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := agentsdk.Connect(ctx, viaProxy(t, id, p))
	if err != nil {
		t.Fatalf("connect %s through the proxy: %v", id.SPIFFEID(), err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// callDeadline is the deadline given to each call against the unhappy overlay; the overlay SDK's own HTTP
// timeout is 10 s, so a call that waited for it would overrun by far more than callSlack.
const (
	callDeadline = 1500 * time.Millisecond
	callSlack    = 2 * time.Second
)

// returnsByDeadline runs call with callDeadline and fails unless it returns a context.DeadlineExceeded error
// within callSlack of that deadline.
func returnsByDeadline(t *testing.T, what string, call func(ctx context.Context) error) {
	t.Helper()
	timeCall(t, what, call, false)
}

// returnsInTime is returnsByDeadline for a call that may also succeed in time.
func returnsInTime(t *testing.T, what string, call func(ctx context.Context) error) {
	t.Helper()
	timeCall(t, what, call, true)
}

func timeCall(t *testing.T, what string, call func(ctx context.Context) error, maySucceed bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callDeadline)
	defer cancel()
	start := time.Now()
	err := call(ctx)
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) && !(maySucceed && err == nil) {
		t.Errorf("%s: err = %v, want one wrapping context.DeadlineExceeded (or success: %v)", what, err, maySucceed)
	}
	if took > callDeadline+callSlack {
		t.Errorf("%s returned after %s, deadline %s", what, took.Round(time.Millisecond), callDeadline)
	}
	t.Logf("%s: returned after %s: %v", what, took.Round(time.Millisecond), err)
}

// TestDeadlinesWithUnhappyOverlay puts a proxy in front of the overlay controller's API that stops answering
// (TCP still accepts), and checks that every blocking call of the SDK returns by its deadline with
// context.DeadlineExceeded, and that no goroutine of agentsdk stays behind.
func TestDeadlinesWithUnhappyOverlay(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	checkNoLeaks(t)
	w := newPricingWorld(t, defaultTerms())
	service := uniq("stalled")
	env.Grant(t, service, []spiffeid.ID{w.quoter.ID()}, []spiffeid.ID{w.buyer.ID()})
	serveEcho(t, w.quoter, service)

	overlay, err := url.Parse(rawIdentity(t, w.buyer.Identity()).OverlayAPI)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newStallProxy(t, overlay.Host)
	// buyer has used the controller's API (so it holds a session for it) but not the relay; fresh has done
	// nothing at all.
	buyer := connectVia(t, w.buyer.Identity(), proxy)
	fresh := connectVia(t, w.quoter.Identity(), proxy)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, err := buyer.Propose(ctx, w.ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}
	proxy.stall()

	returnsByDeadline(t, "Dial", func(ctx context.Context) error {
		c, err := buyer.Dial(ctx, service)
		if err == nil {
			c.Close()
		}
		return err
	})
	returnsByDeadline(t, "Send", func(ctx context.Context) error {
		_, err := sess.Send(ctx, "quote.request", []byte(`{}`))
		return err
	})
	returnsByDeadline(t, "Receive", func(ctx context.Context) error {
		_, err := sess.Receive(ctx)
		return err
	})
	// The controller's API is a service every agent already holds an overlay session for (the revocation feed
	// keeps one), so these calls may still succeed through the routers while the overlay's controller is
	// unhappy; either way they return by their deadline.
	returnsInTime(t, "controller API (WhoAmI)", func(ctx context.Context) error {
		_, err := fresh.Controller().WhoAmI(ctx)
		return err
	})
	returnsInTime(t, "governance API (Sessions)", func(ctx context.Context) error {
		_, err := fresh.Sessions(ctx, "")
		return err
	})
	returnsByDeadline(t, "ListenContext", func(ctx context.Context) error {
		ln, err := fresh.ListenContext(ctx, service)
		if err == nil {
			ln.Close()
		}
		return err
	})
	returnsByDeadline(t, "Renew", func(ctx context.Context) error { return fresh.Renew(ctx) })

	blackhole := newStallProxy(t, "")
	returnsByDeadline(t, "Connect", func(ctx context.Context) error {
		a, err := agentsdk.Connect(ctx, viaProxy(t, w.buyer.Identity(), blackhole))
		if err == nil {
			a.Close()
		}
		return err
	})
	returnsByDeadline(t, "Enroll", func(ctx context.Context) error {
		_, err := agentsdk.Enroll(ctx, blackholeToken(t, blackhole))
		return err
	})

	// The agents still work for what needs no answer from the unhappy API: the hosted service is reachable.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	c, err := w.buyer.Dial(ctx2, service)
	if err != nil {
		t.Fatalf("dial with a direct agent while the proxy stalls: %v", err)
	}
	c.Close()
}

// blackholeToken is an enrollment token naming an endpoint that accepts connections and never answers.
func blackholeToken(t *testing.T, p *stallProxy) string {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://umbra.test/acme/agent/" + uniq("blackhole"))
	tok, _, err := enrolltoken.NewSigner(key).Issue(id, "https://"+p.addr(), strings.Repeat("0", 64), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
