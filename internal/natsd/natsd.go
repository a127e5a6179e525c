// Package natsd runs a NATS server with JetStream inside the process, with no TCP listener unless one is asked
// for, and hands out in-process client connections to it.
package natsd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Config configures the embedded server.
type Config struct {
	// StoreDir is where JetStream keeps its file store. Required.
	StoreDir string
	// ListenAddr, if set (host:port), also serves NATS clients over TCP. Empty means no listener at all.
	ListenAddr string
	// TLS secures the TCP listener; required with ListenAddr. It should require client certificates: JetStream
	// has no other authentication here.
	TLS *tls.Config
	// SyncAlways makes JetStream fsync every write before acknowledging it. Without it, writes are flushed
	// to disk every SyncInterval and an acknowledged write can be lost on power loss (not on a process crash).
	SyncAlways bool
}

// Server is a running embedded NATS server.
type Server struct {
	ns *server.Server
}

// Start starts the server and waits until it accepts connections.
func Start(cfg Config) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("natsd: StoreDir is required")
	}
	opts := &server.Options{
		ServerName:         "umbra",
		JetStream:          true,
		StoreDir:           cfg.StoreDir,
		SyncAlways:         cfg.SyncAlways,
		DontListen:         cfg.ListenAddr == "",
		NoSigs:             true,
		NoLog:              true,
		MaxPayload:         8 << 20,
		JetStreamMaxMemory: 256 << 20,
	}
	// The server caps a stream at 1,000 consumers unless told otherwise, and every (session, recipient) pair has
	// a durable cursor: past about 500 sessions nothing new would be delivered. Cursors are bounded by their
	// owners instead (envstore's receivers expire when idle).
	opts.JetStreamLimits.DefaultMaxConsumers = -1
	if cfg.ListenAddr != "" {
		if cfg.TLS == nil || cfg.TLS.ClientAuth != tls.RequireAndVerifyClientCert {
			return nil, errors.New("natsd: a TCP listener needs TLS with verified client certificates")
		}
		host, port, err := splitHostPort(cfg.ListenAddr)
		if err != nil {
			return nil, err
		}
		opts.Host, opts.Port = host, port
		opts.TLS, opts.TLSVerify, opts.TLSConfig, opts.TLSTimeout = true, true, cfg.TLS, 5
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsd: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("natsd: server did not become ready")
	}
	return &Server{ns: ns}, nil
}

// Connect opens an in-process client connection.
func (s *Server) Connect(name string) (*nats.Conn, error) {
	nc, err := nats.Connect("", nats.InProcessServer(s.ns), nats.Name(name), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("natsd: connect: %w", err)
	}
	return nc, nil
}

// Shutdown stops the server and waits for it to finish.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("natsd: listen address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("natsd: listen address %q: bad port", addr)
	}
	return host, port, nil
}
