package agentsdk

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/openziti/edge-api/rest_model"
	"github.com/openziti/sdk-golang/ziti"
	"github.com/openziti/sdk-golang/ziti/edge"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// source serves the agent's current SVID and trust bundle to go-spiffe's TLS configuration, so every handshake
// uses the newest SVID after a renewal.
type source struct{ a *Agent }

var (
	_ x509svid.Source   = source{}
	_ x509bundle.Source = source{}
)

func (s source) GetX509SVID() (*x509svid.SVID, error) {
	s.a.mu.Lock()
	id := s.a.id
	s.a.mu.Unlock()
	return &x509svid.SVID{ID: id.id, Certificates: id.svid, PrivateKey: id.key}, nil
}

func (s source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.a.mu.Lock()
	id := s.a.id
	s.a.mu.Unlock()
	if td != id.id.TrustDomain() {
		return nil, fmt.Errorf("no trust bundle for trust domain %q", td)
	}
	return x509bundle.FromX509Authorities(td, id.bundle), nil
}

// PeerIdentity returns the SPIFFE ID that the other end of conn proved with its SVID during mutual TLS. It
// never trusts a name the overlay reports for the caller: that name is asserted by the dialling client.
func PeerIdentity(conn net.Conn) (spiffeid.ID, error) {
	tc, ok := conn.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		return spiffeid.ID{}, errors.New("agentsdk: peer identity: not a connection from Dial or Listen")
	}
	st := tc.ConnectionState()
	if !st.HandshakeComplete || len(st.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("agentsdk: peer identity: no verified peer certificate")
	}
	id, err := x509svid.IDFromCert(st.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("agentsdk: peer identity: %w", err)
	}
	return id, nil
}

// listener accepts overlay connections for one service, completes mutual TLS on each in its own goroutine
// (a slow or hostile peer cannot stall Accept), and moves to the agent's new overlay context after renewal.
type listener struct {
	agent   *Agent
	service string
	conns   chan net.Conn
	done    chan struct{}

	mu        sync.Mutex
	zl        edge.Listener
	closed    bool
	rebinding bool
	// pending is true while ListenContext's first bind has not returned: the listener is registered (so that a
	// reconnect meanwhile moves it too) but not hosted yet, and that is not a hosted service that went down.
	pending bool
	// store is what the overlay's store was found to hold for the current bind (instore.go).
	store storeState
	// churn is what the listener knows of its binds' changes (churn.go).
	churn churnState
	// refused is true while the overlay refuses the service: its binds churned (churn.go), or the last try to
	// host it failed because the overlay does not know it for the identity (rebind). The watchdog leaves it be.
	refused bool
	once    sync.Once
}

// bind hosts l's service in zctx. fresh asks the controller whether the identity may host it even when zctx
// already knows.
func (l *listener) bind(zctx ziti.Context, fresh bool) error {
	if err := hostable(zctx, l.service, fresh); err != nil {
		return fmt.Errorf("agentsdk: listen %s: %w", l.service, err)
	}
	opts := &ziti.ListenOptions{MaxTerminators: 3, ConnectTimeout: 10 * time.Second,
		WaitForNEstablishedListeners: 1}
	zl, err := zctx.ListenWithOptions(l.service, opts)
	if err != nil {
		return fmt.Errorf("agentsdk: listen %s: %w", l.service, classify(err))
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		zl.Close()
		return fmt.Errorf("agentsdk: listen %s: %w", l.service, net.ErrClosed)
	}
	old := l.zl
	l.zl, l.refused = zl, false
	l.mu.Unlock()
	l.watchChurn(zl)
	go l.acceptLoop(zl)
	if old != nil {
		old.Close()
	}
	return nil
}

// hostable tells whether the identity may host service, as zctx knows it; it asks the controller when zctx
// does not know the service, knows it without the right to host it (a grant made since zctx last asked is not
// known yet), or fresh is set. The overlay SDK must not be asked to listen otherwise: it would try to create its
// bind session again and again, without a pause, for its whole connect timeout.
func hostable(zctx ziti.Context, service string, fresh bool) error {
	svc, ok := zctx.GetService(service)
	if !ok || fresh || !canBind(svc) {
		var err error
		if svc, err = zctx.RefreshService(service); err != nil {
			return classify(err)
		}
	}
	if svc == nil || !canBind(svc) {
		return fmt.Errorf("%w (or this identity may not host it)", ErrServiceNotFound)
	}
	return nil
}

func canBind(svc *rest_model.ServiceDetail) bool {
	return slices.Contains(svc.Permissions, rest_model.DialBindBind)
}

// rebind keeps trying to host the service again, e.g. while no router is reachable, until it succeeds or the
// listener is closed.
func (l *listener) rebind() {
	l.mu.Lock()
	if l.rebinding || l.closed {
		l.mu.Unlock()
		return
	}
	l.rebinding = true
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.rebinding = false
		l.mu.Unlock()
	}()
	delay := 250 * time.Millisecond
	for {
		zctx, gen, err := l.agent.currentGen()
		if err != nil {
			return
		}
		// Asked afresh: the overlay may have ended the last bind because the identity lost the service.
		err = l.hostAgain(zctx, gen)
		// A service the overlay does not know for this identity (deleted, or its right to host it withdrawn) is
		// asked after less and less often, down to once a minute, and is not a reason for the watchdog to
		// reconnect: a new overlay session would not know it either.
		refused := errors.Is(err, ErrServiceNotFound)
		if err != nil {
			l.mu.Lock()
			l.refused = refused
			l.mu.Unlock()
		}
		if err == nil {
			l.agent.opts.log.Info("hosting service", "service", l.service)
			return
		}
		l.agent.opts.log.Debug("hosting service failed, retrying", "service", l.service, "err", err)
		select {
		case <-l.done:
			return
		case <-time.After(delay):
		}
		limit := 5 * time.Second
		if refused {
			limit = refusedRetryMax
		}
		delay = min(delay*2, limit)
	}
}

// hostAgain hosts l's service in zctx, of generation gen. If that context stopped hosting it (the overlay ended
// its binds), its SDK would bind again with the bind session the controller ended, and the router would count
// that bind established with no terminator in the overlay's store: so the agent moves to a new overlay context
// first, which hosts every listener there, this one too, as Close and Listen again do (ListenContext).
func (l *listener) hostAgain(zctx ziti.Context, gen uint64) error {
	a := l.agent
	a.mu.Lock()
	again := a.unbound[l.service] && a.gen == gen
	a.mu.Unlock()
	if !again {
		return l.bind(zctx, true)
	}
	if err := hostable(zctx, l.service, true); err != nil {
		return fmt.Errorf("agentsdk: listen %s: %w", l.service, err)
	}
	if err := a.reconnectFrom(a.runCtx, gen); err != nil {
		return fmt.Errorf("agentsdk: listen %s: %w", l.service, err)
	}
	l.mu.Lock()
	zl := l.zl // the bind the move made, or the one that ended if the move could not bind
	l.mu.Unlock()
	if zl == nil || zl.IsClosed() {
		return fmt.Errorf("agentsdk: listen %s: not hosted in the new overlay context yet", l.service)
	}
	return nil
}

// unbind notes that the current overlay context stopped hosting l's service (hostAgain).
func (l *listener) unbind() {
	l.agent.mu.Lock()
	l.agent.unbound[l.service] = true
	l.agent.mu.Unlock()
}

// refusedRetryMax is the longest pause between tries to host a service the overlay does not know for the
// identity.
const refusedRetryMax = time.Minute

func (l *listener) acceptLoop(zl edge.Listener) {
	for {
		raw, err := zl.Accept()
		if err != nil {
			l.mu.Lock()
			lost := !l.closed && l.zl == zl
			l.mu.Unlock()
			if lost {
				l.agent.opts.log.Warn("lost hosting of service, rebinding", "service", l.service, "err", err)
				l.unbind()
				go l.rebind()
			}
			return
		}
		go l.handshake(raw)
	}
}

func (l *listener) handshake(raw net.Conn) {
	conn := tls.Server(raw, tlsconfig.MTLSServerConfig(source{l.agent}, source{l.agent}, l.agent.notRevoked(tlsconfig.AuthorizeAny())))
	_ = conn.SetDeadline(time.Now().Add(l.agent.opts.handshakeTTL))
	if err := conn.Handshake(); err != nil {
		l.agent.opts.log.Debug("inbound handshake failed", "service", l.service, "err", err)
		raw.Close()
		return
	}
	_ = conn.SetDeadline(time.Time{})
	select {
	case l.conns <- conn:
	case <-l.done:
		conn.Close()
	}
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		zl := l.zl
		l.mu.Unlock()
		close(l.done)
		if zl != nil {
			zl.Close()
		}
		l.agent.mu.Lock()
		delete(l.agent.listeners, l)
		l.agent.unbound[l.service] = true
		l.agent.mu.Unlock()
	})
	return nil
}

func (l *listener) Addr() net.Addr { return overlayAddr(l.service) }

type overlayAddr string

func (a overlayAddr) Network() string { return "umbra" }
func (a overlayAddr) String() string  { return string(a) }
