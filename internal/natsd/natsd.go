// Package natsd runs a NATS server with JetStream inside the process, with no TCP listener unless one is asked
// for, and hands out in-process client connections to it. Several servers, in one process or in several, form a
// NATS cluster (routes between them over mutual TLS) in which JetStream replicates streams and key-value buckets
// with raft; see Cluster.
package natsd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"golang.org/x/crypto/bcrypt"
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
	// Log, if set, receives the server's warnings and errors, and its notices at debug level. Nil: the server
	// logs nothing.
	Log *slog.Logger
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
	// sysPass is the password of the system account's user, which only this process's in-process connections
	// may use; empty without a cluster.
	sysPass string
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
	var sysPass string
	if cfg.Cluster != nil {
		if err := clusterOptions(opts, cfg.Cluster); err != nil {
			return nil, err
		}
		pass, err := systemAccount(opts)
		if err != nil {
			return nil, err
		}
		sysPass = pass
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
	if cfg.Log != nil {
		ns.SetLoggerV2(serverLog{log: cfg.Log, started: time.Now()}, false, false, false)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("natsd: server did not become ready")
	}
	return &Server{ns: ns, sysPass: sysPass}, nil
}

// The system account of a cluster's server and its one user. The cluster's servers exchange their system
// traffic (meta group requests such as removing a server) in this account, so every server names it the same.
const (
	systemAccountName = "SYS"
	systemUser        = "umbra-system"
	// inProcessOnly is jwt.ConnectionTypeInProcess: a user allowed only that connection type can be used only by
	// code in the server's own process, never over a listener.
	inProcessOnly = "IN_PROCESS"
)

// systemAccount configures the system account with a user that only in-process connections may use, under a
// random password held in memory. Every other client still lands in the default account without credentials
// (the server then makes a no-auth user for it, as it does when only the system account has users).
func systemAccount(opts *server.Options) (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("natsd: system account password: %w", err)
	}
	pass := hex.EncodeToString(b[:])
	// The server holds a bcrypt hash of it (it warns of a password held in plain text). The password is 192
	// random bits, not a person's: the lowest cost is enough and keeps each in-process login under a millisecond.
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		return "", fmt.Errorf("natsd: system account password: %w", err)
	}
	sys := server.NewAccount(systemAccountName)
	opts.Accounts = append(opts.Accounts, sys)
	opts.SystemAccount = systemAccountName
	opts.Users = append(opts.Users, &server.User{Username: systemUser, Password: string(hash), Account: sys,
		AllowedConnectionTypes: map[string]struct{}{inProcessOnly: {}}})
	return pass, nil
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

// MetaPeer is a server of the cluster's JetStream meta group, as this server sees it.
type MetaPeer struct {
	// Name is the server's name, or a placeholder when this server has never heard from it (it joined after
	// the other left); ID is its raft peer ID, which every server knows.
	Name, ID string
	// Leader: it leads the meta group. Current: seen recently and caught up (known on the meta leader).
	// Offline: no server heard from it recently (every server hears every other's periodic state); a server
	// that was killed is marked so only after 2.5 to 4 minutes.
	Leader, Current, Offline bool
	// Routed: this server has a route to it now. A server that stopped or was killed loses its routes at once.
	Routed bool
}

// Running reports whether p may still be running: this server has a route to it, or the meta group has seen
// it recently and does not hold it offline.
func (p MetaPeer) Running() bool { return p.Routed || p.Current && !p.Offline }

// PeerID is this server's raft peer ID in the meta group and every replicated stream.
func (s *Server) PeerID() string { return s.ns.Node() }

// MetaGroup is what this server knows of the JetStream meta group: its known size and its servers (this one
// included). It is empty for a server without a cluster.
func (s *Server) MetaGroup() (size int, peers []MetaPeer, err error) {
	info, err := s.ns.Jsz(&server.JSzOptions{})
	if err != nil {
		return 0, nil, fmt.Errorf("natsd: JetStream state: %w", err)
	}
	if info.Meta == nil {
		return 0, nil, nil
	}
	routes, err := s.ns.Routez(&server.RoutezOptions{})
	if err != nil {
		return 0, nil, fmt.Errorf("natsd: routes: %w", err)
	}
	routed := map[string]bool{}
	for _, r := range routes.Routes {
		routed[r.RemoteName] = true
	}
	peers = append(peers, MetaPeer{Name: s.ns.Name(), ID: s.ns.Node(), Leader: info.Meta.Leader == s.ns.Name(), Current: true, Routed: true})
	for _, r := range info.Meta.Replicas {
		if r.Peer == s.ns.Node() {
			continue // listed when the group has no leader
		}
		peers = append(peers, MetaPeer{Name: r.Name, ID: r.Peer, Leader: info.Meta.Leader == r.Name, Current: r.Current, Offline: r.Offline,
			Routed: routed[r.Name]})
	}
	return info.Meta.Size, peers, nil
}

// ErrNotMember is returned by RemovePeer for a server the meta group does not hold (any more).
var ErrNotMember = errors.New("natsd: not a server of the cluster")

// RemovePeer removes the server with raft peer ID id (named name) from the cluster's JetStream meta group for
// good: the group stops counting it towards its quorum, and the replicas it held of each stream are placed on
// other servers. Remove only a server that is gone (stopped, its data lost or retired); a server removed while
// running is refused by the cluster afterwards. The request goes to the meta leader through this server; it
// names the server by ID, since a meta leader that joined after the server left never learnt its name.
func (s *Server) RemovePeer(ctx context.Context, name, id string) error {
	if s.sysPass == "" {
		return errors.New("natsd: remove a server: this server is not in a cluster")
	}
	nc, err := nats.Connect("", nats.InProcessServer(s.ns), nats.Name("umbra system"), nats.UserInfo(systemUser, s.sysPass))
	if err != nil {
		return fmt.Errorf("natsd: remove server %s: system connection: %w", name, err)
	}
	defer nc.Close()
	req, _ := json.Marshal(server.JSApiMetaServerRemoveRequest{Server: name, Peer: id})
	for {
		msg, err := nc.RequestWithContext(ctx, server.JSApiRemoveServer, req)
		if err != nil {
			return fmt.Errorf("natsd: remove server %s: %w", name, err)
		}
		var resp server.JSApiMetaServerRemoveResponse
		if err := json.Unmarshal(msg.Data, &resp); err != nil {
			return fmt.Errorf("natsd: remove server %s: unreadable answer: %w", name, err)
		}
		switch {
		case resp.Error != nil && strings.Contains(resp.Error.Description, "in progress"):
			// The meta group takes one membership change at a time: a server that has just joined (the
			// replacement, typically) is still being added.
			select {
			case <-ctx.Done():
				return fmt.Errorf("natsd: remove server %s: %s", name, resp.Error.Description)
			case <-time.After(250 * time.Millisecond):
			}
		case resp.Error != nil && resp.Error.ErrCode == uint16(server.JSClusterServerNotMemberErr):
			return fmt.Errorf("%w: %s (%s)", ErrNotMember, name, id)
		case resp.Error != nil:
			return fmt.Errorf("natsd: remove server %s: %s", name, resp.Error.Description)
		case !resp.Success:
			return fmt.Errorf("natsd: remove server %s: not removed", name)
		default:
			return nil
		}
	}
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
