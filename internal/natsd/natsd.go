// Package natsd runs a NATS server with JetStream inside the process, with no TCP listener unless one is asked
// for, and hands out in-process client connections to it. Several servers, in one process or in several, form a
// NATS cluster (routes between them over mutual TLS) in which JetStream replicates streams and key-value buckets
// with raft; see Cluster.
package natsd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Config configures the embedded server.
type Config struct {
	// StoreDir is where JetStream keeps its file store. Required.
	StoreDir string
	// ListenAddr, if set (host:port), also serves NATS clients over TCP. Empty means no listener at all, except in
	// a cluster: there the server needs one, and listens on a loopback port of its choice with Cluster.TLS.
	ListenAddr string
	// TLS secures the TCP listener; required with ListenAddr. It should require client certificates: JetStream
	// has no other authentication here.
	TLS *tls.Config
	// SyncAlways makes JetStream fsync every write before acknowledging it. Without it, writes are flushed
	// to disk every SyncInterval and an acknowledged write can be lost on power loss (not on a process crash).
	SyncAlways bool
	// ServerName names this server among its cluster's; it must differ from every other server's of the cluster
	// and stay the same across restarts (JetStream's raft groups know their peers by it). Default "umbra".
	ServerName string
	// Cluster, if set, makes this server one of a NATS cluster. Nil: a single server.
	Cluster *Cluster
}

// Cluster joins the server to a NATS cluster: the servers connect to each other over routes (mutual TLS), and
// JetStream runs its meta group and every stream and bucket of more than one replica as raft groups over them.
// A cluster of N servers needs a majority (N/2+1) of them up to create or change streams, and each replicated
// stream needs a majority of its replicas up to accept a write.
type Cluster struct {
	// Name is the cluster's name, the same on every server. Required.
	Name string
	// Listen is where this server accepts routes from the others (host:port). Required.
	Listen string
	// Advertise is the host:port the other servers should use to reach this one, when it is not Listen (a
	// wildcard listen address, or an address translated on the way). Default: the server gossips the addresses
	// of its interfaces.
	Advertise string
	// Routes are the other servers' route addresses (host:port or nats-route://host:port); a server connects to
	// them, learns the rest of the cluster from them and keeps retrying those that are down. Listing a server's
	// own address is harmless. At least one is required.
	Routes []string
	// TLS secures the routes, in both directions: it must hold this server's certificate (presented when
	// accepting and when dialing), verify the peer's (RootCAs for the servers it dials, ClientCAs and
	// tls.RequireAndVerifyClientCert for those that dial it), and should admit only the cluster's own servers.
	// Required.
	TLS *tls.Config
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
	name := cfg.ServerName
	if name == "" {
		name = "umbra"
	}
	opts := &server.Options{
		ServerName:         name,
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
	if cfg.Cluster != nil {
		if err := clusterOptions(opts, cfg.Cluster); err != nil {
			return nil, err
		}
		if cfg.ListenAddr == "" {
			// The server starts routing only once its client listener is open: without ListenAddr, listen on
			// a loopback port of the kernel's choice, with the routes' mutual TLS.
			opts.DontListen = false
			opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
			opts.TLS, opts.TLSVerify, opts.TLSConfig, opts.TLSTimeout = true, true, cfg.Cluster.TLS, 5
		}
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

// clusterOptions sets the server options of cfg.
func clusterOptions(opts *server.Options, c *Cluster) error {
	switch {
	case c.Name == "":
		return errors.New("natsd: a cluster needs a name")
	case c.Listen == "":
		return errors.New("natsd: a cluster needs a route listen address (host:port)")
	case len(c.Routes) == 0:
		return errors.New("natsd: a cluster needs the route address of at least one other server")
	case c.TLS == nil || c.TLS.ClientAuth != tls.RequireAndVerifyClientCert || len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil:
		return errors.New("natsd: cluster routes need TLS with a certificate and verified peer certificates")
	}
	host, port, err := splitHostPort(c.Listen)
	if err != nil {
		return err
	}
	opts.Cluster.Name, opts.Cluster.Host, opts.Cluster.Port = c.Name, host, port
	opts.Cluster.Advertise = c.Advertise
	opts.Cluster.TLSConfig, opts.Cluster.TLSTimeout = c.TLS, 5
	for _, r := range c.Routes {
		if !strings.Contains(r, "://") {
			r = "nats-route://" + r
		}
		u, err := url.Parse(r)
		if err != nil || u.Host == "" {
			return fmt.Errorf("natsd: route %q: want host:port", r)
		}
		if _, _, err := splitHostPort(u.Host); err != nil {
			return fmt.Errorf("natsd: route %q: want host:port", r)
		}
		opts.Routes = append(opts.Routes, u)
	}
	return nil
}

// WaitJetStream waits until JetStream can serve its API: at once for a single server; in a cluster, once the
// servers have elected a meta leader (a majority of them is up and routed) and this server has caught up with it.
func (s *Server) WaitJetStream(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.ns.JetStreamEnabled() && s.ns.JetStreamIsCurrent() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("natsd: JetStream not ready (no meta leader among a majority of the cluster's servers): %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// Name is the server's name (Config.ServerName).
func (s *Server) Name() string { return s.ns.Name() }

// ClusterAddr is the address the route listener is bound to, or nil without a cluster.
func (s *Server) ClusterAddr() *net.TCPAddr { return s.ns.ClusterAddr() }

// Routes is the number of route connections to other servers of the cluster (a pool of several per server).
func (s *Server) Routes() int { return s.ns.NumRoutes() }

// MetaLeader reports whether this server leads the cluster's JetStream meta group (false for a single server).
func (s *Server) MetaLeader() bool { return s.ns.JetStreamIsLeader() }

// StreamLeader reports whether this server leads the replicas of stream (in the default account).
func (s *Server) StreamLeader(stream string) bool {
	return s.ns.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream)
}

// ClusterPeers names the servers with JetStream that the meta group sees online; only the meta leader answers
// (nil elsewhere).
func (s *Server) ClusterPeers() []string { return s.ns.JetStreamClusterPeers() }

// StreamCurrent reports whether this server's replica of stream has caught up with its leader.
func (s *Server) StreamCurrent(stream string) bool {
	return s.ns.JetStreamIsStreamCurrent(server.DEFAULT_GLOBAL_ACCOUNT, stream)
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
