package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/relay"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/metricsserve"
	"github.com/umbra-mesh/umbra/workgroups"
)

// The controller's metrics (docs/metrics.md). Counters count what this process did since it started, as
// Prometheus counters do; what must be right after a restart (sessions by state, the audit chain's length) is
// read from the stores. No label names an identity, a session or a message type a sender chose: the reasons
// and outcomes are the relay's and the enrollment endpoint's own codes.

var _ relay.Observer = (*metrics)(nil)

// latencyBuckets span an fsynced JetStream append (about 0.2 ms here) to the relay's 10 s record timeout.
var latencyBuckets = prometheus.ExponentialBuckets(0.00005, 2, 18) // 50 µs … 6.6 s

// metrics are the controller's and its relay's metrics. A nil *metrics keeps none.
type metrics struct {
	accepted    prometheus.Counter
	refused     *prometheus.CounterVec
	delivered   prometheus.Counter
	appendTime  prometheus.Histogram
	ackTime     *prometheus.HistogramVec
	revocations prometheus.Counter
	enrollments *prometheus.CounterVec
	suppressed  *prometheus.CounterVec
	alerts      *prometheus.CounterVec
	webhook     *prometheus.CounterVec
	terminators *prometheus.CounterVec
	stores      *storeCollector
	overlay     *overlayCollector
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "umbra_relay_envelopes_accepted_total",
			Help: "Envelopes the relay stored, recorded and acknowledged (retries of a recorded envelope not counted).",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_relay_envelopes_refused_total",
			Help: "Envelopes the relay did not store, by the code it answered (duplicate: the id was already recorded).",
		}, []string{"reason"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "umbra_relay_envelopes_delivered_total",
			Help: "Envelopes a recipient confirmed (a redelivery counts again).",
		}),
		appendTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "umbra_relay_append_seconds", Help: "Time the envelope store took to append an envelope.",
			Buckets: latencyBuckets,
		}),
		ackTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "umbra_relay_ack_seconds",
			Help:    "Time from reading a sender's frame to writing its answer, by outcome (accepted, duplicate, refused).",
			Buckets: latencyBuckets,
		}, []string{"outcome"}),
		revocations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "umbra_controller_revocations_total", Help: "Identities revoked.",
		}),
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_controller_enrollments_total",
			Help: "Enrollment requests by outcome: ok, or the code they were refused with.",
		}, []string{"outcome"}),
		suppressed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_controller_refusal_records_suppressed_total",
			Help: "Refusals past an identity's per-minute share that were counted into a summary record instead of recorded one by one, by reason.",
		}, []string{"reason"}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_controller_anomaly_alerts_total",
			Help: "Anomaly alerts this controller raised, by rule.",
		}, []string{"rule"}),
		webhook: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_controller_alert_webhook_total",
			Help: "Alert webhook deliveries by outcome: delivered, failed (given up) or dropped (the queue was full).",
		}, []string{"outcome"}),
		terminators: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "umbra_overlay_terminators_total",
			Help: "Terminators (a host's bind of a service at a router) the overlay's store gained (created) or lost (deleted), as this controller applied them.",
		}, []string{"event"}),
		stores:  newStoreCollector(),
		overlay: newOverlayCollector(),
	}
	for _, c := range []prometheus.Collector{m.accepted, m.refused, m.delivered, m.appendTime, m.ackTime, m.revocations,
		m.enrollments, m.suppressed, m.alerts, m.webhook, m.terminators, m.stores, m.overlay} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("controller: metrics: %w", err)
		}
	}
	// The series every controller has, shown at zero from the start.
	for _, outcome := range []string{"accepted", "duplicate", "refused"} {
		m.ackTime.WithLabelValues(outcome)
	}
	m.enrollments.WithLabelValues("ok")
	for _, e := range []string{"created", "deleted"} {
		m.terminators.WithLabelValues(e)
	}
	return m, nil
}

// terminatorChanged counts a terminator the overlay's store gained (created) or lost.
func (m *metrics) terminatorChanged(created bool) {
	e := "deleted"
	if created {
		e = "created"
	}
	m.terminators.WithLabelValues(e).Inc()
}

// Appended is relay.Observer's: an envelope store append took d.
func (m *metrics) Appended(d time.Duration) {
	if m != nil {
		m.appendTime.Observe(d.Seconds())
	}
}

// Answered is relay.Observer's: a frame was answered with ack, d after it was read.
func (m *metrics) Answered(ack api.RelayAck, d time.Duration) {
	if m == nil {
		return
	}
	outcome := "accepted"
	switch {
	case ack.OK && !ack.Duplicate:
		m.accepted.Inc()
	case ack.OK:
		outcome = "duplicate"
		m.refused.WithLabelValues(api.CodeDuplicate).Inc()
	default:
		outcome = "refused"
		code := ack.Code
		if code == "" {
			code = api.CodeInternal
		}
		m.refused.WithLabelValues(code).Inc()
	}
	m.ackTime.WithLabelValues(outcome).Observe(d.Seconds())
}

// Delivered is relay.Observer's: a recipient confirmed an envelope.
func (m *metrics) Delivered() {
	if m != nil {
		m.delivered.Inc()
	}
}

// revoked counts an identity that was revoked (not one revoked again).
func (m *metrics) revoked() {
	if m != nil {
		m.revocations.Inc()
	}
}

// enrolled counts an enrollment request's outcome: ok for nil, else the code the caller was answered.
func (m *metrics) enrolled(err error) {
	if m == nil {
		return
	}
	outcome := "ok"
	if err != nil {
		outcome = api.CodeInternal
		if f := (*fault)(nil); errors.As(err, &f) {
			outcome = f.code
		}
	}
	m.enrollments.WithLabelValues(outcome).Inc()
}

// suppressedRefusal counts a refusal the refusal limiter left to its window's summary.
func (m *metrics) suppressedRefusal(code string) {
	if m != nil {
		m.suppressed.WithLabelValues(code).Inc()
	}
}

// alerted counts an anomaly alert of rule.
func (m *metrics) alerted(rule string) {
	if m != nil {
		m.alerts.WithLabelValues(rule).Inc()
	}
}

// hooked counts an alert webhook delivery's outcome.
func (m *metrics) hooked(outcome string) {
	if m != nil {
		m.webhook.WithLabelValues(outcome).Inc()
	}
}

// storeCollector reads, at each scrape, what the stores hold: sessions by state and the audit chain's length.
// Until the controller has opened its stores it reports neither.
type storeCollector struct {
	sessionsDesc *prometheus.Desc
	chainDesc    *prometheus.Desc
	src          atomic.Pointer[storeSources]
}

// storeSources are what storeCollector reads.
type storeSources struct {
	sessions *sessionCounts
	audit    jetstream.Stream
}

// scrapeTimeout bounds the store reads of one scrape.
const scrapeTimeout = 5 * time.Second

// sessionStates are the states reported, every one of them also when no session is in it.
var sessionStates = []workgroups.State{workgroups.StateProposed, workgroups.StateHeld, workgroups.StateAccepted,
	workgroups.StateActive, workgroups.StateClosed, workgroups.StateRejected}

func newStoreCollector() *storeCollector {
	return &storeCollector{
		sessionsDesc: prometheus.NewDesc("umbra_controller_sessions", "Sessions by state, as the session store holds them.",
			[]string{"state"}, nil),
		chainDesc: prometheus.NewDesc("umbra_controller_audit_chain_length",
			"Records in the audit chain: the sequence number of its last record.", nil, nil),
	}
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.sessionsDesc
	ch <- c.chainDesc
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	src := c.src.Load()
	if src == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	if counts, err := src.sessions.counts(ctx); err != nil {
		ch <- prometheus.NewInvalidMetric(c.sessionsDesc, fmt.Errorf("reading sessions: %w", err))
	} else {
		for _, st := range sessionStates {
			ch <- prometheus.MustNewConstMetric(c.sessionsDesc, prometheus.GaugeValue, float64(counts[st]), string(st))
		}
	}
	if info, err := src.audit.Info(ctx); err != nil {
		ch <- prometheus.NewInvalidMetric(c.chainDesc, fmt.Errorf("reading the audit stream: %w", err))
	} else {
		ch <- prometheus.MustNewConstMetric(c.chainDesc, prometheus.GaugeValue, float64(info.State.LastSeq))
	}
}

// sessionCounts keeps the number of sessions in each state from a watch of the sessions bucket. A watch first
// delivers every session as stored, so the counts are right from the start, also after a restart; until then,
// and while the watch is down, counts reads the bucket itself.
type sessionCounts struct {
	sessions table[workgroups.Session]
	log      *slog.Logger

	mu      sync.Mutex
	current bool                        // the watch has delivered the bucket's contents
	byKey   map[string]workgroups.State // every session's state, while current
	byState map[workgroups.State]int
}

func newSessionCounts(sessions table[workgroups.Session], log *slog.Logger) *sessionCounts {
	return &sessionCounts{sessions: sessions, log: log}
}

// counts returns the number of sessions in each state.
func (c *sessionCounts) counts(ctx context.Context) (map[workgroups.State]int, error) {
	c.mu.Lock()
	if c.current {
		out := make(map[workgroups.State]int, len(c.byState))
		for st, n := range c.byState {
			out[st] = n
		}
		c.mu.Unlock()
		return out, nil
	}
	c.mu.Unlock()
	all, err := c.sessions.all(ctx)
	if err != nil {
		return nil, err
	}
	out := map[workgroups.State]int{}
	for _, s := range all {
		out[s.State]++
	}
	return out, nil
}

// run keeps the counts current until ctx ends, watching again after a failure.
func (c *sessionCounts) run(ctx context.Context) {
	for ctx.Err() == nil {
		err := c.watch(ctx)
		c.mu.Lock()
		c.current, c.byKey, c.byState = false, nil, nil
		c.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("watching sessions for metrics failed; scrapes read the store meanwhile", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (c *sessionCounts) watch(ctx context.Context) error {
	w, err := c.sessions.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch sessions: %w", err)
	}
	defer w.Stop()
	byKey, byState := map[string]workgroups.State{}, map[workgroups.State]int{}
	current := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch sessions: updates ended")
			}
			if e == nil { // the end of the initial values
				current = true
				c.mu.Lock()
				c.current, c.byKey, c.byState = true, byKey, byState
				c.mu.Unlock()
				continue
			}
			var st struct {
				State workgroups.State `json:"state"`
			}
			put := e.Operation() == jetstream.KeyValuePut
			if put {
				if err := json.Unmarshal(e.Value(), &st); err != nil {
					return fmt.Errorf("session %s: %w", e.Key(), err)
				}
			}
			if current {
				c.mu.Lock()
			}
			if old, ok := byKey[e.Key()]; ok {
				byState[old]--
				delete(byKey, e.Key())
			}
			if put {
				byKey[e.Key()] = st.State
				byState[st.State]++
			}
			if current {
				c.mu.Unlock()
			}
		}
	}
}

// checkMetricsListen refuses an address that is not loopback unless remote metrics are allowed.
func checkMetricsListen(addr string, allowRemote bool) error {
	if err := metricsserve.CheckAddr(addr, allowRemote, "--metrics-allow-remote, Config.MetricsAllowRemote"); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	return nil
}

// startMetrics starts reading the stores for scrapes and, with Config.MetricsListen, serves /metrics there
// until ctx ends.
func (s *Server) startMetrics(ctx context.Context, js jetstream.JetStream) error {
	if s.metrics == nil {
		return nil
	}
	// The audit trail is opened on the default stream name (Config.auditOptions).
	auditStream, err := streamOf(ctx, js, audit.DefaultStream)
	if err != nil {
		return fmt.Errorf("controller: metrics: audit stream: %w", err)
	}
	counts := newSessionCounts(s.gov.sessions, s.log)
	s.metrics.stores.src.Store(&storeSources{sessions: counts, audit: auditStream})
	s.tasks.spawn(func() { counts.run(ctx) })
	if s.cfg.MetricsListen == "" {
		return nil
	}
	h := promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	addr, done, err := metricsserve.Start(ctx, s.cfg.MetricsListen, h, s.log)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	s.metricsAddr = addr
	// Run waits for the server to stop.
	s.tasks.spawn(func() { <-done })
	return nil
}

// MetricsAddr is the address /metrics is served on (Config.MetricsListen, its port resolved), once Ready is
// closed; nil without MetricsListen.
func (s *Server) MetricsAddr() net.Addr { return s.metricsAddr }
