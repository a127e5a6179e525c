package zitictrl

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/openziti/storage/boltz"
	"github.com/openziti/ziti/common/pb/cmd_pb"
	"github.com/openziti/ziti/controller/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/pki"
)

// Cluster makes the embedded controller a member of an OpenZiti controller cluster. Its state then lives in
// raft (DIR/raft: raft.db holds the log, ctrl-ha.db the replicated bbolt database) instead of DIR/ctrl.db, its
// control-plane listener also carries the raft mesh between controllers, and its API serves OIDC so that an
// SDK's session is good at every member.
type Cluster struct {
	// Join is the control-plane address (tls:HOST:PORT) of a member of an existing cluster. This controller
	// asks that member to add it as a voter and then takes everything else from the cluster. Its directory
	// must already hold the cluster's CA and admin secret (CopyClusterSecrets). Empty: this controller
	// initialises a new cluster on first start, with itself as the only member (an existing lone controller's
	// ctrl.db is migrated into it).
	Join string
}

// clusterSecrets are the files every member of one cluster shares: the overlay CA (members trust each other's
// certificates, and any member signs enrollments) and the password of the administrator the cluster replicates.
var clusterSecrets = []string{"pki/ca.cert", "pki/ca.key", "admin.secret"}

// CopyClusterSecrets copies the files a new member needs from an existing member's overlay directory (src) to
// the new member's (dst): the overlay CA certificate and key and the admin secret. Across machines, copy the
// same three files by other means.
func CopyClusterSecrets(src, dst string) error {
	if err := os.MkdirAll(filepath.Join(dst, "pki"), 0o700); err != nil {
		return fmt.Errorf("zitictrl: %w", err)
	}
	for _, name := range clusterSecrets {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			return fmt.Errorf("zitictrl: copy cluster secrets: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dst, name), b, 0o600); err != nil {
			return fmt.Errorf("zitictrl: copy cluster secrets: %w", err)
		}
	}
	return nil
}

// ClusterSecretFiles are the paths, relative to an overlay directory, of the files every member of one cluster
// shares: the overlay CA certificate and key and the admin secret.
func ClusterSecretFiles() []string { return slices.Clone(clusterSecrets) }

// EnsureClusterSecrets creates the overlay CA and the admin secret in dir, the overlay directory of a controller
// that has not started yet, unless they exist: a cluster's secrets can then be handed to the other members
// before the first one starts. The controller's own certificate is issued at its first start.
func EnsureClusterSecrets(dir string) error {
	pkiDir := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return fmt.Errorf("zitictrl: %w", err)
	}
	caCert, caKey := filepath.Join(pkiDir, "ca.cert"), filepath.Join(pkiDir, "ca.key")
	if _, err := os.Stat(caCert); errors.Is(err, os.ErrNotExist) {
		ca, err := pki.NewCA("Umbra overlay root", spiffeid.TrustDomain{}, 10*365*24*time.Hour, time.Now())
		if err != nil {
			return fmt.Errorf("zitictrl: %w", err)
		}
		if err := ca.Save(caCert, caKey); err != nil {
			return fmt.Errorf("zitictrl: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("zitictrl: %w", err)
	}
	_, err := ensureSecret(filepath.Join(dir, "admin.secret"))
	return err
}

// checkJoinable refuses to join a cluster without its secrets: a fresh CA would make this controller a
// stranger to the members, and a fresh admin secret would not log in to the replicated administrator.
func checkJoinable(cfg Config) error {
	if cfg.Cluster == nil || cfg.Cluster.Join == "" {
		return nil
	}
	for _, name := range clusterSecrets {
		if _, err := os.Stat(filepath.Join(cfg.Dir, name)); err != nil {
			return fmt.Errorf("zitictrl: %s has no %s: copy the cluster's CA and admin secret from a member's overlay "+
				"directory before joining (CopyClusterSecrets)", cfg.Dir, name)
		}
	}
	return nil
}

// ensureMemberCert makes sure the controller certificate is one a cluster accepts: OpenZiti takes a member's id
// from the spiffe://TD/controller/ID URI SAN and requires the subject CN to be the same ID
// (config.ValidateSpiffeId). A joining controller has no certificate yet; a lone controller's has another CN.
func ensureMemberCert(cfg Config, ca *pki.CA) error {
	b, err := os.ReadFile(filepath.Join(cfg.Dir, "pki", "ctrl.chain.pem"))
	if errors.Is(err, os.ErrNotExist) {
		id := randomHex(6)
		return issueControllerCert(cfg, ca, id, id)
	}
	if err != nil {
		return fmt.Errorf("zitictrl: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return fmt.Errorf("zitictrl: %s/pki/ctrl.chain.pem holds no certificate", cfg.Dir)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return fmt.Errorf("zitictrl: controller certificate: %w", err)
	}
	id := ""
	for _, u := range leaf.URIs {
		if u.Scheme == "spiffe" && strings.HasPrefix(u.Path, "/controller/") {
			id = strings.TrimPrefix(u.Path, "/controller/")
		}
	}
	if id != "" && leaf.Subject.CommonName == id {
		return nil
	}
	if id == "" {
		id = randomHex(6)
	}
	return issueControllerCert(cfg, ca, id, id)
}

// migrateIntoCluster says whether this start initialises a cluster from the lone controller's database: OpenZiti
// bootstraps raft from the `db` configured beside `cluster` while raft holds nothing yet.
func migrateIntoCluster(cfg Config, dir string) bool {
	if cfg.Cluster == nil || cfg.Cluster.Join != "" {
		return false
	}
	if _, err := os.Stat(filepath.Join(dir, "ctrl.db")); err != nil {
		return false
	}
	_, err := os.Stat(filepath.Join(dir, "raft", "raft.db"))
	return errors.Is(err, os.ErrNotExist)
}

// raftController is the controller's raft member, nil for a lone controller.
func (c *Controller) raftController() *raft.Controller {
	rc, _ := c.fabric.GetCommandDispatcher().(*raft.Controller)
	return rc
}

// join asks the member at addr to add this controller to the cluster (as `ziti agent cluster add` does on an
// uninitialised controller), then waits until the cluster's state, the administrator included, has arrived.
func (c *Controller) join(ctx context.Context, addr string) error {
	rc := c.raftController()
	if rc == nil {
		return errors.New("zitictrl: joining a cluster needs a clustered controller")
	}
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if !rc.IsBootstrapped() {
		req := &cmd_pb.AddPeerRequest{Addr: rc.Config.AdvertiseAddress.String(), Id: c.MemberID(), IsVoter: true}
		for {
			err := rc.ForwardToAddr(addr, req)
			if err == nil {
				break
			}
			c.log.Info("asking the overlay cluster to add this controller", "member", addr, "err", err)
			select {
			case <-ctx.Done():
				return fmt.Errorf("zitictrl: join the overlay cluster at %s: %v; check that address and that the "+
					"member runs with the same CA", addr, err)
			case <-time.After(time.Second):
			}
		}
	}
	for {
		admin, err := c.edge.AppEnv.Managers.Identity.ReadDefaultAdmin()
		if err != nil && !boltz.IsErrNotFoundErr(err) {
			return fmt.Errorf("zitictrl: read default admin: %w", err)
		}
		if admin != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("zitictrl: joined the overlay cluster at %s, but its state did not arrive: %w", addr, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ClusterMember is one controller of an overlay cluster, as its raft configuration lists it.
type ClusterMember struct {
	ID, Addr  string
	Voter     bool
	Leader    bool
	Connected bool
}

// MemberID is this controller's id: the last segment of its certificate's spiffe://TD/controller/ID.
func (c *Controller) MemberID() string { return c.fabric.GetId().Token }

// Clustered says whether the controller runs as a cluster member.
func (c *Controller) Clustered() bool { return c.raftController() != nil }

// ClusterMembers lists the members of the controller's cluster.
func (c *Controller) ClusterMembers() ([]ClusterMember, error) {
	rc := c.raftController()
	if rc == nil {
		return nil, errors.New("zitictrl: the overlay controller is not clustered")
	}
	members, err := rc.ListMembers()
	if err != nil {
		return nil, fmt.Errorf("zitictrl: list cluster members: %w", err)
	}
	out := make([]ClusterMember, 0, len(members))
	for _, m := range members {
		out = append(out, ClusterMember{ID: m.Id, Addr: m.Addr, Voter: m.Voter, Leader: m.Leader, Connected: m.Connected})
	}
	return out, nil
}

// AddMember adds the controller at addr (tls:HOST:PORT, started with the cluster's CA) to the cluster as a voter.
func (c *Controller) AddMember(addr string) error {
	rc := c.raftController()
	if rc == nil {
		return errors.New("zitictrl: the overlay controller is not clustered")
	}
	if err := rc.Join(&cmd_pb.AddPeerRequest{Addr: addr, IsVoter: true}); err != nil {
		return fmt.Errorf("zitictrl: add cluster member %s: %w", addr, err)
	}
	return nil
}

// RemoveMember removes the member with the given id from the cluster.
func (c *Controller) RemoveMember(id string) error {
	rc := c.raftController()
	if rc == nil {
		return errors.New("zitictrl: the overlay controller is not clustered")
	}
	if err := rc.RemoveServer(id); err != nil {
		return fmt.Errorf("zitictrl: remove cluster member %s: %w", id, err)
	}
	return nil
}
