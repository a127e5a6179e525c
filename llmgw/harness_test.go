package llmgw_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/llmgw"
)

// Identities used in the tests.
const (
	alice = "spiffe://acme.test/acme/agent/alice" // acme, workgroup acme/research
	bob   = "spiffe://acme.test/acme/agent/bob"   // acme, no workgroup
	carol = "spiffe://beta.test/beta/agent/carol" // another organisation
	admin = "spiffe://acme.test/acme/user/admin"  // administrator

	gatewayID = "spiffe://acme.test/acme/gateway/llmgw" // the gateway's own identity: acme's
)

// identityHeader carries the caller's identity in tests, standing in for mutual TLS.
const identityHeader = "X-Test-Identity"

func identifyByHeader(r *http.Request) (spiffeid.ID, error) {
	return spiffeid.FromString(r.Header.Get(identityHeader))
}

// directory knows the test identities.
type directory map[string]llmgw.Principal

func (d directory) Lookup(_ context.Context, id spiffeid.ID) (llmgw.Principal, error) {
	p, ok := d[id.String()]
	if !ok {
		return llmgw.Principal{}, llmgw.ErrUnknownIdentity
	}
	return p, nil
}

func testDirectory() directory {
	return directory{
		alice: {Org: "acme", Workgroups: []string{"acme/research"}},
		bob:   {Org: "acme"},
		carol: {Org: "beta"},
		admin: {Org: "acme", Admin: true},
	}
}

// memAuditor keeps audit records in memory.
type memAuditor struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (a *memAuditor) Append(_ context.Context, r audit.Record) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.recs = append(a.recs, r)
	return nil
}

func (a *memAuditor) records() []audit.Record {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]audit.Record(nil), a.recs...)
}

// wait returns the first record for which ok holds, waiting for it to be appended (a call is audited after
// its answer is sent).
func (a *memAuditor) wait(t testing.TB, ok func(audit.Record) bool) audit.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, r := range a.records() {
			if ok(r) {
				return r
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no matching audit record among %d", len(a.records()))
	return audit.Record{}
}

func kindIs(kind string) func(audit.Record) bool {
	return func(r audit.Record) bool { return r.Kind == kind }
}

// callData decodes the Data of a call record.
type callData struct {
	RequestID      string  `json:"request_id"`
	Operation      string  `json:"operation"`
	Ingress        string  `json:"ingress"`
	Status         int     `json:"status"`
	Error          string  `json:"error"`
	ModelRequested string  `json:"model_requested"`
	Model          string  `json:"model"`
	Provider       string  `json:"provider"`
	UpstreamModel  string  `json:"upstream_model"`
	Stream         bool    `json:"stream"`
	Attempts       int     `json:"attempts"`
	InputTokens    int64   `json:"input_tokens"`
	OutputTokens   int64   `json:"output_tokens"`
	CostUSD        float64 `json:"cost_usd"`
	TTFTMS         float64 `json:"ttft_ms"`
	Route          *struct {
		Layer  string `json:"layer"`
		Model  string `json:"model"`
		Name   string `json:"name"`
		Reason string `json:"reason"`
	} `json:"route"`
	Guardrails []guardFinding `json:"guardrails"`
	Limit      *struct {
		Subject string `json:"subject"`
		Limit   string `json:"limit"`
	} `json:"limit"`
	Prompt         json.RawMessage `json:"prompt"`
	Completion     string          `json:"completion"`
	UpstreamStatus int             `json:"upstream_status"`
	Intent         *struct {
		Purpose  string `json:"purpose"`
		Category string `json:"category"`
	} `json:"intent"`
}

type guardFinding struct {
	Direction string `json:"direction"`
	Category  string `json:"category"`
	Detector  string `json:"detector"`
	Mode      string `json:"mode"`
	Count     int    `json:"count"`
}

func dataOf(t testing.TB, r audit.Record) callData {
	t.Helper()
	var d callData
	if err := json.Unmarshal(r.Data, &d); err != nil {
		t.Fatalf("audit data %s: %v", r.Data, err)
	}
	return d
}

// harness is a gateway served over HTTP with a header for identity.
type harness struct {
	t       testing.TB
	gw      *llmgw.Gateway
	srv     *httptest.Server
	auditor *memAuditor
	reg     *prometheus.Registry
}

// policyAll lets every identity use every model.
const policyAll = `permit (principal, action == Umbra::Action::"use", resource);`

func newHarness(t testing.TB, cfg llmgw.Config) *harness {
	t.Helper()
	testlimit.Start(t, 5*time.Minute)
	h := &harness{t: t, auditor: &memAuditor{}, reg: prometheus.NewRegistry()}
	if cfg.Identify == nil {
		cfg.Identify = identifyByHeader
	}
	if cfg.Directory == nil {
		cfg.Directory = testDirectory()
	}
	if cfg.Self.IsZero() {
		cfg.Self = spiffeid.RequireFromString(gatewayID)
	}
	if cfg.Auditor == nil {
		cfg.Auditor = h.auditor
	}
	if cfg.Policies == "" {
		cfg.Policies = policyAll
	}
	if cfg.Registry == nil {
		cfg.Registry = h.reg
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	gw, err := llmgw.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.gw = gw
	h.srv = httptest.NewServer(gw.Handler())
	t.Cleanup(h.srv.Close)
	return h
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// asTransport adds the identity header to every request.
type asTransport struct{ id string }

func (a asTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(identityHeader, a.id)
	return http.DefaultTransport.RoundTrip(r)
}

// httpClient calls the gateway as id.
func (h *harness) httpClient(id string) *http.Client {
	return &http.Client{Transport: asTransport{id: id}, Timeout: 30 * time.Second}
}

// client is the official OpenAI client calling the gateway as id.
func (h *harness) client(id string) *openai.Client {
	c := openai.NewClient(
		option.WithBaseURL(h.srv.URL+"/v1/"),
		option.WithAPIKey("not-a-key"), // the caller's identity is its key
		option.WithHTTPClient(h.httpClient(id)),
		option.WithMaxRetries(0),
	)
	return &c
}

// do sends a raw request to the gateway as id and returns the status and body.
func (h *harness) do(id, method, path, body string) (int, string, http.Header) {
	h.t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := h.httpClient(id).Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// apiError returns the OpenAI error in err, failing if there is none.
func apiError(t testing.TB, err error) *openai.Error {
	t.Helper()
	var e *openai.Error
	if !errors.As(err, &e) {
		t.Fatalf("want an API error, got %v", err)
	}
	return e
}

// metric returns the value of a counter or the sample count of a histogram with the given labels.
func (h *harness) metric(name string, labels map[string]string) float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			case m.Histogram != nil:
				total += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return total
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	got := map[string]string{}
	for _, l := range m.GetLabel() {
		got[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// oneModel is a configuration with one model on one endpoint.
func oneModel(name string, u *upstream) llmgw.Model {
	return llmgw.Model{Name: name, Endpoints: []llmgw.Endpoint{endpointOf(u, "up-"+name)}, Backoff: time.Millisecond}
}

func endpointOf(u *upstream, upstreamModel string) llmgw.Endpoint {
	return llmgw.Endpoint{Provider: u.kind, BaseURL: u.url(), APIKey: u.key, Model: upstreamModel,
		InputPrice: 2, OutputPrice: 8}
}

type auditRecord = audit.Record

// optionResponseHeader captures the response headers of a call.
func optionResponseHeader(h *http.Header) option.RequestOption {
	return option.WithMiddleware(func(r *http.Request, next option.MiddlewareNext) (*http.Response, error) {
		resp, err := next(r)
		if resp != nil {
			*h = resp.Header
		}
		return resp, err
	})
}
