package llmgw

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/llmgw/budget"
)

type modelInfo struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// visible lists the models p may use for chat or embeddings, the routing model included.
func (g *Gateway) visible(p Principal) []modelInfo {
	names := g.names
	if g.router != nil {
		names = append([]string{g.cfg.Router.Name}, names...)
	}
	out := []modelInfo{}
	for _, n := range names {
		if g.allowed(p, n, "chat") || g.allowed(p, n, "embeddings") {
			out = append(out, modelInfo{ID: n, Object: "model", OwnedBy: "umbra"})
		}
	}
	return out
}

func (g *Gateway) fail(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.Status, openAIError(e, newRequestID()))
}

func (g *Gateway) serveModels(w http.ResponseWriter, r *http.Request) {
	p, aerr := g.authenticate(r)
	if aerr != nil {
		g.fail(w, aerr)
		return
	}
	b, _ := json.Marshal(map[string]any{"object": "list", "data": g.visible(p)})
	writeJSON(w, http.StatusOK, b)
}

func (g *Gateway) serveModel(w http.ResponseWriter, r *http.Request) {
	p, aerr := g.authenticate(r)
	if aerr != nil {
		g.fail(w, aerr)
		return
	}
	name := r.PathValue("model")
	for _, m := range g.visible(p) {
		if m.ID == name {
			b, _ := json.Marshal(m)
			writeJSON(w, http.StatusOK, b)
			return
		}
	}
	// Not telling apart "does not exist" from "not yours".
	g.fail(w, errorf(http.StatusNotFound, "invalid_request_error", codeModelNotFound, "model %s does not exist", name))
}

// usageEntry is one subject's usage on one day.
type usageEntry struct {
	Subject      string                `json:"subject"`
	Day          string                `json:"day"`
	Requests     int64                 `json:"requests"`
	InputTokens  int64                 `json:"input_tokens"`
	OutputTokens int64                 `json:"output_tokens"`
	CostUSD      float64               `json:"cost_usd"`
	Models       map[string]modelUsage `json:"models,omitempty"`
}

type modelUsage struct {
	Requests     int64   `json:"requests"`
	InputTokens  int64   `json:"input_tokens"`
	OutputTokens int64   `json:"output_tokens"`
	CostUSD      float64 `json:"cost_usd"`
}

// serveUsage answers GET /v1/usage[?identity=<SPIFFE ID>][&since=<duration or YYYY-MM-DD>]: daily usage per
// identity (and per organisation with an organisation budget). Callers see their own; administrators anyone's,
// everyone's when no identity is given. since defaults to 24h.
func (g *Gateway) serveUsage(w http.ResponseWriter, r *http.Request) {
	p, aerr := g.authenticate(r)
	if aerr != nil {
		g.fail(w, aerr)
		return
	}
	q := r.URL.Query()
	since := time.Now().Add(-24 * time.Hour)
	if s := q.Get("since"); s != "" {
		if d, err := time.ParseDuration(s); err == nil && d >= 0 {
			since = time.Now().Add(-d)
		} else if t, err := time.Parse("2006-01-02", s); err == nil {
			since = t
		} else {
			g.fail(w, invalid("since %q: want a duration such as 24h or a date such as 2006-01-02", s))
			return
		}
	}
	var match func(string) bool
	who := q.Get("identity")
	switch {
	case who != "":
		id, err := spiffeid.FromString(who)
		if err != nil {
			g.fail(w, invalid("identity %q is not a SPIFFE ID", who))
			return
		}
		if id != p.ID && !p.Admin {
			g.fail(w, errorf(http.StatusForbidden, "permission_error", codeForbidden, "only administrators read others' usage"))
			return
		}
		match = func(s string) bool { return s == "id:"+id.String() }
	case p.Admin:
		match = func(string) bool { return true }
	default:
		match = func(s string) bool { return s == "id:"+p.ID.String() }
	}
	recs, err := g.limiter.Usage(r.Context(), since, match)
	if err != nil {
		g.log.Error("llmgw: usage store unavailable", "err", err)
		g.fail(w, errorf(http.StatusServiceUnavailable, "server_error", codeInternal, "usage is unavailable; retry later"))
		return
	}
	entries := []usageEntry{}
	for _, rec := range recs {
		entries = append(entries, toEntry(rec))
	}
	if p.Admin && who != p.ID.String() && g.cfg.Auditor != nil {
		data, _ := json.Marshal(map[string]any{"identity": who, "since": since.UTC().Format(time.RFC3339)})
		rec := audit.Record{Kind: KindUsageRead, Actor: p.ID.String(), Decision: audit.DecisionAllow, Data: data,
			Reason: "administrator read usage"}
		if err := g.appendAudit(r.Context(), rec); err != nil {
			g.log.Error("llmgw: audit record lost", "kind", KindUsageRead, "err", err)
		}
	}
	b, _ := json.Marshal(map[string]any{"object": "list", "data": entries})
	writeJSON(w, http.StatusOK, b)
}

func toEntry(rec budget.Record) usageEntry {
	e := usageEntry{Subject: rec.Subject, Day: rec.Period, Requests: rec.Requests, InputTokens: rec.InputTokens,
		OutputTokens: rec.OutputTokens, CostUSD: float64(rec.CostNanos) / 1e9}
	for name, c := range rec.Models {
		if e.Models == nil {
			e.Models = map[string]modelUsage{}
		}
		e.Models[name] = modelUsage{Requests: c.Requests, InputTokens: c.InputTokens, OutputTokens: c.OutputTokens,
			CostUSD: float64(c.CostNanos) / 1e9}
	}
	return e
}
