package posture

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// gatewayInventory adds the gateways the scope sees (gateway identities of its organisations, with their
// newest reports), their tools and models, and for the platform the routers.
func gatewayInventory(st State, scope Scope, inv *api.Inventory) {
	inv.Gateways, inv.Tools, inv.Models, inv.Routers = []api.InventoryGateway{}, []api.InventoryTool{}, []api.InventoryModel{}, []api.InventoryRouter{}
	for _, id := range st.Identities {
		if id.Kind != api.GatewayKind || !scope.sees(id.Org) {
			continue
		}
		g := api.InventoryGateway{SPIFFEID: id.ID.String(), State: id.State}
		rep, ok := st.Reports[g.SPIFFEID]
		if ok {
			g.Kind, g.ReportedAt, g.Service = rep.Kind, utc(rep.At), rep.Service
			g.Servers, g.Limits, g.Guardrails = slices.Clone(rep.Servers), slices.Clone(rep.Limits), slices.Clone(rep.Guardrails)
			for _, t := range rep.Tools {
				inv.Tools = append(inv.Tools, api.InventoryTool{Gateway: g.SPIFFEID, GatewayTool: t})
			}
			for _, m := range rep.Models {
				m.Endpoints = slices.Clone(m.Endpoints)
				inv.Models = append(inv.Models, api.InventoryModel{Gateway: g.SPIFFEID, GatewayModel: m})
			}
		}
		inv.Gateways = append(inv.Gateways, g)
	}
	if scope.Org == "" {
		inv.Routers = append(inv.Routers, st.Routers...)
	}
	slices.SortFunc(inv.Gateways, func(a, b api.InventoryGateway) int { return cmp.Compare(a.SPIFFEID, b.SPIFFEID) })
	slices.SortFunc(inv.Tools, func(a, b api.InventoryTool) int {
		return cmp.Or(cmp.Compare(a.Gateway, b.Gateway), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(inv.Models, func(a, b api.InventoryModel) int {
		return cmp.Or(cmp.Compare(a.Gateway, b.Gateway), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(inv.Routers, func(a, b api.InventoryRouter) int { return cmp.Compare(a.Name, b.Name) })
}

// toolKey is a tool's inventory item key; its value is the digest of the pinned definition.
func toolKey(t api.InventoryTool) string { return "tool:" + t.Gateway + "/" + t.Name }

// gatewayFindings holds the gateways the scope sees to policy: each reported, bounding its callers and checking
// content; their tools pinned and unchanged (since approval, and since the baseline); the servers and models
// behind them dialable by gateways only.
func gatewayFindings(st State, scope Scope, add func(check, severity, subject, summary, evidence, fix string)) {
	inv := api.Inventory{}
	gatewayInventory(st, scope, &inv)
	gateways := map[string]bool{}
	dialers := map[string][]Identity{} // service -> live identities that may dial it
	for _, id := range st.Identities {
		if id.Kind == api.GatewayKind {
			gateways[id.ID.String()] = true
		}
		if !id.Live() {
			continue
		}
		for _, s := range id.Dial {
			dialers[s] = append(dialers[s], id)
		}
	}
	for _, g := range inv.Gateways {
		if g.State != StateEnrolled {
			continue
		}
		if g.ReportedAt.IsZero() {
			add(CheckGatewayUnreported, api.SeverityLow, g.SPIFFEID, "gateway never reported what it holds: its tools, models and limits are unknown",
				"no "+api.KindGatewayReportMCP+" or "+api.KindGatewayReportLLM+" record from it has reached the controller",
				"run the gateway with this version of umbra mcpgw or umbra llmgw (it reports at start and on every change)")
			continue
		}
		what := map[string]string{"mcp": "MCP gateway", "llm": "LLM gateway"}[g.Kind]
		if len(g.Limits) == 0 {
			add(CheckGatewayNoLimits, api.SeverityMedium, g.SPIFFEID, what+" has no rate limit or budget: one caller can use it without bound",
				fmt.Sprintf("its report of %s lists no limits", g.ReportedAt.Format(time.RFC3339)),
				map[string]string{"mcp": "set limits.calls_per_minute in the gateway's configuration", "llm": "add budgets to the gateway's configuration"}[g.Kind])
		}
		if len(g.Guardrails) == 0 {
			add(CheckGatewayNoGuardrails, api.SeverityMedium, g.SPIFFEID, what+" checks no content: personal data, secrets and prompt injection pass through",
				fmt.Sprintf("its report of %s lists no guardrails", g.ReportedAt.Format(time.RFC3339)),
				"set guardrails (pii, secrets, injection) in the gateway's configuration")
		}
		rep := st.Reports[g.SPIFFEID]
		ungated := func(kind, name, service string) {
			var direct, hidden []string
			for _, d := range dialers[service] {
				if gateways[d.ID.String()] {
					continue
				}
				if scope.sees(d.Org) {
					direct = append(direct, d.ID.String())
				} else {
					hidden = append(hidden, d.ID.String())
				}
			}
			if len(direct)+len(hidden) == 0 {
				return
			}
			slices.Sort(direct)
			who := strings.Join(direct, ", ")
			if len(hidden) > 0 {
				who = strings.TrimPrefix(who+fmt.Sprintf(", and identities of other organisations: %d", len(hidden)), ", ")
			}
			add(CheckUngated, api.SeverityHigh, g.SPIFFEID+"/"+service,
				fmt.Sprintf("%s %s behind gateway %s is reachable without the gateway", kind, name, g.SPIFFEID),
				fmt.Sprintf("the gateway reaches it as overlay service %s, which these may dial directly: %s", service, who),
				fmt.Sprintf("let only the gateway dial %s: revoke the other identities' grants (or re-create them without it)", service))
		}
		for _, s := range rep.Servers {
			if s.Service != "" {
				ungated("MCP server", s.Name, s.Service)
			}
		}
		for _, m := range rep.Models {
			for _, e := range m.Endpoints {
				if e.Service != "" {
					ungated("model endpoint of", m.Name, e.Service)
				}
			}
		}
	}
	for _, t := range inv.Tools {
		subject := t.Gateway + "/" + t.Name
		switch t.State {
		case "quarantined":
			add(CheckToolChanged, api.SeverityMedium, subject, "tool definition changed after it was approved",
				fmt.Sprintf("server %s now serves definition %s; the gateway holds it back until an administrator decides", t.Server, t.Digest),
				"review the new definition: umbra mcp approvals list --tools, then approve or deny it")
		case "pending", "unpinned":
			add(CheckToolUnpinned, api.SeverityLow, subject, "tool has no approved pinned definition",
				fmt.Sprintf("server %s: state %s, digest %q; callers cannot call it until an administrator approves one", t.Server, t.State, t.Digest),
				"review it: umbra mcp approvals list --tools, then approve or deny it")
		}
		if was, ok := st.Baseline[toolKey(t)]; ok && was != cmp.Or(t.Digest, "unpinned") && t.State != "quarantined" {
			add(CheckToolChanged, api.SeverityMedium, subject, "tool definition changed since the baseline",
				fmt.Sprintf("pinned digest at the baseline %s, now %s (state %s)", was, t.Digest, t.State),
				"check that the change was meant, then record a new baseline (umbra posture baseline)")
		}
	}
}
