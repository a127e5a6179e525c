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

	"github.com/openziti/sdk-golang/ziti"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/agentsdk/api"
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
	// relayConn, when set, wraps every relay connection (WithRelayConnHook).
	relayConn func(mode string, c net.Conn) net.Conn
	// tracerProvider, when set, traces envelopes and HTTP requests (WithTracerProvider).
	tracerProvider trace.TracerProvider
}

// Option varies Connect.
type Option func(*options)

// WithRelayConnHook passes every connection the agent opens to the controller's relay through f, with its mode
// ("send" or "recv"), once mutual TLS is up: to count, trace or break envelope traffic (the SDK's own tests break
// it to prove sessions recover). f must return a connection that carries the same bytes.
func WithRelayConnHook(f func(mode string, c net.Conn) net.Conn) Option {
	return func(o *options) { o.relayConn = f }
}

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
//
// The agent repairs its overlay session by itself: when the overlay no longer knows it (the controller
// restarted, say), it authenticates again in a new overlay context and hosts its services there, and the call
// that noticed carries on.
type Agent struct {
	opts   options
	tracer tracer
	runCtx context.Context
	cancel context.CancelFunc
	// loops counts the agent's background loops; Close waits for them.
	loops sync.WaitGroup
	// switching holds one token while the overlay context is being replaced: one switch at a time.
	switching chan struct{}
	// kick asks the watchdog to reconnect at once (a hosted service reported a lost session).
	kick chan struct{}

	ctrlOnce sync.Once
	ctrl     *Controller
	// revoked lists the certificates the controller revoked; every inner mutual-TLS handshake consults it.
	revoked *revocations

	// apis is where the agent authenticates to the overlay: every controller of the cluster it knows.
	apis *overlayAPIs
	// storeCount, when set, counts a service's terminators in the overlay's store instead of asking the overlay
	// (terminatorsInStore).
	storeCount func(service string) (int, error)

	mu        sync.Mutex
	id        *Identity
	zctx      ziti.Context
	gen       uint64 // counts overlay contexts: a reconnect replaces only the one its caller saw failing
	reconnect *reconnectCall
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

// Connect authenticates id to the overlay and returns a connected agent. It returns by ctx's deadline even
// when the overlay does not answer.
func Connect(ctx context.Context, id *Identity, opts ...Option) (*Agent, error) {
	o := options{refresh: 5 * time.Second, dialTimeout: 15 * time.Second, handshakeTTL: 10 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	// The overlay SDK logs through a process-wide logger; send it to ours, warnings and above, unless the process
	// routed it already (a controller embedding an agent keeps its own logger and level).
	if !zitilog.Routed() {
		zitilog.Route(o.log, slog.LevelWarn)
	}
	apis := &overlayAPIs{}
	zctx, err := await(ctx, func() (ziti.Context, error) { return newZitiContext(id, o.refresh, apis) }, closeContext)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: connect %s: %w", id.id, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	a := &Agent{opts: o, tracer: newTracer(o.tracerProvider), runCtx: runCtx, cancel: cancel, switching: make(chan struct{}, 1), kick: make(chan struct{}, 1),
		apis: apis, id: id, zctx: zctx, gen: 1, listeners: map[*listener]struct{}{}, unbound: map[string]bool{}, revoked: newRevocations()}
	if a.opts.renewer == nil {
		a.opts.renewer = a.renewWithController
	}
	a.loops.Add(3)
	go func() {
		defer a.loops.Done()
		a.renewLoop(runCtx)
	}()
	go func() {
		defer a.loops.Done()
		a.watch(runCtx)
	}()
	go func() {
		defer a.loops.Done()
		a.followRevocations(runCtx)
	}()
	a.startKeepHosting(runCtx)
	return a, nil
}

func closeContext(z ziti.Context) { z.Close() }

// authenticate authenticates zctx to the overlay, closing it if that fails.
func authenticate(zctx ziti.Context) error {
	if err := zctx.Authenticate(); err != nil {
		zctx.Close()
		if strings.Contains(err.Error(), "INVALID_AUTH") || strings.Contains(err.Error(), "401") {
			return fmt.Errorf("%w: the overlay refused this identity (unknown, revoked or expired)", ErrNotAuthorized)
		}
		return fmt.Errorf("overlay authentication: %w", err)
	}
	return nil
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

// currentGen returns the current overlay context and its generation.
func (a *Agent) currentGen() (ziti.Context, uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, 0, ErrClosed
	}
	return a.zctx, a.gen, nil
}

// Dial connects to service over the overlay and runs mutual TLS with SVIDs inside the connection. The returned
// connection is a *tls.Conn; PeerIdentity tells who answered. Dial returns by ctx's deadline (by 15 s if ctx has
// none) with an error wrapping ctx.Err(), whatever the overlay does meanwhile.
func (a *Agent) Dial(ctx context.Context, service string) (net.Conn, error) {
	return a.dial(ctx, service, tlsconfig.AuthorizeAny())
}

func (a *Agent) dial(ctx context.Context, service string, authorize tlsconfig.Authorizer) (net.Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.opts.dialTimeout)
		defer cancel()
	}
	raw, err := a.dialOverlay(ctx, service)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: dial %s: %w", service, err)
	}
	conn := tls.Client(raw, tlsconfig.MTLSClientConfig(source{a}, source{a}, a.notRevoked(authorize)))
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("agentsdk: dial %s: mutual TLS with the service failed: %w", service, err)
	}
	return conn, nil
}

// dialOverlay opens an overlay connection to service. A router that just went away fails a dial, and the next
// attempt goes through another one; a lost overlay session is repaired once by reconnecting. Each attempt has a
// deadline of its own, short at first and doubling (firstDialAttempt, 2×, 4×…, within ctx): right after the
// controller or a router restarts, a dial sometimes waits on state the overlay SDK kept from before (a service
// session, a router connection) until its deadline, while a fresh attempt gets an answer at once.
func (a *Agent) dialOverlay(ctx context.Context, service string) (net.Conn, error) {
	reconnected := false
	failures := 0
	for attempt := 0; ; attempt++ {
		zctx, gen, err := a.currentGen()
		if err != nil {
			return nil, err
		}
		actx, cancel := context.WithTimeout(ctx, firstDialAttempt<<min(attempt, 4))
		raw, err := dialOnce(actx, zctx, service)
		timedOut := err != nil && actx.Err() != nil
		cancel()
		if err != nil {
			a.opts.log.Debug("overlay dial failed", "service", service, "generation", gen, "attempt", attempt, "err", err)
		}
		switch {
		case err == nil:
			return raw, nil
		case ctx.Err() != nil:
			return nil, ctxError(ctx, err)
		case timedOut:
			continue
		case (isSessionLost(err) || errors.Is(err, errOverlayFault) || isControllerGone(err)) && !reconnected:
			reconnected = true
			a.opts.log.Info("overlay session lost, reconnecting", "spiffe_id", a.ID().String(), "service", service, "err", err)
			if rerr := a.reconnectFrom(ctx, gen); rerr != nil {
				if ctx.Err() != nil {
					return nil, ctxError(ctx, err)
				}
				if errors.Is(rerr, ErrNotAuthorized) || errors.Is(rerr, ErrClosed) {
					return nil, rerr
				}
				return nil, fmt.Errorf("%w (reconnecting failed: %v)", classify(err), rerr)
			}
			continue
		case isNotFound(err) || isAuth(err) || failures >= 3:
			return nil, classify(err)
		}
		failures++
		if !sleep(ctx, time.Duration(failures)*200*time.Millisecond) {
			return nil, ctxError(ctx, err)
		}
	}
}

// dialOnce dials service in zctx, refreshing the service once if zctx does not know it yet (a grant made after
// its last refresh). It returns by ctx's deadline; a connection the overlay opens later is closed.
func dialOnce(ctx context.Context, zctx ziti.Context, service string) (net.Conn, error) {
	dl, _ := ctx.Deadline()
	dial := func() (net.Conn, error) {
		return zctx.DialWithOptions(service, &ziti.DialOptions{ConnectTimeout: max(time.Until(dl), time.Millisecond)})
	}
	raw, err := await(ctx, dial, closeConn)
	if err != nil && ctx.Err() == nil && isNotFound(err) && !isSessionLost(err) {
		refresh := func() (struct{}, error) {
			_, err := zctx.RefreshService(service)
			return struct{}{}, err
		}
		if _, rerr := await(ctx, refresh, nil); rerr == nil {
			raw, err = await(ctx, dial, closeConn)
		}
	}
	return raw, err
}

func closeConn(c net.Conn) { c.Close() }

// ctxError is ctx's error, with the last error seen before it ended; while ctx is live it is last.
func ctxError(ctx context.Context, last error) error {
	switch {
	case ctx.Err() == nil:
		return last
	case last == nil || errors.Is(last, ctx.Err()):
		return ctx.Err()
	}
	return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
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
// callers reach it through them. Every accepted connection has completed mutual TLS with SVIDs. If no router
// is reachable yet, Listen returns a listener that hosts the service as soon as one is (WaitHosted waits for
// that). The listener survives routers and the controller going away: the agent hosts the service again when
// they are back. If the identity loses the right to host the service (its advertisement retracted, the service
// deleted), the listener stays open and the agent tries to host it again, less and less often, down to once a
// minute.
func (a *Agent) Listen(service string) (net.Listener, error) {
	return a.ListenContext(context.Background(), service)
}

// ListenContext is Listen bounded by ctx: if the overlay has not answered by ctx's deadline it returns an error
// wrapping ctx.Err() and hosts nothing. ctx bounds only the call, not the listener it returns.
func (a *Agent) ListenContext(ctx context.Context, service string) (net.Listener, error) {
	l := &listener{agent: a, service: service, conns: make(chan net.Conn), done: make(chan struct{}), pending: true}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, fmt.Errorf("agentsdk: listen %s: %w", service, ErrClosed)
	}
	again, gen := a.unbound[service], a.gen
	a.mu.Unlock()
	if again {
		if err := a.switchContext(ctx, nil, gen); err != nil {
			return nil, fmt.Errorf("agentsdk: listen %s: %w", service, err)
		}
	}
	// Registered first, so that a reconnect meanwhile moves it too.
	a.mu.Lock()
	a.listeners[l] = struct{}{}
	a.mu.Unlock()
	err := a.bindListener(ctx, l)
	if err != nil && ctx.Err() == nil && isSessionLost(err) {
		if _, gen, cerr := a.currentGen(); cerr == nil {
			if rerr := a.reconnectFrom(ctx, gen); rerr == nil {
				err = a.bindListener(ctx, l)
			}
		}
	}
	l.mu.Lock()
	l.pending = false
	l.mu.Unlock()
	switch {
	case err == nil:
	case ctx.Err() != nil:
		// A bind that completes later finds the listener closed and undoes itself.
		l.Close()
		return nil, fmt.Errorf("agentsdk: listen %s: %w", service, ctxError(ctx, err))
	case errors.Is(err, ErrServiceNotFound) || errors.Is(err, ErrNotAuthorized) || errors.Is(err, ErrClosed):
		a.mu.Lock()
		delete(a.listeners, l)
		a.mu.Unlock()
		return nil, err
	default:
		// Typically no router is reachable yet: host the service as soon as one is.
		a.opts.log.Warn("service not hosted yet, retrying in the background", "service", service, "err", err)
		go l.rebind()
	}
	return l, nil
}

// bindListener hosts l in the current overlay context, returning by ctx's deadline.
func (a *Agent) bindListener(ctx context.Context, l *listener) error {
	zctx, _, err := a.currentGen()
	if err != nil {
		return fmt.Errorf("agentsdk: listen %s: %w", l.service, err)
	}
	_, err = await(ctx, func() (struct{}, error) { return struct{}{}, l.bind(zctx, false) }, nil)
	return err
}

// HTTPClient returns a client whose requests travel over the overlay: the host of the URL is the service
// name, e.g. http://my-service/path. With WithTracerProvider, every request records a span and carries its W3C
// traceparent header.
func (a *Agent) HTTPClient() *http.Client {
	var rt http.RoundTripper = &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			return a.Dial(ctx, host)
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
	}
	if a.tracer.on {
		rt = &tracingTransport{base: rt, t: a.tracer.t}
	}
	return &http.Client{Transport: rt}
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
	a.loops.Wait()
	for _, l := range ls {
		l.Close()
	}
	a.Controller().client.CloseIdleConnections()
	a.mu.Lock()
	a.zctx.Close()
	for _, r := range a.retiring {
		r.zctx.Close()
	}
	a.retiring = nil
	a.mu.Unlock()
	return nil
}
