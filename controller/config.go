package controller

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/controller/anomaly"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/envstore"
)

// The per-identity caps on sessions when Config leaves them zero.
const (
	defaultMaxPendingProposals = 64
	defaultMaxOpenSessions     = 256
)

// Config configures a Server. The zero value of each optional field selects the documented default.
type Config struct {
	// DataDir holds all state: overlay database and PKI, SPIFFE CA, token and audit checkpoint keys, JetStream
	// store, admin identity. Required.
	DataDir string
	// TrustDomain of the SVIDs this controller issues. Default "umbra.local". Fixed once the data dir exists.
	TrustDomain string
	// Host is the interface the controller's ports bind to. Default 127.0.0.1.
	Host string
	// AdvertiseHost is how routers and workloads reach this controller. Default Host (127.0.0.1 if Host is a
	// wildcard).
	AdvertiseHost string
	// CtrlPort is the overlay control plane port (routers). Default 6262.
	CtrlPort int
	// OverlayAPIPort serves the overlay's edge API (SDK authentication). Default 1280.
	OverlayAPIPort int
	// EnrollPort serves enrollment, the one endpoint reachable without an identity. Default 1281.
	EnrollPort int
	// SVIDTTL is the lifetime of issued SVIDs; agents renew at half of it. Default 1h: a short life bounds how
	// long a stolen SVID is worth anything, on top of the revocation feed.
	SVIDTTL time.Duration
	// MaxIdentityAge is how long after its enrollment an identity may still renew its SVID through the API;
	// after that it must be enrolled again with a token from an administrator (re-enrollment starts the age
	// over). Default 30 days. There is no "never": an identity that renews forever is a stolen key that lives
	// forever. The controller's own identity and the administrator file in the data directory are renewed from
	// the CA, not through the API, and are not limited by it.
	MaxIdentityAge time.Duration
	// ResetAdmin is break-glass recovery: on start, issue a new platform administrator, make it current, revoke
	// every earlier one and write it to the administrator file in the data directory. Default false. Use it once,
	// then start without it: each start with it mints another administrator.
	ResetAdmin bool
	// RefusalRecordsPerMinute is how many refusals of one identity the relay records one by one in a minute;
	// the rest of that minute are counted into one summary record, so that a member sending bad frames cannot
	// fill the disk with fsynced records. Default 30.
	RefusalRecordsPerMinute int
	// CheckpointInterval is how often the controller signs a checkpoint of the audit chain's head, when records
	// were added since the last one; it also signs one on every export. Default 1 minute.
	CheckpointInterval time.Duration
	// RecorderLease is, when controllers share a NATS cluster (NATSClusterListen), how long the lease of the one
	// that records envelopes in the audit trail and raises anomaly alerts lives unrenewed: it is renewed every
	// third of it, and another controller takes over about 1 1/3 of it after the holder died (at once after it
	// stopped). Default 3 s. Unused by a lone controller. Negative is refused.
	RecorderLease time.Duration
	// MaxPendingProposals is how many of one identity's proposals may await their providers at once (held, or
	// proposed and not yet answered). Default 64. Past it, propose is refused with HTTP 429, code
	// too_many_proposals, until the provider answers one or the consumer closes one. Negative is refused: there
	// is no "unlimited"; raise the number instead.
	MaxPendingProposals int
	// MaxOpenSessions is how many open sessions (proposed, held, accepted or active) one identity may hold as
	// consumer at once; pending proposals count towards it too. Default 256. Past it, propose is refused with
	// HTTP 429, code too_many_sessions, until the identity closes one. The count is kept in JetStream, so it
	// holds across restarts. Negative is refused, as for MaxPendingProposals.
	MaxOpenSessions int
	// ProposalsPerMinute is how many proposals one identity may make in a minute, counted in JetStream so that
	// every controller sharing the store agrees. Default 60. Past it, propose is refused with HTTP 429, code
	// proposal_rate_limited and a Retry-After header. Negative means no limit.
	ProposalsPerMinute int
	// AuditBytesPerIdentityDay is how many bytes of audit records one identity's actions may cause in a UTC day,
	// counted in JetStream so that every controller sharing the store agrees. Default 8 MiB (8 members spending
	// all of theirs every day fill the default 2 GiB trail in 32 days). Past it, the identity's proposals and
	// envelopes are refused with HTTP 429, code audit_budget_exhausted, until the day ends. Negative means no
	// limit.
	AuditBytesPerIdentityDay int64
	// ClosedSessionRetention is how long a session that ended (closed, expired, rejected or withdrawn) stays in
	// the session table; then a controller loop removes it, and its history stays in the audit trail. Default
	// 7 days. Negative is refused.
	ClosedSessionRetention time.Duration
	// AuditMaxBytes bounds the audit stream on disk. Default audit.DefaultMaxBytes (2 GiB). When the trail is
	// full, new records are refused (and with them every action that needs one): nothing recorded is ever
	// dropped to make room. Export and verify the trail, then archive it (umbra audit archive trims it through
	// the export's checkpoint) or raise the limit (docs/record-path.md, "Retention and archive"). Negative is
	// refused.
	AuditMaxBytes int64
	// EnvelopeMaxBytes bounds the envelope stream on disk. Default envstore.DefaultMaxBytes (2 GiB). When it is
	// full, new envelopes are refused; stored envelopes are never dropped to make room. Negative is refused.
	// JetStream reserves both limits on disk when the streams are created: together with the tables' they must
	// fit within 75% of the disk space free when the controller starts. Raising either limit on an existing data
	// directory takes effect at the next start.
	EnvelopeMaxBytes int64
	// NATSListen, if set (host:port), exposes the embedded NATS server over TCP, with mutual TLS: the server
	// presents a certificate of the SPIFFE CA and admits only clients holding a controller SVID of this trust
	// domain and CA (see natsTLS). Default: no listener.
	NATSListen string
	// ClusterInit makes the embedded overlay controller the first member of a new OpenZiti controller cluster
	// (raft) on its first start: its control-plane listener (AdvertiseHost:CtrlPort, tls:) then also carries the
	// raft mesh, and other controllers join through it (docs/cluster.md). A data directory of a lone controller
	// is moved into the cluster. Default false: a lone overlay controller.
	ClusterInit bool
	// ClusterJoin is the overlay control-plane address (tls:HOST:PORT) of a member of an existing cluster, which
	// this controller asks to add it. Its data directory must hold the cluster's secrets first
	// (InstallClusterSecrets). Exclusive with ClusterInit; once joined, later starts need it still (the
	// controller stays a member) but do not ask again. Default: no cluster.
	ClusterJoin string
	// NATSClusterListen, if set (host:port), makes the embedded NATS server one of a NATS cluster of controllers:
	// it accepts routes from the other controllers' servers here, with mutual TLS (the same certificates and
	// admission as NATSListen: a controller SVID of this trust domain and CA, so the controllers of a cluster
	// share the SPIFFE CA). JetStream then replicates the streams and buckets Replicas times over the cluster
	// (docs/cluster.md). Default: no cluster.
	NATSClusterListen string
	// NATSRoutes are the other controllers' NATSClusterListen addresses (host:port); required with
	// NATSClusterListen. A server learns the rest of the cluster from any of them.
	NATSRoutes []string
	// NATSClusterName is the NATS cluster's name, the same on every controller. Default "umbra".
	NATSClusterName string
	// NATSClusterAdvertise is the host:port the other controllers reach this one's routes at, when it is not
	// NATSClusterListen. Default: NATS gossips the listen address (the interfaces' addresses for a wildcard).
	NATSClusterAdvertise string
	// NATSServerName names this controller's NATS server in the cluster: unique among the controllers, the
	// same across restarts. Default: a name chosen at the first start and kept in the data directory.
	NATSServerName string
	// Replicas is how many copies JetStream keeps of every stream and key-value bucket the controller creates
	// (identities, governance tables, envelopes, audit trail): 1 to 5, at most the number of controllers, and
	// above 1 only with NATSClusterListen. Use 3 in a cluster of three or more: each write then needs two of
	// the three copies. Default 1. Changing it on an existing data directory rescales the streams at the next
	// start.
	Replicas int
	// NATSLazySync turns off fsync-before-acknowledge in JetStream. Default false: every acknowledged write
	// has reached the disk.
	NATSLazySync bool
	// MetricsListen, if set (HOST:PORT), serves the controller's and its relay's metrics (docs/metrics.md) at
	// /metrics in the Prometheus text format, over plain HTTP, to anyone who can reach it. It must be a loopback
	// address unless MetricsAllowRemote is set. Default: no listener.
	MetricsListen string
	// MetricsAllowRemote lets MetricsListen be an address other hosts can reach. Default false.
	MetricsAllowRemote bool
	// MetricsRegistry receives the metrics. Default: a registry of the controller's own when MetricsListen is
	// set, and no metrics at all when neither is. With MetricsListen it must also be a prometheus.Gatherer.
	MetricsRegistry prometheus.Registerer
	// TracerProvider traces the relay: one span per envelope, joined to the sender's trace (docs/tracing.md).
	// Default: no tracing.
	TracerProvider trace.TracerProvider
	// Anomaly sets the thresholds of the anomaly detector and the policy of automatic suspension
	// (docs/posture.md, "Anomalies"). Its zero value selects the defaults of package anomaly, with automatic
	// suspension off.
	Anomaly anomaly.Config
	// AnomalyOff turns the anomaly detector off: no baselines, no alerts. Default false.
	AnomalyOff bool
	// AlertWebhook, if set (an http or https URL), receives every anomaly alert as a signed JSON POST, queued
	// and retried a few times off the detector's path. Default: none.
	AlertWebhook string
	// AlertWebhookSecret signs the webhook's bodies with HMAC-SHA256. Default empty: they are signed with the
	// controller's audit checkpoint key (Ed25519), whose public half `umbra audit key` prints.
	AlertWebhookSecret string
	// GrantUseGranularity is how finely the controller records when each identity last dialed or bound each
	// service it was granted (evidence for the posture's grant-unused check, docs/posture.md): at most one
	// write per identity, service and dial or bind in this time, and a crash loses at most this much evidence.
	// Default 1h.
	GrantUseGranularity time.Duration
	// Logger receives state changes. Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	var err error
	if c.DataDir == "" {
		return c, errors.New("controller: DataDir is required")
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "umbra.local"
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return c, fmt.Errorf("controller: trust domain %q: %w", c.TrustDomain, err)
	}
	if c.Host == "" {
		c.Host = "127.0.0.1"
	}
	if c.AdvertiseHost == "" {
		c.AdvertiseHost = c.Host
		if c.Host == "0.0.0.0" || c.Host == "::" {
			c.AdvertiseHost = "127.0.0.1"
		}
	}
	if c.CtrlPort == 0 {
		c.CtrlPort = 6262
	}
	if c.OverlayAPIPort == 0 {
		c.OverlayAPIPort = 1280
	}
	if c.EnrollPort == 0 {
		c.EnrollPort = 1281
	}
	if c.SVIDTTL == 0 {
		c.SVIDTTL = time.Hour
	}
	if c.SVIDTTL < 10*time.Second {
		return c, fmt.Errorf("controller: SVIDTTL %s is too short (minimum 10s)", c.SVIDTTL)
	}
	if c.MaxIdentityAge == 0 {
		c.MaxIdentityAge = 30 * 24 * time.Hour
	}
	if c.RefusalRecordsPerMinute == 0 {
		c.RefusalRecordsPerMinute = refusalsPerWindow
	}
	if c.RefusalRecordsPerMinute < 0 {
		return c, fmt.Errorf("controller: RefusalRecordsPerMinute %d is negative; give a positive number (default %d)", c.RefusalRecordsPerMinute, refusalsPerWindow)
	}
	if c.MaxIdentityAge < 0 {
		return c, fmt.Errorf("controller: MaxIdentityAge %s is negative; give a positive duration (default 720h)", c.MaxIdentityAge)
	}
	if c.GrantUseGranularity == 0 {
		c.GrantUseGranularity = time.Hour
	}
	if c.GrantUseGranularity < 0 {
		return c, fmt.Errorf("controller: GrantUseGranularity %s is negative; give a positive duration (default 1h)", c.GrantUseGranularity)
	}
	if c.CheckpointInterval == 0 {
		c.CheckpointInterval = time.Minute
	}
	if c.CheckpointInterval < 0 {
		return c, fmt.Errorf("controller: CheckpointInterval %s is negative; give a positive duration (default 1m)", c.CheckpointInterval)
	}
	if c.RecorderLease == 0 {
		c.RecorderLease = defaultLeaseTerm
	}
	if c.RecorderLease < 0 {
		return c, fmt.Errorf("controller: recorder lease (RecorderLease, --recorder-lease) %s is negative; give a positive duration (default %s)", c.RecorderLease, defaultLeaseTerm)
	}
	if c.MaxPendingProposals == 0 {
		c.MaxPendingProposals = defaultMaxPendingProposals
	}
	if c.MaxPendingProposals < 0 {
		return c, fmt.Errorf("controller: MaxPendingProposals %d is negative; give a positive number (default %d)", c.MaxPendingProposals, defaultMaxPendingProposals)
	}
	if c.MaxOpenSessions == 0 {
		c.MaxOpenSessions = defaultMaxOpenSessions
	}
	if c.MaxOpenSessions < 0 {
		return c, fmt.Errorf("controller: MaxOpenSessions %d is negative; give a positive number (default %d)", c.MaxOpenSessions, defaultMaxOpenSessions)
	}
	if c.ProposalsPerMinute == 0 {
		c.ProposalsPerMinute = defaultProposalsPerMinute
	}
	if c.AuditBytesPerIdentityDay == 0 {
		c.AuditBytesPerIdentityDay = defaultAuditBytesPerIdentityDay
	}
	if c.ClosedSessionRetention == 0 {
		c.ClosedSessionRetention = defaultClosedSessionRetention
	}
	if c.ClosedSessionRetention < 0 {
		return c, fmt.Errorf("controller: ClosedSessionRetention %s is negative; give a positive duration (default 168h)", c.ClosedSessionRetention)
	}
	if c.AuditMaxBytes == 0 {
		c.AuditMaxBytes = audit.DefaultMaxBytes
	}
	if c.AuditMaxBytes < 0 {
		return c, fmt.Errorf("controller: AuditMaxBytes %d is negative; give a size in bytes (default %d)", c.AuditMaxBytes, int64(audit.DefaultMaxBytes))
	}
	if c.EnvelopeMaxBytes == 0 {
		c.EnvelopeMaxBytes = envstore.DefaultMaxBytes
	}
	if c.EnvelopeMaxBytes < 0 {
		return c, fmt.Errorf("controller: EnvelopeMaxBytes %d is negative; give a size in bytes (default %d)", c.EnvelopeMaxBytes, int64(envstore.DefaultMaxBytes))
	}
	if c.Anomaly, err = c.Anomaly.WithDefaults(); err != nil {
		return c, fmt.Errorf("controller: %w", err)
	}
	if c.AlertWebhook != "" {
		if u, err := url.Parse(c.AlertWebhook); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, fmt.Errorf("controller: alert webhook %q is not an http or https URL", c.AlertWebhook)
		}
	}
	if err := c.checkCluster(); err != nil {
		return c, err
	}
	if err := checkMetricsListen(c.MetricsListen, c.MetricsAllowRemote); err != nil {
		return c, err
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// auditOptions are the options the audit trail is opened with.
func (c Config) auditOptions() audit.Options {
	return audit.Options{MaxBytes: c.AuditMaxBytes, Replicas: c.Replicas}
}

// envelopeOptions are the options the envelope stream is opened with.
func (c Config) envelopeOptions(stream string) envstore.Options {
	return envstore.Options{Stream: stream, MaxBytes: c.EnvelopeMaxBytes, Replicas: c.Replicas}
}
