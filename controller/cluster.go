package controller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/natsd"
	"github.com/umbra-mesh/umbra/internal/zitictrl"
)

// maxReplicas is JetStream's largest replica count.
const maxReplicas = 5

// checkCluster validates and defaults the NATS cluster settings.
func (c *Config) checkCluster() error {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Replicas < 1 || c.Replicas > maxReplicas {
		return fmt.Errorf("controller: Replicas %d: want 1 to %d (3 in a cluster of three controllers)", c.Replicas, maxReplicas)
	}
	if err := c.checkOverlayCluster(); err != nil {
		return err
	}
	if c.NATSClusterListen == "" {
		if c.Replicas > 1 || len(c.NATSRoutes) > 0 {
			return errors.New("controller: replicas above 1 and NATS routes need a NATS cluster listener (NATSClusterListen, --nats-cluster-listen HOST:PORT)")
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(c.NATSClusterListen); err != nil {
		return fmt.Errorf("controller: NATS cluster listen address %q: want HOST:PORT", c.NATSClusterListen)
	}
	if len(c.NATSRoutes) == 0 {
		return errors.New("controller: a NATS cluster needs the route address of at least one other controller (NATSRoutes, --nats-routes HOST:PORT,...)")
	}
	for _, r := range c.NATSRoutes {
		if _, _, err := net.SplitHostPort(strings.TrimPrefix(r, "nats-route://")); err != nil {
			return fmt.Errorf("controller: NATS route %q: want HOST:PORT", r)
		}
	}
	if c.NATSClusterName == "" {
		c.NATSClusterName = "umbra"
	}
	return nil
}

// checkOverlayCluster validates ClusterInit and ClusterJoin.
func (c *Config) checkOverlayCluster() error {
	if c.ClusterJoin == "" {
		return nil
	}
	if c.ClusterInit {
		return errors.New("controller: ClusterInit and ClusterJoin exclude each other (--cluster-init starts a new cluster, --cluster-join tls:HOST:PORT joins one)")
	}
	hostPort, ok := strings.CutPrefix(c.ClusterJoin, "tls:")
	if _, port, err := net.SplitHostPort(hostPort); !ok || err != nil || port == "" {
		return fmt.Errorf("controller: cluster join address %q: want tls:HOST:PORT, a member's overlay control-plane address (its --advertise host and --ctrl-port)", c.ClusterJoin)
	}
	// The overlay's members share one governance state: a member on a NATS store of its own would contradict
	// the others.
	if c.NATSClusterListen == "" {
		return errors.New("controller: a controller joining an overlay cluster must share the governance state: give it --nats-cluster-listen and --nats-routes too (NATSClusterListen, NATSRoutes)")
	}
	return nil
}

// overlayCluster is the overlay controller's cluster setting, nil for a lone controller.
func (c Config) overlayCluster() *zitictrl.Cluster {
	if !c.ClusterInit && c.ClusterJoin == "" {
		return nil
	}
	return &zitictrl.Cluster{Join: c.ClusterJoin}
}

// natsCluster is the embedded NATS server's cluster configuration, nil without NATSClusterListen. The routes use
// the client listener's mutual TLS (natsTLS), verifying the servers they dial against the same CA.
func (s *Server) natsCluster() (*natsd.Cluster, error) {
	if s.cfg.NATSClusterListen == "" {
		return nil, nil
	}
	host, _, _ := net.SplitHostPort(s.cfg.NATSClusterListen)
	hosts := []string{host, s.cfg.AdvertiseHost}
	if a := s.cfg.NATSClusterAdvertise; a != "" {
		if h, _, err := net.SplitHostPort(a); err == nil {
			hosts = append(hosts, h)
		}
	}
	tlsCfg, err := natsTLS(s.ca, s.controllerID, hosts...)
	if err != nil {
		return nil, err
	}
	tlsCfg.RootCAs = tlsCfg.ClientCAs
	return &natsd.Cluster{Name: s.cfg.NATSClusterName, Listen: s.cfg.NATSClusterListen, Advertise: s.cfg.NATSClusterAdvertise,
		Routes: s.cfg.NATSRoutes, TLS: tlsCfg}, nil
}

// natsServerName is Config.NATSServerName, or the name kept in the data directory, chosen at the first start.
func natsServerName(cfg Config) (string, error) {
	if cfg.NATSServerName != "" {
		return cfg.NATSServerName, nil
	}
	if cfg.NATSClusterListen == "" {
		return "umbra", nil
	}
	path := filepath.Join(cfg.DataDir, "nats-server-name")
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("controller: NATS server name: %w", err)
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("controller: NATS server name: %w", err)
	}
	name := "umbra-" + hex.EncodeToString(b[:])
	if err := os.WriteFile(path, []byte(name+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("controller: NATS server name: %w", err)
	}
	return name, nil
}

// replicated creates every stream and key-value bucket that does not name its replica count with n replicas.
// Above one replica, each create gets createAttemptTimeout and is sent again if it got no answer: when controllers
// starting together create the same stream at once, JetStream may answer only one of them (the others' requests
// are dropped, seen here at a cluster's first start), while a later request finds the stream and succeeds; and
// just after the meta leader's election, JetStream answers "temporarily unavailable" for a moment.
type replicated struct {
	jetstream.JetStream
	n int
}

// createAttemptTimeout bounds one replicated create: the new raft group elects its leader in a few seconds.
const createAttemptTimeout = 5 * time.Second

// retryUnanswered runs create until it gets an answer, each attempt with its own deadline, as long as ctx lasts.
func retryUnanswered[T any](ctx context.Context, n int, create func(context.Context) (T, error)) (T, error) {
	if n <= 1 {
		return create(ctx)
	}
	for {
		actx, cancel := context.WithTimeout(ctx, createAttemptTimeout)
		v, err := create(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !unanswered(err) {
			return v, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// errNoPeers is JetStream's error code for a stream it cannot place: fewer servers with JetStream are known to
// its meta leader than the stream's replicas.
const errNoPeers = 10005

// unanswered says whether a JetStream request got no answer, or an answer that the cluster is not ready yet:
// 503, as just after a meta leader is elected, or no suitable peers, as at a cluster's first start while the
// last servers are still being announced to the meta leader (a store of R replicas needs R servers, where a
// member's start waits only for a majority).
func unanswered(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		(errors.As(err, &apiErr) && (apiErr.Code == 503 || apiErr.ErrorCode == errNoPeers))
}

func (r replicated) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = r.n
	}
	return r.bucket(retryUnanswered(ctx, cfg.Replicas, func(ctx context.Context) (jetstream.KeyValue, error) { return r.JetStream.CreateKeyValue(ctx, cfg) }))
}

// CreateOrUpdateKeyValue creates the bucket, or updates it if it exists with another configuration. It asks to
// create first, and to update only when told the bucket exists otherwise: the client's own CreateOrUpdate asks
// to update first. When the members of a cluster start together, each opens the same stores at once, and on
// nats-server v2.15.2 three servers doing update-then-create on one stream at once got no answer to any of
// those requests (most likely an update arriving while another server's create is in flight): each store then
// cost a 5 s attempt and another (about 90 s for a controller's stores, several minutes on a loaded machine).
// Creates of an equal configuration at once are all answered (TestConcurrentOpensAnsweredAtOnce). Members that
// all update a store at once (an upgrade changing its configuration) are not covered by that test.
func (r replicated) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = r.n
	}
	return r.bucket(retryUnanswered(ctx, cfg.Replicas, func(ctx context.Context) (jetstream.KeyValue, error) {
		kv, err := r.JetStream.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			return r.JetStream.UpdateKeyValue(ctx, cfg)
		}
		return kv, err
	}))
}

func (r replicated) UpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = r.n
	}
	return r.bucket(r.JetStream.UpdateKeyValue(ctx, cfg))
}

func (r replicated) KeyValue(ctx context.Context, name string) (jetstream.KeyValue, error) {
	return r.bucket(r.JetStream.KeyValue(ctx, name))
}

// bucket wraps a replicated bucket in leaderlessKV.
func (r replicated) bucket(kv jetstream.KeyValue, err error) (jetstream.KeyValue, error) {
	if err != nil || r.n <= 1 {
		return kv, err
	}
	return leaderlessKV{KeyValue: kv}, nil
}

// leaderlessWait bounds how long a bucket operation is tried again while its bucket has no leader: JetStream's
// election timeout is 4-9 s.
const leaderlessWait = 12 * time.Second

// leaderlessKV is a replicated bucket whose reads and writes are tried again while no replica leads it. When
// the server leading it dies, its replicas elect a new leader only after JetStream's election timeout, and an
// operation meanwhile is answered that no stream took it: nothing was stored, so sending it again is safe. The
// governance API's calls then wait out the election instead of failing.
type leaderlessKV struct{ jetstream.KeyValue }

func (kv leaderlessKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return whileLeaderless(ctx, func() (jetstream.KeyValueEntry, error) { return kv.KeyValue.Get(ctx, key) })
}

func (kv leaderlessKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return whileLeaderless(ctx, func() (uint64, error) { return kv.KeyValue.Put(ctx, key, value) })
}

func (kv leaderlessKV) PutString(ctx context.Context, key string, value string) (uint64, error) {
	return whileLeaderless(ctx, func() (uint64, error) { return kv.KeyValue.PutString(ctx, key, value) })
}

func (kv leaderlessKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	return whileLeaderless(ctx, func() (uint64, error) { return kv.KeyValue.Create(ctx, key, value, opts...) })
}

func (kv leaderlessKV) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	return whileLeaderless(ctx, func() (uint64, error) { return kv.KeyValue.Update(ctx, key, value, revision) })
}

func (kv leaderlessKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := whileLeaderless(ctx, func() (struct{}, error) { return struct{}{}, kv.KeyValue.Delete(ctx, key, opts...) })
	return err
}

// immediate returns kv without leaderlessKV's tries: the recorder lease times its own tries against its term,
// and a read that waited out an election would delay a takeover by as long.
func immediate(kv jetstream.KeyValue) jetstream.KeyValue {
	if l, ok := kv.(leaderlessKV); ok {
		return l.KeyValue
	}
	return kv
}

// whileLeaderless runs op until it is answered by a stream, for at most leaderlessWait or until ctx ends.
func whileLeaderless[T any](ctx context.Context, op func() (T, error)) (T, error) {
	giveUp := time.Now().Add(leaderlessWait)
	for {
		v, err := op()
		if err == nil || !errors.Is(err, jetstream.ErrNoStreamResponse) && !errors.Is(err, nats.ErrNoResponders) || time.Now().After(giveUp) {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (r replicated) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = r.n
	}
	return retryUnanswered(ctx, cfg.Replicas, func(ctx context.Context) (jetstream.Stream, error) { return r.JetStream.CreateStream(ctx, cfg) })
}

// CreateOrUpdateStream creates the stream, or updates it if it exists with another configuration: create first,
// as CreateOrUpdateKeyValue does, and for the same reason.
func (r replicated) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = r.n
	}
	return retryUnanswered(ctx, cfg.Replicas, func(ctx context.Context) (jetstream.Stream, error) {
		s, err := r.JetStream.CreateStream(ctx, cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return r.JetStream.UpdateStream(ctx, cfg)
		}
		return s, err
	})
}
