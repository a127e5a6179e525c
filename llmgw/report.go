package llmgw

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
)

// inventory is what the gateway holds, as it reports it to the controller: its models and their endpoints
// (never a key or a full URL), its budgets and its guardrails.
func (g *Gateway) inventory() api.GatewayReport {
	rep := api.GatewayReport{Service: g.cfg.Service}
	for _, m := range g.cfg.Models {
		gm := api.GatewayModel{Name: m.Name, Endpoints: []api.GatewayEndpoint{}}
		for _, e := range m.Endpoints {
			ep := api.GatewayEndpoint{Provider: e.Provider, Model: e.Model, Service: e.Service}
			if ep.Provider == "" {
				ep.Provider = "openai"
			}
			if u, err := url.Parse(e.BaseURL); err == nil && e.Service == "" {
				ep.Host = u.Host
			}
			gm.Endpoints = append(gm.Endpoints, ep)
		}
		rep.Models = append(rep.Models, gm)
	}
	for _, b := range g.cfg.Budgets {
		who := "each identity without a budget of its own"
		switch {
		case b.Identity != "":
			who = "identity " + b.Identity
		case b.Org != "":
			who = "organisation " + b.Org
		}
		var parts []string
		for _, f := range []struct {
			v    float64
			unit string
		}{{float64(b.RequestsPerMinute), "requests/min"}, {float64(b.TokensPerMinute), "tokens/min"}, {float64(b.TokensPerDay), "tokens/day"},
			{float64(b.TokensPerMonth), "tokens/month"}, {b.CostPerDay, "USD/day"}, {b.CostPerMonth, "USD/month"}, {float64(b.MaxConcurrent), "concurrent"}} {
			if f.v > 0 {
				parts = append(parts, fmt.Sprintf("%g %s", f.v, f.unit))
			}
		}
		if len(parts) > 0 {
			rep.Limits = append(rep.Limits, who+": "+strings.Join(parts, ", "))
		}
	}
	gr := g.cfg.Guardrails
	for _, c := range []struct {
		name string
		mode string
	}{{"pii", string(gr.PII)}, {"secrets", string(gr.Secrets)}, {"injection", string(gr.Injection)}} {
		if c.mode != "" {
			rep.Guardrails = append(rep.Guardrails, c.name+":"+c.mode)
		}
	}
	if gr.Responses && len(rep.Guardrails) > 0 {
		rep.Guardrails = append(rep.Guardrails, "responses")
	}
	return rep
}

// report writes the gateway's inventory into the audit trail (api.KindGatewayReportLLM), where the controller
// keeps it for its posture. The configuration does not change while the gateway runs: once, at Run.
func (g *Gateway) report(ctx context.Context) {
	if g.cfg.Auditor == nil {
		return
	}
	data, err := json.Marshal(g.inventory())
	if err != nil {
		return
	}
	r := audit.Record{Kind: api.KindGatewayReportLLM, Actor: g.cfg.Self.String(), Decision: audit.DecisionAllow,
		Reason: "what the gateway holds", Data: data}
	if err := g.appendAudit(ctx, r); err != nil {
		g.log.Warn("llmgw: could not report the gateway's inventory to the audit trail", "err", err)
	}
}
