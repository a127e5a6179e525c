package mcpgw

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/mcpgw/redact"
)

// inventory is what the gateway holds, as it reports it to the controller: its MCP servers (an overlay one by
// its service, others by kind only: a command line or URL may carry secrets), every tool with the digest and
// state of its pin, its per-caller limits and what it checks.
func (g *Gateway) inventory() api.GatewayReport {
	rep := api.GatewayReport{Service: g.cfg.Service, Servers: []api.GatewayServer{}, Tools: []api.GatewayTool{}}
	for _, b := range g.cfg.Backends {
		rep.Servers = append(rep.Servers, api.GatewayServer{Name: b.Name, Kind: b.Kind, Service: b.Service})
	}
	for _, e := range g.catalog.snapshot().tools {
		t := api.GatewayTool{Name: e.name, Server: e.backend.cfg.Name, Digest: e.digest, State: string(e.state)}
		if e.digest == "" {
			t.State = "unpinned"
		}
		rep.Tools = append(rep.Tools, t)
	}
	slices.SortFunc(rep.Tools, func(a, b api.GatewayTool) int { return strings.Compare(a.Name, b.Name) })
	if l := g.cfg.Limits; l.CallsPerMinute > 0 {
		rep.Limits = append(rep.Limits, fmt.Sprintf("each caller: %d calls/min", l.CallsPerMinute))
	}
	if l := g.cfg.Limits; l.Concurrent > 0 {
		rep.Limits = append(rep.Limits, fmt.Sprintf("each caller: %d concurrent", l.Concurrent))
	}
	rep.Guardrails = append(rep.Guardrails, "tool definitions pinned", "tool definitions scanned")
	if len(g.cfg.Sensitive) > 0 {
		rep.Guardrails = append(rep.Guardrails, "approval of sensitive tools: "+strings.Join(g.cfg.Sensitive, ", "))
	}
	return rep
}

// report writes the gateway's inventory into the audit trail (api.KindGatewayReportMCP), where the controller
// keeps it for its posture, when it differs from the one last written: at start and as tools, pins and
// backends change.
func (g *Gateway) report(ctx context.Context) {
	if g.cfg.Auditor == nil {
		return
	}
	data, err := json.Marshal(g.inventory())
	if err != nil {
		return
	}
	sum := sha256.Sum256(data)
	g.reportMu.Lock()
	defer g.reportMu.Unlock()
	if sum == g.reported {
		return
	}
	// Written in line, not queued, so that a report the trail refused is written again at the next change.
	err = g.appendAudit(ctx, audit.Record{Time: time.Now().UTC(), Kind: api.KindGatewayReportMCP, Actor: g.self,
		Decision: audit.DecisionAllow, Reason: "what the gateway holds", Data: data})
	if err != nil {
		g.log.Warn("mcpgw: could not report the gateway's inventory to the audit trail", "err", redact.String(err.Error()))
		return
	}
	g.reported = sum
}
