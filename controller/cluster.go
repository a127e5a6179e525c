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

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/natsd"
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
type replicated struct {
	jetstream.JetStream
	n int
}

func (r replicated) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = r.n
	}
	return r.JetStream.CreateKeyValue(ctx, cfg)
}

func (r replicated) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = r.n
	}
	return r.JetStream.CreateOrUpdateKeyValue(ctx, cfg)
}

func (r replicated) UpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = r.n
	}
	return r.JetStream.UpdateKeyValue(ctx, cfg)
}

func (r replicated) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = r.n
	}
	return r.JetStream.CreateStream(ctx, cfg)
}

func (r replicated) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = r.n
	}
	return r.JetStream.CreateOrUpdateStream(ctx, cfg)
}
