package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/anomaly"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/webhook"
)

// Anomaly alerts: the controller follows its own audit trail and feeds every record to the detector of package
// anomaly, which keeps each identity's baseline. An alert it raises becomes, in this order, an anomaly.alert
// audit record (written by the follower itself, so alerts are as durable and as ordered as the trail), a message
// on the embedded NATS server's subject umbra.alerts.<org>, and a POST to the webhook if one is configured
// (queued: a slow or dead endpoint never holds up the follower, let alone the record path, which the follower
// only reads behind). An alert of the automatic suspension policy then suspends the identity through the kill
// switch, with the controller as the actor and the rule as the reason.
//
// Several controllers on one NATS cluster all follow the same trail, and each learns every identity's baseline
// from it; only the one holding the recorder's lease (leadership.go) raises alerts, so an alert is recorded,
// published, posted and acted on once, not once per controller. The others' detectors have learned from the same
// records all along, so the one that takes over the lease raises the next alert as the old holder would have.
// An alert due in the moment of the handover may be raised by neither (the holder died after reading its record
// and before raising it) or, rarely, by both (a holder paused past its term): the lease is about who does the
// work, not a fence. Every controller's API answers every alert, from the anomaly.alert records.
//
// The list the API answers is derived from the trail too: the follower keeps the latest anomaly.alert records it
// reads. On start it reads the trail from one learning period (plus a window) back, learning the baselines
// again without raising alerts for what it had seen before.

const (
	// kindAnomalyAlert is the audit kind of an alert.
	kindAnomalyAlert = "anomaly.alert"
	// AlertSubjectPrefix is the NATS subject prefix alerts are published under: umbra.alerts.<org>.
	AlertSubjectPrefix = "umbra.alerts"
	// alertsKept bounds the alerts kept for the API.
	alertsKept = 1000
	// maxAlertsWait caps one long poll of the alerts, well within the API server's write timeout.
	maxAlertsWait = 20 * time.Second
	// defaultAlertsPage is how many alerts a first request gets by default.
	defaultAlertsPage = 100
)

// alerter follows the trail and acts on the alerts.
type alerter struct {
	det     *anomaly.Detector
	trail   *audit.Log
	nc      *nats.Conn
	hook    *webhook.Sender // nil: no webhook
	self    string          // the controller's SPIFFE ID: its own records are not an identity's behaviour
	suspend func(ctx context.Context, id spiffeid.ID, reason string) error
	counted func(rule string) // counts an alert raised; nil: not counted
	lead    *leadership       // raises alerts only while it leads (nil: always, a lone controller)
	log     *slog.Logger

	suspending sync.WaitGroup // automatic suspensions under way

	mu      sync.Mutex
	recent  []api.Alert
	changed chan struct{}
}

// newAlerts makes the anomaly detector's follower (nil when it is off) and starts the webhook sender; startAlerts
// starts the follower, once the overlay is up (an automatic suspension needs it).
func (s *Server) newAlerts(ctx context.Context) (*alerter, error) {
	if s.cfg.AnomalyOff {
		return nil, nil
	}
	det, err := anomaly.New(s.cfg.Anomaly)
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	a := &alerter{det: det, trail: s.gov.audit, nc: s.nc, self: s.controllerID.String(), log: s.log,
		changed: make(chan struct{}), suspend: s.autoSuspend, counted: s.metrics.alerted, lead: s.gov.lead}
	if s.cfg.AlertWebhook != "" {
		wc := webhook.Config{URL: s.cfg.AlertWebhook, Secret: []byte(s.cfg.AlertWebhookSecret), Key: s.auditKey, Logger: s.log,
			Outcome: s.metrics.hooked}
		if a.hook, err = webhook.New(wc); err != nil {
			return nil, fmt.Errorf("controller: alert webhook: %w", err)
		}
		s.tasks.spawn(func() { a.hook.Run(ctx) })
	}
	return a, nil
}

func (s *Server) startAlerts(ctx context.Context) {
	if a := s.alerts; a != nil {
		replayed, since := a.replayUntil(ctx, time.Now())
		s.tasks.spawn(func() { a.run(ctx, replayed, since) })
	}
}

// autoSuspend suspends id for the policy, unless it is an administrator (an alert is all an administrator gets:
// suspending it could lock the platform out).
func (s *Server) autoSuspend(ctx context.Context, id spiffeid.ID, reason string) error {
	rec, _, err := s.ids.get(ctx, id)
	if err != nil {
		return err
	}
	if rec.Admin || id == s.controllerID {
		return fmt.Errorf("%s is an administrator: not suspended automatically", id)
	}
	_, err = s.suspend(ctx, s.controllerID, id, reason)
	return err
}

// replayUntil reads where the trail ends now: the records up to it were stored before the alerter started, and
// are learned from, not alerted on. It also says where to start reading: one learning period (plus a window)
// back, or now if the trail's state cannot be read.
func (a *alerter) replayUntil(ctx context.Context, now time.Time) (last uint64, since time.Time) {
	cfg := a.det.Config()
	st, err := a.trail.Stats(ctx)
	if err != nil {
		a.log.Warn("anomaly detector: reading the audit trail's state failed; learning from new records only", "err", err)
		return 0, now
	}
	return st.LastSeq, now.Add(-cfg.Learn - cfg.Window)
}

// run follows the trail from since until ctx ends, starting again after a failure where it stopped. Records up
// to replayed are learned from only.
func (a *alerter) run(ctx context.Context, replayed uint64, since time.Time) {
	defer a.suspending.Wait()
	var done uint64 // the last record fed
	for failed := 0; ctx.Err() == nil; {
		err := a.trail.Follow(ctx, done, since, func(r audit.Record) error {
			done = r.Seq
			a.observe(ctx, r, r.Seq <= replayed)
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		failed++
		level := slog.LevelError
		if errors.Is(err, jetstream.ErrNoHeartbeat) { // its consumer lost: followed again at once
			level = slog.LevelWarn
		}
		a.log.Log(ctx, level, "anomaly detector: following the audit trail failed; following again", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(time.Duration(failed)*200*time.Millisecond, 5*time.Second)):
		}
	}
}

// observe feeds r to the detector and raises its alerts, unless r is replayed or another controller raises them.
func (a *alerter) observe(ctx context.Context, r audit.Record, replay bool) {
	if r.Kind == kindAnomalyAlert {
		var al api.Alert
		if err := json.Unmarshal(r.Data, &al); err == nil {
			al.Cursor = r.Seq
			a.keep(al)
		}
		return
	}
	if r.Actor == a.self {
		return
	}
	alerts := a.det.Observe(r)
	if replay || !a.lead.leads() {
		return
	}
	for _, al := range alerts {
		a.raise(ctx, al)
	}
}

// raise records, publishes and posts one alert, and suspends its identity if the policy says so.
func (a *alerter) raise(ctx context.Context, al anomaly.Alert) {
	cfg := a.det.Config()
	out := api.Alert{Time: al.Time.UTC(), SPIFFEID: al.Identity, Org: orgOfID(al.Identity), Rule: string(al.Rule),
		Severity: al.Severity, Observed: al.Observed, Baseline: al.Baseline, Threshold: al.Threshold, Item: al.Item,
		Suspend: al.Suspend, Message: al.Message}
	switch al.Rule {
	case anomaly.RuleRate, anomaly.RuleRefusals:
		out.Window = cfg.Window.String()
	case anomaly.RuleAutoSuspend:
		out.Window = cfg.AutoSuspendWindow.String()
	}
	rec, err := a.trail.Append(ctx, audit.Record{Kind: kindAnomalyAlert, Actor: a.self, Reason: al.Identity + ": " + al.Message,
		Data: jsonRaw(out)})
	if err != nil {
		// Published and posted even so: an alert that cannot be recorded is still an alert.
		a.log.Error("anomaly alert not recorded in the audit trail", "spiffe_id", al.Identity, "rule", al.Rule, "err", err)
	} else {
		out.Cursor = rec.Seq
	}
	a.log.Info("anomaly alert", "spiffe_id", al.Identity, "rule", al.Rule, "message", al.Message)
	if a.counted != nil {
		a.counted(string(al.Rule))
	}
	body := jsonRaw(out)
	if err := a.nc.Publish(AlertSubjectPrefix+"."+out.Org, body); err != nil {
		a.log.Warn("anomaly alert not published on NATS", "err", err)
	}
	if a.hook != nil && !a.hook.Send(body) {
		a.log.Warn("anomaly alert webhook queue full; alert not posted", "spiffe_id", al.Identity, "rule", al.Rule)
	}
	if !al.Suspend {
		return
	}
	id, err := spiffeid.FromString(al.Identity)
	if err != nil {
		return
	}
	reason := "automatic suspension, rule auto-suspend-refusals: " + al.Message
	// The suspension takes the overlay's time; the follower goes on meanwhile.
	a.suspending.Add(1)
	go func() {
		defer a.suspending.Done()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := a.suspend(sctx, id, reason); err != nil {
			a.log.Warn("automatic suspension not done", "spiffe_id", id.String(), "err", err)
		}
	}()
}

// orgOfID is the organisation segment of a SPIFFE ID the controller issued (spiffe://td/<org>/<kind>/<name>).
func orgOfID(id string) string {
	p, err := spiffeid.FromString(id)
	if err != nil {
		return ""
	}
	org, _, _ := strings.Cut(strings.TrimPrefix(p.Path(), "/"), "/")
	return org
}

// keep adds an alert read from the trail to the list the API answers.
func (a *alerter) keep(al api.Alert) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if n := len(a.recent); n > 0 && a.recent[n-1].Cursor >= al.Cursor {
		return // read again after a follow started over
	}
	if len(a.recent) == alertsKept {
		a.recent = append(a.recent[:0], a.recent[1:]...)
	}
	a.recent = append(a.recent, al)
	close(a.changed)
	a.changed = make(chan struct{})
}

// visible answers the alerts org may see (every alert for ""), after the cursor (or the latest limit with
// after 0), and a channel closed at the next alert.
func (a *alerter) visible(org string, after uint64, limit int) (api.Alerts, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := api.Alerts{Cursor: after, Alerts: []api.Alert{}}
	for _, al := range a.recent {
		if (org == "" || al.Org == org) && al.Cursor > after {
			out.Alerts = append(out.Alerts, al)
		}
	}
	if len(out.Alerts) > limit {
		if after == 0 {
			out.Alerts = out.Alerts[len(out.Alerts)-limit:]
		} else {
			out.Alerts = out.Alerts[:limit]
		}
	}
	if n := len(out.Alerts); n > 0 {
		out.Cursor = out.Alerts[n-1].Cursor
	}
	return out, a.changed
}

// serveAlerts answers PathAlerts: administrators only, an organisation administrator its organisation's.
func (s *Server) serveAlerts(w http.ResponseWriter, r *http.Request) {
	c := r.Context().Value(callerKey{}).(caller)
	if !c.rec.Admin {
		s.fail(w, r, failf(http.StatusForbidden, api.CodeForbidden, "%s is not an administrator", c.id))
		return
	}
	if s.alerts == nil {
		s.fail(w, r, failf(http.StatusNotFound, api.CodeNotFound, "this controller runs without the anomaly detector (started with it off)"))
		return
	}
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		var err error
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			s.fail(w, r, failf(http.StatusBadRequest, api.CodeBadRequest, "after must be a cursor an earlier answer gave (a whole number)"))
			return
		}
	}
	limit := defaultAlertsPage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > alertsKept {
			s.fail(w, r, failf(http.StatusBadRequest, api.CodeBadRequest, "limit must be a number from 1 to %d", alertsKept))
			return
		}
		limit = n
	}
	var wait time.Duration
	if v := q.Get("wait"); v != "" {
		var err error
		if wait, err = time.ParseDuration(v); err != nil || wait < 0 {
			s.fail(w, r, failf(http.StatusBadRequest, api.CodeBadRequest, "wait must be a duration such as 15s"))
			return
		}
	}
	wait = min(wait, maxAlertsWait)
	org := ""
	if !isPlatformAdmin(c) {
		org = c.rec.Org
	}
	page, changed := s.alerts.visible(org, after, limit)
	if len(page.Alerts) == 0 && wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
	waiting:
		for {
			select {
			case <-changed:
				if page, changed = s.alerts.visible(org, after, limit); len(page.Alerts) > 0 {
					break waiting
				}
			case <-t.C:
				break waiting
			case <-r.Context().Done():
				return
			}
		}
	}
	reply(w, http.StatusOK, page)
}
