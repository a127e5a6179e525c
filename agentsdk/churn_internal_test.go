package agentsdk

import (
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openziti/edge-api/rest_model"
	"github.com/openziti/sdk-golang/ziti"
	"github.com/openziti/sdk-golang/ziti/edge"
)

// churningListener is an overlay SDK listener whose binds the test makes and ends.
type churningListener struct {
	edge.Listener
	closed  atomic.Bool
	done    chan struct{}
	handler atomic.Pointer[func([]edge.Listener)]
	refused atomic.Pointer[func(error)]
}

func newChurningListener() *churningListener { return &churningListener{done: make(chan struct{})} }

func (c *churningListener) IsClosed() bool { return c.closed.Load() }
func (c *churningListener) Close() error {
	if !c.closed.Swap(true) {
		close(c.done)
	}
	return nil
}
func (c *churningListener) Accept() (net.Conn, error) {
	<-c.done
	return nil, net.ErrClosed
}
func (c *churningListener) SetConnectionChangeHandler(h func([]edge.Listener)) {
	c.handler.Store(&h)
}
func (c *churningListener) SetErrorEventHandler(h func(error)) { c.refused.Store(&h) }

// TestChurnEndsTheBindAndPauses: a listener whose binds change churnChanges times within churnWindow closes the
// overlay SDK's listener (which ends the SDK's loop of binds) and lets it go, so that its accept loop does not bind
// again at once; the pause before the next bind doubles while churn recurs within churnMemory and starts over
// after. Binds that change as often but spread over more than churnWindow, or on a listener no longer current,
// are not churn.
func TestChurnEndsTheBindAndPauses(t *testing.T) {
	a := &Agent{opts: options{log: slog.New(slog.DiscardHandler)}, listeners: map[*listener]struct{}{}, unbound: map[string]bool{},
		closed: true}
	l := &listener{agent: a, service: "svc", done: make(chan struct{})}
	defer close(l.done)
	bound := func() *churningListener {
		zl := newChurningListener()
		l.mu.Lock()
		l.zl = zl
		l.mu.Unlock()
		l.watchChurn(zl)
		if zl.handler.Load() == nil {
			t.Fatal("the listener does not watch its binds' changes")
		}
		return zl
	}
	current := func(zl *churningListener) bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.zl == zl
	}

	// A router that comes and goes: as many changes, spread over more than the window.
	zl := bound()
	t0 := time.Now()
	for i := range 5 * churnChanges {
		l.bindsChanged(zl, t0.Add(time.Duration(i)*(churnWindow/(churnChanges-1)+time.Millisecond)))
	}
	if zl.IsClosed() || !current(zl) {
		t.Fatal("changes spread over more than the window counted as churn")
	}

	// The overlay ends every bind at once: churn at the churnChanges-th change within the window.
	t1 := t0.Add(time.Hour)
	for i := range churnChanges - 1 {
		l.bindsChanged(zl, t1.Add(time.Duration(i)*time.Millisecond))
	}
	if zl.IsClosed() {
		t.Fatalf("closed after %d changes, want %d", churnChanges-1, churnChanges)
	}
	l.bindsChanged(zl, t1.Add(churnChanges*time.Millisecond))
	if !zl.IsClosed() || current(zl) {
		t.Fatal("churn did not close the SDK's listener and let it go")
	}
	pause := func() time.Duration {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.churn.pause
	}
	if p := pause(); p != churnPauseFirst {
		t.Fatalf("pause %s, want %s", p, churnPauseFirst)
	}
	// The overlay context no longer hosts the service: hosting it again moves the agent to a new one (hostAgain).
	if !a.unbound["svc"] {
		t.Fatal("churn did not mark the service unbound in the overlay context")
	}
	// Meanwhile the watchdog does not move the agent to a new overlay session for it.
	a.listeners[l] = struct{}{}
	if a.listenersDown() {
		t.Fatal("a listener pausing after churn counts as down")
	}
	delete(a.listeners, l)
	// A change reported late for the bind let go is not counted against the next.
	for i := range churnChanges {
		l.bindsChanged(zl, t1.Add(time.Second+time.Duration(i)*time.Millisecond))
	}

	// Churn again a minute later: the pause doubles; again and again: up to churnPauseMax.
	want := churnPauseFirst
	for n := range 10 {
		zl := bound()
		at := t1.Add(time.Duration(n+1) * time.Minute)
		for i := range churnChanges {
			l.bindsChanged(zl, at.Add(time.Duration(i)*time.Millisecond))
		}
		want = min(2*want, churnPauseMax)
		if !zl.IsClosed() || pause() != want {
			t.Fatalf("churn %d: closed=%v pause %s, want closed, pause %s", n+2, zl.IsClosed(), pause(), want)
		}
	}

	// After churnMemory without churn the pause starts over.
	zl = bound()
	at := t1.Add(11*time.Minute + churnMemory + time.Second)
	for i := range churnChanges {
		l.bindsChanged(zl, at.Add(time.Duration(i)*time.Millisecond))
	}
	if p := pause(); p != churnPauseFirst {
		t.Fatalf("pause after a quiet %s: %s, want %s", churnMemory, p, churnPauseFirst)
	}
}

// TestRefusedListenerIsNotDown: a listener whose service the overlay does not know for the identity does not
// make the watchdog reconnect.
func TestRefusedListenerIsNotDown(t *testing.T) {
	a := &Agent{opts: options{log: slog.New(slog.DiscardHandler)}, listeners: map[*listener]struct{}{}}
	l := &listener{agent: a, service: "svc"}
	a.listeners[l] = struct{}{}
	if !a.listenersDown() {
		t.Fatal("a listener with no bind does not count as down")
	}
	l.refused = true
	if a.listenersDown() {
		t.Fatal("a listener whose service the overlay does not know counts as down")
	}
}

// overlayServices is an overlay context as bind sees it: the services it knows, what the controller answers when
// asked again, and how often it was asked to listen.
type overlayServices struct {
	ziti.Context
	known, fresh map[string]*rest_model.ServiceDetail
	bound        edge.Listener // what a listen returns; nil: it fails
	refreshes    int
	listens      int
}

func (o *overlayServices) GetService(name string) (*rest_model.ServiceDetail, bool) {
	s, ok := o.known[name]
	return s, ok
}

func (o *overlayServices) RefreshService(name string) (*rest_model.ServiceDetail, error) {
	o.refreshes++
	s := o.fresh[name]
	if s == nil {
		delete(o.known, name)
	} else {
		o.known[name] = s
	}
	return s, nil
}

func (o *overlayServices) ListenWithOptions(string, *ziti.ListenOptions) (edge.Listener, error) {
	o.listens++
	if o.bound != nil {
		return o.bound, nil
	}
	return nil, errors.New("no edge router reachable")
}

func service(name string, perms ...rest_model.DialBind) *rest_model.ServiceDetail {
	return &rest_model.ServiceDetail{Name: &name, Permissions: perms}
}

// TestBindAsksBeforeListening: the overlay SDK is asked to listen only on a service the identity may host, as
// the controller says when the context does not know it, knows it without Bind, or the caller asks afresh (after
// churn); otherwise bind fails with ErrServiceNotFound without listening (the SDK would retry its bind session in
// a busy loop).
func TestBindAsksBeforeListening(t *testing.T) {
	for _, tc := range []struct {
		name         string
		known, fresh *rest_model.ServiceDetail
		askAfresh    bool
		refreshes    int
		listens      int
		notFound     bool
	}{
		{name: "known with bind", known: service("svc", rest_model.DialBindBind), listens: 1},
		{name: "known with bind, asked afresh, gone", known: service("svc", rest_model.DialBindBind), askAfresh: true,
			refreshes: 1, notFound: true},
		{name: "known with bind, asked afresh, still there", known: service("svc", rest_model.DialBindBind),
			fresh: service("svc", rest_model.DialBindBind), askAfresh: true, refreshes: 1, listens: 1},
		{name: "known for dial only, bind granted since", known: service("svc", rest_model.DialBindDial),
			fresh: service("svc", rest_model.DialBindDial, rest_model.DialBindBind), refreshes: 1, listens: 1},
		{name: "known for dial only", known: service("svc", rest_model.DialBindDial),
			fresh: service("svc", rest_model.DialBindDial), refreshes: 1, notFound: true},
		{name: "unknown", refreshes: 1, notFound: true},
		{name: "unknown, granted since", fresh: service("svc", rest_model.DialBindBind), refreshes: 1, listens: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &overlayServices{known: map[string]*rest_model.ServiceDetail{}, fresh: map[string]*rest_model.ServiceDetail{}}
			if tc.known != nil {
				o.known["svc"] = tc.known
			}
			if tc.fresh != nil {
				o.fresh["svc"] = tc.fresh
			}
			l := &listener{service: "svc"}
			err := l.bind(o, tc.askAfresh)
			if err == nil {
				t.Fatal("bind succeeded without a router")
			}
			if errors.Is(err, ErrServiceNotFound) != tc.notFound || o.refreshes != tc.refreshes || o.listens != tc.listens {
				t.Fatalf("bind: %v (service not found: %v), %d refreshes, %d listens; want not found %v, %d refreshes, %d listens",
					err, errors.Is(err, ErrServiceNotFound), o.refreshes, o.listens, tc.notFound, tc.refreshes, tc.listens)
			}
		})
	}

	// A bind that succeeds ends the refusal: the watchdog watches the listener again.
	zl := newChurningListener()
	o := &overlayServices{known: map[string]*rest_model.ServiceDetail{"svc": service("svc", rest_model.DialBindBind)}, bound: zl}
	l := &listener{service: "svc", refused: true}
	if err := l.bind(o, false); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	refused, current := l.refused, l.zl == zl
	l.closed = true // its accept loop ends without binding again
	l.mu.Unlock()
	zl.Close()
	if refused || !current || zl.handler.Load() == nil {
		t.Fatalf("after a bind: refused=%v, current=%v, watched=%v; want not refused, current, watched", refused, current, zl.handler.Load() != nil)
	}
}

// TestHostAgainInAContextThatEndedTheBind: hosting a service again in the overlay context whose binds of it ended
// asks the controller first: if the identity may no longer host it, it neither binds nor moves the agent to a new
// context; if it may, it moves the agent instead of binding there. In a context that did not end a bind of it, it
// binds there.
func TestHostAgainInAContextThatEndedTheBind(t *testing.T) {
	a := &Agent{opts: options{log: slog.New(slog.DiscardHandler)}, listeners: map[*listener]struct{}{},
		unbound: map[string]bool{"svc": true}, gen: 3}
	l := &listener{agent: a, service: "svc"}
	o := &overlayServices{known: map[string]*rest_model.ServiceDetail{"svc": service("svc", rest_model.DialBindBind)},
		fresh: map[string]*rest_model.ServiceDetail{}}
	if err := l.hostAgain(o, 3); !errors.Is(err, ErrServiceNotFound) || o.listens != 0 || o.refreshes != 1 {
		t.Fatalf("service gone: %v, %d listens, %d refreshes; want ErrServiceNotFound, no listen, one question", err, o.listens, o.refreshes)
	}
	// May still host it: not bound in this context, but moved to a new one (which a closed agent refuses).
	o.fresh["svc"] = service("svc", rest_model.DialBindBind)
	a.closed = true
	if err := l.hostAgain(o, 3); !errors.Is(err, ErrClosed) || o.listens != 0 {
		t.Fatalf("service hostable in the context that ended its bind: %v, %d listens; want the move (ErrClosed here), no listen", err, o.listens)
	}
	a.closed = false
	a.unbound = map[string]bool{}
	if err := l.hostAgain(o, 3); err == nil || errors.Is(err, ErrServiceNotFound) || o.listens != 1 {
		t.Fatalf("service hostable in a context that did not end its bind: %v, %d listens; want one listen (failing: no router)", err, o.listens)
	}
}

// TestRefusedBindsAreChurn: binds a router refuses count as churn like binds it ends (the SDK binds again at once
// after either), and each refusal still reaches the watchdog, which reconnects at once on a lost session.
func TestRefusedBindsAreChurn(t *testing.T) {
	a := &Agent{opts: options{log: slog.New(slog.DiscardHandler)}, listeners: map[*listener]struct{}{}, unbound: map[string]bool{},
		closed: true, kick: make(chan struct{}, 1)}
	l := &listener{agent: a, service: "svc", done: make(chan struct{})}
	defer close(l.done)
	zl := newChurningListener()
	l.zl = zl
	l.watchChurn(zl)
	refuse := zl.refused.Load()
	if refuse == nil {
		t.Fatal("the listener does not watch its refused binds")
	}
	stale := errors.New("attempt to use closed connection: api session id (a) does not match service session api session id (b)")
	for i := range churnChanges {
		if zl.IsClosed() {
			t.Fatalf("closed after %d refusals, want %d", i, churnChanges)
		}
		(*refuse)(stale)
	}
	if !zl.IsClosed() {
		t.Fatalf("%d refused binds within a moment did not close the SDK's listener", churnChanges)
	}
	select {
	case <-a.kick:
	default:
		t.Fatal("a refusal that means a lost session did not reach the watchdog")
	}
}
