package controller_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller"
	"github.com/umbra-mesh/umbra/controller/controllertest"
	"github.com/umbra-mesh/umbra/workgroups"
)

// TestMetricsCountWhatTheControllerDid runs a session through a real controller and router (envelopes
// accepted, one of a type the contract does not allow, one sent twice), enrolls identities (one token twice),
// revokes one identity (twice), and reads /metrics over HTTP: every family counts exactly that.
func TestMetricsCountWhatTheControllerDid(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a controller and a router")
	}
	env, err := controllertest.Start(controllertest.Options{MetricsListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			env.Close()
		}
	})
	addr := env.Server.MetricsAddr()
	if addr == nil {
		t.Fatal("no metrics address although MetricsListen is set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Enrollments: the organisation's administrator and three agents; then one token a second time.
	org, err := env.Admin().Controller().CreateOrg(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	orgAdmin := connect(ctx, t, org.AdminToken)
	tokens := map[string]string{}
	agents := map[string]*agentsdk.Agent{}
	for _, name := range []string{"quoter", "buyer", "spare"} {
		resp, err := orgAdmin.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: "acme", Kind: "agent", Name: name})
		if err != nil {
			t.Fatal(err)
		}
		tokens[name], agents[name] = resp.Token, connect(ctx, t, resp.Token)
	}
	if _, err := agentsdk.Enroll(ctx, tokens["buyer"]); err == nil {
		t.Fatal("a spent enrollment token was accepted again")
	}
	quoter, buyer := agents["quoter"], agents["buyer"]

	wg, err := orgAdmin.Controller().CreateWorkgroup(ctx, "pricing")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []*agentsdk.Agent{quoter, buyer} {
		if _, err := orgAdmin.Controller().AddMember(ctx, wg.ID, a.ID(), ""); err != nil {
			t.Fatal(err)
		}
	}
	ad, err := quoter.Advertise(ctx, workgroups.AgentCard{Name: "Quoter", Version: "1.0", MessageTypes: []string{"quote.*"}},
		workgroups.Terms{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 10,
			AllowedMessageTypes: []string{"quote.request", "quote.response"}, MaxEnvelopeBytes: 4096}, wg.ID)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := buyer.Propose(ctx, ad.ID, workgroups.Proposal{})
	if err != nil {
		t.Fatal(err)
	}

	// Envelopes: two sent once, one sent twice (the second a duplicate), one of a type outside the contract.
	for i := range 2 {
		if _, err := sess.Send(ctx, "quote.request", fmt.Appendf(nil, `{"n":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	id, err := workgroups.NewEnvelopeID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	payload := []byte(`{"n":2}`)
	h := workgroups.Header{ID: id, Session: sess.ID(), From: buyer.ID(), To: quoter.ID(), Type: "quote.request",
		Time: time.Now().UTC(), ContentType: "application/json"}.WithPayload(payload)
	for range 2 {
		if _, err := sess.SendEnvelope(ctx, h, payload); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := sess.Send(ctx, "order.place", []byte(`{}`)); !errors.Is(err, agentsdk.ErrContractViolation) {
		t.Fatalf("a type outside the contract: %v, want a contract violation", err)
	}
	provider, err := quoter.Session(ctx, sess.ID())
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := provider.Receive(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := sess.Close(ctx, "done"); err != nil {
		t.Fatal(err)
	}

	// A revocation, and the same again (not a second revocation).
	for range 2 {
		if _, err := env.Admin().Controller().Revoke(ctx, agents["spare"].ID(), "test"); err != nil {
			t.Fatal(err)
		}
	}

	want := []expect{
		{name: "umbra_relay_envelopes_accepted_total", value: 3},
		{name: "umbra_relay_envelopes_refused_total", labels: "reason=type_not_allowed", value: 1},
		{name: "umbra_relay_envelopes_refused_total", labels: "reason=duplicate", value: 1},
		{name: "umbra_relay_envelopes_refused_total", value: 2}, // no other reason
		{name: "umbra_relay_envelopes_delivered_total", value: 3},
		{name: "umbra_relay_append_seconds", value: 4}, // the duplicate was appended too, and found recorded
		{name: "umbra_relay_ack_seconds", labels: "outcome=accepted", value: 3},
		{name: "umbra_relay_ack_seconds", labels: "outcome=duplicate", value: 1},
		{name: "umbra_relay_ack_seconds", labels: "outcome=refused", value: 1},
		{name: "umbra_controller_sessions", labels: "state=closed", value: 1},
		{name: "umbra_controller_sessions", value: 1}, // no session in any other state
		{name: "umbra_controller_revocations_total", value: 1},
		{name: "umbra_controller_enrollments_total", labels: "outcome=ok", value: 4},
		{name: "umbra_controller_enrollments_total", labels: "outcome=" + api.CodeTokenUsed, value: 1},
		{name: "umbra_controller_enrollments_total", value: 5},
	}
	// The last of these events (the delivery confirmations, the session table's watch) land a moment after
	// the calls above return: scrape until every value is as expected, or report the last scrape.
	var fams map[string]*dto.MetricFamily
	var wrong []string
	for deadline := time.Now().Add(30 * time.Second); ; {
		fams = scrape(ctx, t, "http://"+addr.String()+"/metrics")
		if wrong = check(fams, want); len(wrong) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(wrong) > 0 {
		t.Fatalf("metrics differ from what happened:\n%s", strings.Join(wrong, "\n"))
	}
	if sum := fams["umbra_relay_append_seconds"].GetMetric()[0].GetHistogram().GetSampleSum(); sum <= 0 {
		t.Errorf("append seconds sum %v, want > 0", sum)
	}

	// The audit chain's length is its last sequence number, as a verification of the chain reports it.
	var length float64
	var report api.AuditReport
	for deadline := time.Now().Add(30 * time.Second); ; {
		if report, err = env.Admin().Controller().AuditVerify(ctx); err != nil || !report.OK {
			t.Fatalf("audit verify: %+v %v", report, err)
		}
		length = total(scrape(ctx, t, "http://"+addr.String()+"/metrics")["umbra_controller_audit_chain_length"], "")
		if uint64(length) == report.LastSeq || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // a record came in between: try again
	}
	if uint64(length) != report.LastSeq || length < 10 {
		t.Fatalf("audit chain length %v, verification reports %d records up to sequence %d", length, report.Records, report.LastSeq)
	}

	// The listener ends with the controller, and nothing of the controller outlives Run.
	env.Close()
	closed = true
	client := &http.Client{Timeout: 5 * time.Second}
	if resp, err := client.Get("http://" + addr.String() + "/metrics"); err == nil {
		resp.Body.Close()
		t.Fatal("the metrics listener outlived the controller")
	}
	var left []string
	for deadline := time.Now().Add(5 * time.Second); ; {
		if left = controllerGoroutines(); len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Fatalf("%d goroutines of the controller outlived Run:\n\n%s", len(left), strings.Join(left, "\n\n"))
	}
}

// TestMetricsListenRefusesRemoteAddressesUnlessAllowed checks the rule for Config.MetricsListen: a loopback
// HOST:PORT, or anything with MetricsAllowRemote; a refusal is one line that says what to do.
func TestMetricsListenRefusesRemoteAddressesUnlessAllowed(t *testing.T) {
	for _, tc := range []struct {
		addr  string
		allow bool
		ok    bool
	}{
		{"127.0.0.1:9465", false, true},
		{"[::1]:9465", false, true},
		{"localhost:9465", false, true},
		{"0.0.0.0:9465", false, false},
		{":9465", false, false},
		{"192.0.2.7:9465", false, false},
		{"example.com:9465", false, false},
		{"0.0.0.0:9465", true, true},
		{"127.0.0.1", false, false},
		{"127.0.0.1", true, false},
	} {
		_, err := controller.New(controller.Config{DataDir: t.TempDir(), MetricsListen: tc.addr, MetricsAllowRemote: tc.allow})
		if (err == nil) != tc.ok {
			t.Errorf("%q (allow remote %v): %v", tc.addr, tc.allow, err)
		}
		if err != nil && (strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "127.0.0.1:")) {
			t.Errorf("%q: the error is not one line naming a loopback example: %v", tc.addr, err)
		}
		if !tc.ok && !tc.allow && err != nil && strings.Contains(tc.addr, ":9465") && !strings.Contains(err.Error(), "--metrics-allow-remote") {
			t.Errorf("%q: the error does not name the way to allow it: %v", tc.addr, err)
		}
	}
}

func connect(ctx context.Context, t *testing.T, token string) *agentsdk.Agent {
	t.Helper()
	id, err := agentsdk.Enroll(ctx, token)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agentsdk.Connect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// scrape GETs url and parses the Prometheus text it answers.
func scrape(ctx context.Context, t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %s, %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// expect is a family's value: of the series with the label labels ("name=value"), or of all its series
// together when labels is empty. A histogram's value is its count of observations.
type expect struct {
	name, labels string
	value        float64
}

func check(fams map[string]*dto.MetricFamily, want []expect) []string {
	var wrong []string
	for _, w := range want {
		f := fams[w.name]
		if f == nil {
			wrong = append(wrong, fmt.Sprintf("%s: missing", w.name))
			continue
		}
		if got := total(f, w.labels); got != w.value {
			wrong = append(wrong, fmt.Sprintf("%s{%s} = %v, want %v", w.name, w.labels, got, w.value))
		}
	}
	return wrong
}

func total(f *dto.MetricFamily, labels string) float64 {
	if f == nil {
		return -1
	}
	name, value, _ := strings.Cut(labels, "=")
	var sum float64
	for _, m := range f.GetMetric() {
		if labels != "" && !hasLabel(m, name, value) {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}
