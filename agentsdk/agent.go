package agentsdk

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/openziti/identity"
	"github.com/openziti/sdk-golang/ziti"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/umbra-mesh/umbra/internal/api"
	"github.com/umbra-mesh/umbra/internal/pki"
	"github.com/umbra-mesh/umbra/internal/zitilog"
)

// Credentials is what the controller returns on enrollment and renewal.
type Credentials = api.Credentials

// Renewer exchanges a CSR (DER) for fresh credentials. The default asks the controller over the overlay.
type Renewer func(ctx context.Context, csr []byte) (Credentials, error)

type options struct {
	log          *slog.Logger
	savePath     string
	renewer      Renewer
	refresh      time.Duration
	dialTimeout  time.Duration
	handshakeTTL time.Duration
}

// Option varies Connect.
type Option func(*options)

// WithLogger sets the logger for state changes (renewals, failures), which also receives the overlay SDK's
// warnings (that logger is process-wide: the last Connect sets it). Default: discard.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithIdentityFile makes the agent write every renewed SVID back to path, so a restart picks it up.
func WithIdentityFile(path string) Option { return func(o *options) { o.savePath = path } }

// WithRenewer replaces how the agent renews its SVID (the controller uses this to renew its own).
func WithRenewer(r Renewer) Option { return func(o *options) { o.renewer = r } }

// WithServiceRefresh sets how often the agent refreshes the services and routers it may use. Default 5s (which is also how soon a hosted service picks up a new router); a dial
// or listen on a service not yet known refreshes at once anyway.
func WithServiceRefresh(d time.Duration) Option { return func(o *options) { o.refresh = d } }

// Agent is a workload connected to the Umbra overlay. It dials and hosts services with no listening socket,
// speaks mutual TLS with SVIDs inside every overlay connection, and renews its SVID before it expires.
type Agent struct {
	opts   options
	cancel context.CancelFunc
	done   chan struct{}

	ctrlOnce sync.Once
	ctrl     *Controller

	mu        sync.Mutex
	id        *Identity
	zctx      ziti.Context
	retiring  []retiring
	listeners map[*listener]struct{}
	// unbound names services this context stopped hosting: the overlay SDK cannot host them again in the same
	// context (it reuses the bind session the controller already ended), so hosting one again reconnects first.
	unbound map[string]bool
	closed  bool
}

type retiring struct {
	zctx ziti.Context
	at   time.Time
}

// Connect authenticates id to the overlay and returns a connected agent.
func Connect(ctx context.Context, id *Identity, opts ...Option) (*Agent, error) {
	o := options{refresh: 5 * time.Second, dialTimeout: 15 * time.Second, handshakeTTL: 10 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	// The overlay SDK logs through a process-wide logger; send it to ours, warnings and above.
	zitilog.Route(o.log, slog.LevelWarn)
	zctx, err := newZitiContext(id, o.refresh)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: connect %s: %w", id.id, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	a := &Agent{opts: o, cancel: cancel, done: make(chan struct{}), id: id, zctx: zctx, listeners: map[*listener]struct{}{},
		unbound: map[string]bool{}}
	if a.opts.renewer == nil {
		a.opts.renewer = a.renewWithController
	}
	go a.renewLoop(runCtx)
	return a, nil
}

func newZitiContext(id *Identity, refresh time.Duration) (ziti.Context, error) {
	keyPEM, err := pki.EncodeKeyPEM(id.key)
	if err != nil {
		return nil, err
	}
	cfg := &ziti.Config{
		ZtAPI: id.overlayAPI,
		ID: identity.Config{
			Cert: "pem:" + string(pki.EncodeCertsPEM(id.svid...)),
			Key:  "pem:" + string(keyPEM),
			CA:   "pem:" + string(pki.EncodeCertsPEM(id.overlayCA...)),
		},
	}
	zctx, err := ziti.NewContextWithOpts(cfg, &ziti.Options{RefreshInterval: refresh, SessionRefreshInterval: refresh})
	if err != nil {
		return nil, err
	}
	if err := zctx.Authenticate(); err != nil {
		zctx.Close()
		if strings.Contains(err.Error(), "INVALID_AUTH") || strings.Contains(err.Error(), "401") {
			return nil, fmt.Errorf("%w: the overlay refused this identity (unknown, revoked or expired)", ErrNotAuthorized)
		}
		return nil, fmt.Errorf("overlay authentication: %w", err)
	}
	return zctx, nil
}

// ID returns the agent's SPIFFE ID.
func (a *Agent) ID() spiffeid.ID {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id.id
}

// Identity returns the agent's current identity (it changes on renewal).
func (a *Agent) Identity() *Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id
}

func (a *Agent) current() (*Identity, ziti.Context, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, nil, ErrClosed
	}
	return a.id, a.zctx, nil
}

// Dial connects to service over the overlay and runs mutual TLS with SVIDs inside the connection. The returned
// connection is a *tls.Conn; PeerIdentity tells who answered.
func (a *Agent) Dial(ctx context.Context, service string) (net.Conn, error) {
	return a.dial(ctx, service, tlsconfig.AuthorizeAny())
}

func (a *Agent) dial(ctx context.Context, service string, authorize tlsconfig.Authorizer) (net.Conn, error) {
	_, zctx, err := a.current()
	if err != nil {
		return nil, fmt.Errorf("agentsdk: dial %s: %w", service, err)
	}
	timeout := a.opts.dialTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	raw, err := zctx.DialWithOptions(service, &ziti.DialOptions{ConnectTimeout: timeout})
	if err != nil && isNotFound(err) {
		// A grant made after our last refresh is not known yet: refresh once and retry.
		if _, rerr := zctx.RefreshService(service); rerr == nil {
			raw, err = zctx.DialWithOptions(service, &ziti.DialOptions{ConnectTimeout: timeout})
		}
	}
	// A router that just went away fails the dial; the next attempt goes through another one.
	for attempt := 0; err != nil && attempt < 3 && !isNotFound(err) && !isAuth(err); attempt++ {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("agentsdk: dial %s: %w (last error: %v)", service, ctx.Err(), err)
		case <-time.After(time.Duration(attempt+1) * 200 * time.Millisecond):
		}
		raw, err = zctx.DialWithOptions(service, &ziti.DialOptions{ConnectTimeout: timeout})
	}
	if err != nil {
		return nil, fmt.Errorf("agentsdk: dial %s: %w", service, classify(err))
	}
	conn := tls.Client(raw, tlsconfig.MTLSClientConfig(source{a}, source{a}, authorize))
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("agentsdk: dial %s: mutual TLS with the service failed: %w", service, err)
	}
	return conn, nil
}

func isNotFound(err error) bool {
	return strings.Contains(err.Error(), "not found") || strings.Contains(err.Error(), "no service")
}

func isAuth(err error) bool {
	return strings.Contains(err.Error(), "INVALID_AUTH") || strings.Contains(err.Error(), "401")
}

func classify(err error) error {
	switch {
	case isNotFound(err):
		return fmt.Errorf("%w (or this identity may not use it): %v", ErrServiceNotFound, err)
	case isAuth(err):
		return fmt.Errorf("%w: %v", ErrNotAuthorized, err)
	}
	return err
}

// Listen hosts service on the overlay. It opens no listening socket: the agent dials out to the routers, and
// callers reach it through them. Every accepted connection has completed mutual TLS with SVIDs.
func (a *Agent) Listen(service string) (net.Listener, error) {
	l := &listener{agent: a, service: service, conns: make(chan net.Conn), done: make(chan struct{})}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, fmt.Errorf("agentsdk: listen %s: %w", service, ErrClosed)
	}
	again, id := a.unbound[service], a.id
	a.mu.Unlock()
	if again {
		if err := a.switchContext(id); err != nil {
			return nil, fmt.Errorf("agentsdk: listen %s: %w", service, err)
		}
	}
	_, zctx, err := a.current()
	if err != nil {
		return nil, fmt.Errorf("agentsdk: listen %s: %w", service, err)
	}
	if err := l.bind(zctx); err != nil {
		if errors.Is(err, ErrServiceNotFound) || errors.Is(err, ErrNotAuthorized) {
			return nil, err
		}
		// Typically no router is reachable yet: host the service as soon as one is.
		a.opts.log.Warn("service not hosted yet, retrying in the background", "service", service, "err", err)
		go l.rebind()
	}
	a.mu.Lock()
	a.listeners[l] = struct{}{}
	a.mu.Unlock()
	return l, nil
}

// HTTPClient returns a client whose requests travel over the overlay: the host of the URL is the service
// name, e.g. http://my-service/path.
func (a *Agent) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			return a.Dial(ctx, host)
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
	}}
}

// Services lists the services this identity may dial or host, as the overlay currently sees them.
func (a *Agent) Services() ([]string, error) {
	_, zctx, err := a.current()
	if err != nil {
		return nil, fmt.Errorf("agentsdk: services: %w", err)
	}
	if err := zctx.RefreshServices(); err != nil {
		return nil, fmt.Errorf("agentsdk: services: %w", classify(err))
	}
	svcs, err := zctx.GetServices()
	if err != nil {
		return nil, fmt.Errorf("agentsdk: services: %w", err)
	}
	names := make([]string, 0, len(svcs))
	for _, s := range svcs {
		if s.Name != nil {
			names = append(names, *s.Name)
		}
	}
	return names, nil
}

// Close closes the agent's listeners and overlay contexts. Connections already handed out are closed with them.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	ls := make([]*listener, 0, len(a.listeners))
	for l := range a.listeners {
		ls = append(ls, l)
	}
	a.mu.Unlock()
	a.cancel()
	<-a.done
	for _, l := range ls {
		l.Close()
	}
	a.mu.Lock()
	a.zctx.Close()
	for _, r := range a.retiring {
		r.zctx.Close()
	}
	a.retiring = nil
	a.mu.Unlock()
	return nil
}
