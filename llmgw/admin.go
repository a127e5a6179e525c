package llmgw

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/gatewayadmin"
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
		if g.allowed(p, n, "chat", nil) || g.allowed(p, n, "embeddings", nil) {
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

// KindAdminRefused is the audit record of an administration request refused: an administrator of an
// organisation that does not administer this gateway, usage outside the organisation administered, metrics.
const KindAdminRefused = "llm.admin_refused"

// access says what p may administer here (package gatewayadmin).
func (g *Gateway) access(p Principal) gatewayadmin.Access {
	return g.grant.Access(g.adminCaller(p))
}

func (g *Gateway) adminCaller(p Principal) gatewayadmin.Caller {
	return gatewayadmin.Caller{ID: p.ID, Org: p.Org, Admin: p.Admin}
}

// refuseAdmin records an administration request refused to p. A record that cannot be written is logged: the
// request was refused either way.
func (g *Gateway) refuseAdmin(r *http.Request, p Principal, action, reason string, extra map[string]any) {
	if g.cfg.Auditor == nil {
		return
	}
	d := map[string]any{"action": action}
	for k, v := range extra {
		d[k] = v
	}
	data, _ := json.Marshal(d)
	rec := audit.Record{Time: time.Now().UTC(), Kind: KindAdminRefused, Actor: p.ID.String(), Decision: audit.DecisionDeny,
		Reason: reason, Data: data}
	if err := g.appendAudit(r.Context(), rec); err != nil {
		g.log.Error("llmgw: audit record lost", "kind", KindAdminRefused, "err", err)
	}
}

// serveUsage answers GET /v1/usage[?identity=<SPIFFE ID>][&since=<duration or YYYY-MM-DD>]: daily usage per
// identity (and per organisation with an organisation budget), and the day and month budgets of the subjects
// listed ("budgets", by subject). since defaults to 24h. Every caller reads its
// own. An administrator of this gateway (package gatewayadmin) reads that of the identities its access covers:
// every identity's for the platform administrator and those named in Config.Admins, else those of its own
// organisation (and that organisation's total), all of them when no identity is given. Such a read is audited
// (KindUsageRead) before it is answered, and not answered if its record cannot be written. An administrator
// of an organisation that does not administer this gateway is refused, as is a read outside the organisation
// administered (KindAdminRefused).
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
	acc := g.access(p)
	refuse := func(reason string) {
		g.refuseAdmin(r, p, "read usage", reason, map[string]any{"identity": q.Get("identity")})
		g.fail(w, errorf(http.StatusForbidden, "permission_error", codeForbidden, "%s", reason))
	}
	var match func(string) bool
	own := false
	who := q.Get("identity")
	switch {
	case who != "":
		id, err := spiffeid.FromString(who)
		if err != nil {
			g.fail(w, invalid("identity %q is not a SPIFFE ID", who))
			return
		}
		d := g.grant.Decide(g.adminCaller(p), gatewayadmin.ActionReadUsage, g.usageTarget("id:"+id.String()))
		switch {
		case id == p.ID:
			own = true
		case d.Allow:
		case len(d.Diagnostic.Policies) > 0 || len(d.Diagnostic.Errors) > 0: // an operator's forbid, or an error
			refuse(d.Reason())
			return
		case acc.Granted():
			refuse("that identity is outside the organisation you administer here (" + d.Reason() + ")")
			return
		case !p.Admin:
			refuse("only administrators read others' usage")
			return
		default:
			refuse(acc.Reason)
			return
		}
		match = func(s string) bool { return s == "id:"+id.String() }
	case acc.Granted():
		// Each subject is decided on its own: an operator's forbid may take some away.
		caller := g.adminCaller(p)
		match = func(s string) bool {
			return g.grant.Decide(caller, gatewayadmin.ActionReadUsage, g.usageTarget(s)).Allow
		}
	case p.Admin:
		refuse(acc.Reason + " (identity=<your SPIFFE ID> reads your own usage)")
		return
	default:
		own = true
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
	if !own && g.cfg.Auditor != nil {
		scope := acc.Org
		if acc.All {
			scope = "*"
		}
		data, _ := json.Marshal(map[string]any{"identity": who, "since": since.UTC().Format(time.RFC3339), "scope": scope,
			"admin_basis": acc.Basis, "entries": len(entries)})
		rec := audit.Record{Time: time.Now().UTC(), Kind: KindUsageRead, Actor: p.ID.String(), Decision: audit.DecisionAllow,
			Data: data, Reason: "administrator read usage"}
		if err := g.appendAudit(r.Context(), rec); err != nil {
			g.log.Error("llmgw: usage read refused: its audit record could not be written", "err", err)
			g.fail(w, errorf(http.StatusServiceUnavailable, "server_error", codeAuditUnavailable,
				"the usage read was refused: its audit record could not be written; retry later"))
			return
		}
	}
	b, _ := json.Marshal(map[string]any{"object": "list", "data": entries, "budgets": g.budgetsOf(entries)})
	writeJSON(w, http.StatusOK, b)
}

// usageBudget is the day and month budget a usage subject is counted against.
type usageBudget struct {
	TokensPerDay   int64   `json:"tokens_per_day,omitempty"`
	TokensPerMonth int64   `json:"tokens_per_month,omitempty"`
	CostPerDay     float64 `json:"cost_per_day,omitempty"`
	CostPerMonth   float64 `json:"cost_per_month,omitempty"`
}

// budgetsOf says, for each subject in entries that has a day or month budget, what it is: an identity's own
// (else the default one), an organisation's, as claims counts them.
func (g *Gateway) budgetsOf(entries []usageEntry) map[string]usageBudget {
	out := map[string]usageBudget{}
	for _, e := range entries {
		if _, done := out[e.Subject]; done {
			continue
		}
		var own, def budget.Limits
		hasOwn := false
		org, isOrg := strings.CutPrefix(e.Subject, "org:")
		id := strings.TrimPrefix(e.Subject, "id:")
		for _, b := range g.cfg.Budgets {
			lim := budget.Limits{TokensPerDay: b.TokensPerDay, TokensPerMonth: b.TokensPerMonth, CostPerDay: b.CostPerDay,
				CostPerMonth: b.CostPerMonth}
			switch {
			case isOrg && b.Org == org, !isOrg && b.Identity != "" && b.Identity == id:
				own, hasOwn = own.Tighter(lim), true
			case !isOrg && b.Identity == "" && b.Org == "":
				def = def.Tighter(lim)
			}
		}
		if !hasOwn {
			own = def
		}
		ub := usageBudget{TokensPerDay: own.TokensPerDay, TokensPerMonth: own.TokensPerMonth, CostPerDay: own.CostPerDay,
			CostPerMonth: own.CostPerMonth}
		if ub != (usageBudget{}) {
			out[e.Subject] = ub
		}
	}
	return out
}

// usageTarget is the usage subject s ("id:<SPIFFE ID>" or "org:<org>") as the administration policies see it.
func (g *Gateway) usageTarget(s string) gatewayadmin.Target {
	if org, ok := strings.CutPrefix(s, "org:"); ok {
		return g.grant.UsageTarget(s, spiffeid.ID{}, org)
	}
	id, err := spiffeid.FromString(strings.TrimPrefix(s, "id:"))
	if err != nil {
		return g.grant.UsageTarget(s, spiffeid.ID{}, "")
	}
	return g.grant.UsageTarget(s, id, gatewayadmin.OrgOf(id))
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
