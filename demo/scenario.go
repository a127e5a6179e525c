package demo

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/workgroups"
)

// The scenario: a gearbox alarm on turbine A07 of Northwind's offshore wind farm. Northwind's planner assembles a
// repair brief with the turbine's maker (Helix), a marine forecaster (Meridian) and two competing vessel operators
// (Tidewater and Keelson), who each work with Northwind but share no workgroup with each other.

// Organisations of the scenario.
const (
	OrgNorthwind = "northwind" // operates the wind farm and the consortium's gateways
	OrgHelix     = "helix"     // built the turbines: diagnostics and spare parts
	OrgMeridian  = "meridian"  // marine weather
	OrgTidewater = "tidewater" // crew transfer vessels
	OrgKeelson   = "keelson"   // crew transfer vessels, Tidewater's competitor
)

// Orgs lists the organisations in the order they are created.
var Orgs = []string{OrgNorthwind, OrgHelix, OrgMeridian, OrgTidewater, OrgKeelson}

// Workload is one identity of the scenario: an agent, a gateway, an MCP server or a model server.
type Workload struct {
	Org, Kind, Name string
}

// Key names the workload in file names and on the command line, e.g. "northwind-planner".
func (w Workload) Key() string { return w.Org + "-" + w.Name }

// Label is how the feed names the workload, e.g. "northwind/planner".
func (w Workload) Label() string { return w.Org + "/" + w.Name }

// ID is the workload's SPIFFE ID in trust domain td.
func (w Workload) ID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, w.Org, w.Kind, w.Name)
}

// The scenario's workloads.
var (
	Planner     = Workload{OrgNorthwind, "agent", "planner"}     // assembles the repair brief
	Safety      = Workload{OrgNorthwind, "agent", "safety"}      // signs the plan off
	Procurement = Workload{OrgNorthwind, "agent", "procurement"} // reserves spare parts
	Diagnostics = Workload{OrgHelix, "agent", "diagnostics"}     // diagnoses the fault from telemetry
	PartsDesk   = Workload{OrgHelix, "agent", "parts"}           // reserves parts, books their freight
	Forecaster  = Workload{OrgMeridian, "agent", "forecaster"}   // finds a weather window
	Tidewater   = Workload{OrgTidewater, "agent", "dispatch"}    // charters a vessel, carries freight
	Keelson     = Workload{OrgKeelson, "agent", "dispatch"}      // charters a vessel

	MCPGateway = Workload{OrgNorthwind, "gateway", "mcpgw"}
	LLMGateway = Workload{OrgNorthwind, "gateway", "llmgw"}
	SCADA      = Workload{OrgNorthwind, "mcp", "scada"}   // turbine telemetry and control (MCP, this package)
	Textkit    = Workload{OrgNorthwind, "mcp", "textkit"} // the sample MCP server (word counts)
	Marine     = Workload{OrgMeridian, "mcp", "marine"}   // tides and sea state (MCP, this package; changes mid-run)
	Model      = Workload{OrgNorthwind, "llm", "small"}   // the sample model server
)

// Agents are the collaborating agents, providers first.
var Agents = []Workload{Diagnostics, PartsDesk, Forecaster, Tidewater, Keelson, Safety, Procurement, Planner}

// Services are the gateways, MCP servers and model server.
var Services = []Workload{MCPGateway, LLMGateway, SCADA, Textkit, Marine, Model}

// Overlay service names.
const (
	ServiceMCPGateway = "mcpgw"
	ServiceLLMGateway = "llmgw"
	ServiceSCADA      = "mcp-scada"
	ServiceTextkit    = "mcp-textkit"
	ServiceMarine     = "mcp-marine"
	ServiceModel      = "llm-small"
	// ModelName is the model callers ask the LLM gateway for; SampleModel is its name on the model server.
	ModelName   = "small"
	SampleModel = "small-1"
)

// Workgroup is one workgroup of the scenario.
type Workgroup struct {
	Owner, Name string
	Invite      []string
	Members     []Workload
}

// ID is the workgroup's "org/name".
func (w Workgroup) ID() string { return w.Owner + "/" + w.Name }

// Workgroups: one inside Northwind and five between organisations. Tidewater and Keelson share none.
var Workgroups = []Workgroup{
	{OrgNorthwind, "ops", nil, []Workload{Planner, Safety, Procurement}},
	{OrgNorthwind, "a07-repair", []string{OrgHelix}, []Workload{Planner, Procurement, Diagnostics, PartsDesk}},
	{OrgMeridian, "forecasts", []string{OrgNorthwind}, []Workload{Forecaster, Planner, Safety}},
	{OrgNorthwind, "charter-tidewater", []string{OrgTidewater}, []Workload{Planner, Tidewater}},
	{OrgNorthwind, "charter-keelson", []string{OrgKeelson}, []Workload{Planner, Keelson}},
	{OrgHelix, "shipping", []string{OrgTidewater}, []Workload{PartsDesk, Tidewater}},
}

// Grant is an overlay service: who hosts it and who may dial it.
type Grant struct {
	Service string
	Bind    Workload
	Dial    []Workload
}

// Grants: the gateways may be dialled by the agents that use tools and models; the MCP and model servers only by
// the gateways. Nobody else can even see these services exist.
var Grants = []Grant{
	{ServiceMCPGateway, MCPGateway, []Workload{Planner, Diagnostics, Forecaster}},
	{ServiceLLMGateway, LLMGateway, []Workload{Planner, Diagnostics, Forecaster}},
	{ServiceSCADA, SCADA, []Workload{MCPGateway}},
	{ServiceTextkit, Textkit, []Workload{MCPGateway}},
	{ServiceMarine, Marine, []Workload{MCPGateway}},
	{ServiceModel, Model, []Workload{LLMGateway}},
}

// offer is an advertisement a provider publishes.
type offer struct {
	card       workgroups.AgentCard
	terms      workgroups.Terms
	workgroups []string
}

func minutes(n int) workgroups.Duration { return workgroups.Duration(time.Duration(n) * time.Minute) }

// Offers are the advertisements, by provider. Their terms differ on purpose: the parts desk allows only four
// messages per session, Tidewater's contract covers quotes, bookings and freight but not payments, and Keelson
// quotes within whatever bidding window the buyer proposes.
var offers = map[Workload]offer{
	Diagnostics: {
		card: workgroups.AgentCard{Name: "Helix Turbine Diagnostics", Version: "2.4",
			Description:  "Reads turbine telemetry through Northwind's tool gateway and reports the fault and the parts a repair needs.",
			Skills:       []workgroups.Skill{{ID: "diagnose", Name: "Fault diagnosis", Tags: []string{"turbine", "gearbox"}}},
			MessageTypes: []string{"diag.*"}},
		terms: workgroups.Terms{MaxDuration: minutes(10), MaxMessages: 6, AllowedMessageTypes: []string{"diag.request", "diag.report"},
			MaxEnvelopeBytes: 16 << 10},
		workgroups: []string{"northwind/a07-repair"},
	},
	PartsDesk: {
		card: workgroups.AgentCard{Name: "Helix Parts Desk", Version: "1.9",
			Description:  "Reserves spare parts from Helix stock and books their freight to the operator's quay.",
			Skills:       []workgroups.Skill{{ID: "reserve-parts", Name: "Reserve spare parts", Tags: []string{"parts"}}},
			MessageTypes: []string{"parts.*"}},
		terms: workgroups.Terms{MaxDuration: minutes(10), MaxMessages: 4, AllowedMessageTypes: []string{"parts.reserve", "parts.reserved"},
			MaxEnvelopeBytes: 4 << 10},
		workgroups: []string{"northwind/a07-repair"},
	},
	Forecaster: {
		card: workgroups.AgentCard{Name: "Meridian Marine Forecast", Version: "3.1",
			Description:  "Finds weather windows for offshore work from tides, sea state and wind.",
			Skills:       []workgroups.Skill{{ID: "weather-window", Name: "Weather window", Tags: []string{"forecast", "marine"}}},
			MessageTypes: []string{"forecast.*"}},
		terms: workgroups.Terms{MaxDuration: minutes(10), MaxMessages: 6, AllowedMessageTypes: []string{"forecast.request", "forecast.window"},
			MaxEnvelopeBytes: 8 << 10},
		workgroups: []string{"meridian/forecasts"},
	},
	Tidewater: {
		card: workgroups.AgentCard{Name: "Tidewater Crew Transfer", Version: "5.0",
			Description: "Crew transfer vessels for offshore wind: charter quotes and bookings, and freight to the quay.",
			Skills: []workgroups.Skill{{ID: "charter", Name: "Vessel charter", Tags: []string{"vessel"}},
				{ID: "freight", Name: "Freight to port", Tags: []string{"logistics"}}},
			MessageTypes: []string{"charter.*", "freight.*"}},
		terms: workgroups.Terms{MaxDuration: minutes(30), MaxMessages: 10, MaxEnvelopeBytes: 8 << 10,
			AllowedMessageTypes: []string{"charter.quote.request", "charter.quote", "charter.book", "charter.confirmed",
				"freight.request", "freight.confirmation"}},
		workgroups: []string{"northwind/charter-tidewater", "helix/shipping"},
	},
	Keelson: {
		card: workgroups.AgentCard{Name: "Keelson Offshore Charter", Version: "1.2",
			Description:  "Crew transfer vessels on short notice. Quotes stand for the bidding window the buyer sets.",
			Skills:       []workgroups.Skill{{ID: "charter", Name: "Vessel charter", Tags: []string{"vessel"}}},
			MessageTypes: []string{"charter.*"}},
		terms: workgroups.Terms{MaxDuration: minutes(15), MaxMessages: 6, MaxEnvelopeBytes: 8 << 10,
			AllowedMessageTypes: []string{"charter.quote.request", "charter.quote", "charter.quote.revised", "charter.book", "charter.confirmed"}},
		workgroups: []string{"northwind/charter-keelson"},
	},
	Safety: {
		card: workgroups.AgentCard{Name: "Northwind Safety Review", Version: "1.0",
			Description:  "Checks offshore work plans against the weather and the vessel, and signs them off.",
			Skills:       []workgroups.Skill{{ID: "safety-review", Name: "Safety review"}},
			MessageTypes: []string{"safety.*"}},
		terms: workgroups.Terms{MaxDuration: minutes(10), MaxMessages: 4, AllowedMessageTypes: []string{"safety.review", "safety.verdict"},
			MaxEnvelopeBytes: 32 << 10},
		workgroups: []string{"northwind/ops"},
	},
	Procurement: {
		card: workgroups.AgentCard{Name: "Northwind Procurement", Version: "1.0",
			Description:  "Raises work orders and reserves the parts they need from suppliers.",
			Skills:       []workgroups.Skill{{ID: "procure", Name: "Procure parts"}},
			MessageTypes: []string{"proc.*"}},
		terms: workgroups.Terms{MaxDuration: minutes(10), MaxMessages: 4, AllowedMessageTypes: []string{"proc.request", "proc.confirmation"},
			MaxEnvelopeBytes: 16 << 10},
		workgroups: []string{"northwind/ops"},
	},
}

// MCPPolicies decide who may use which tool behind the MCP gateway (Cedar). Helix's agents in the A07 repair
// workgroup may read the turbine's telemetry, but a remote restart is Northwind's own operators' decision.
const MCPPolicies = `@id("a07-telemetry")
permit (principal in Umbra::Workgroup::"northwind/a07-repair", action, resource in Umbra::Backend::"scada");

@id("no-remote-restart")
forbid (principal, action == Umbra::Action::"call_tool", resource == Umbra::Tool::"scada__set_mode")
when { context.arguments has mode && context.arguments.mode == "restart" && principal.org != "northwind" };

@id("meridian-marine-data")
permit (principal in Umbra::Org::"meridian", action, resource in Umbra::Backend::"marine");

@id("northwind-textkit")
permit (principal in Umbra::Org::"northwind", action, resource in Umbra::Backend::"textkit");
`

// LLMPolicies decide who may use the model (Cedar): the consortium's members, not the vessel operators.
const LLMPolicies = `@id("consortium-small")
permit (principal, action == Umbra::Action::"use", resource == Umbra::Model::"small")
when { ["northwind", "helix", "meridian"].contains(principal.org) };
`

// ForecasterTokensPerDay is Meridian's forecaster's daily token budget at the LLM gateway: enough for one call.
// The gateway admits a call only when the budget has room for its estimated input and at least one output
// token, so this covers the first forecast's estimate (its prompt carries 24 hours of sea state, about 360
// tokens) and leaves less than the second forecast needs after the first is billed.
const ForecasterTokensPerDay = 370

// MCPBackend is one backend of the MCP gateway.
type MCPBackend struct {
	Name    string // tools appear as <Name>__<tool>
	Service string // the dark MCP server's overlay service
}

// MCPBackends are the MCP gateway's backends, all dark MCP servers on the overlay.
var MCPBackends = []MCPBackend{{"scada", ServiceSCADA}, {"marine", ServiceMarine}, {"textkit", ServiceTextkit}}

// MCPGatewayYAML is the MCP gateway's configuration for `umbra mcpgw`, as the containerised demo runs it.
func MCPGatewayYAML(dataDir string) string {
	s := fmt.Sprintf("service: %s\ndata: %s\npolicies: |\n%sbackends:\n", ServiceMCPGateway, dataDir, indent(MCPPolicies, "  "))
	for _, b := range MCPBackends {
		s += fmt.Sprintf("  - {name: %s, trusted: true, overlay: {service: %s}}\n", b.Name, b.Service)
	}
	return s
}

// LLMGatewayYAML is the LLM gateway's configuration for `umbra llmgw`, as the containerised demo runs it.
func LLMGatewayYAML(dataDir string, td spiffeid.TrustDomain) string {
	return fmt.Sprintf(`service: %s
data: %s
policies: |
%smodels:
  - name: %s
    endpoints: [{provider: openai-compatible, overlay: %s, model: %s}]
budgets:
  - {identity: "%s", tokens_per_day: %d}
  - {org: northwind, tokens_per_day: 200000, requests_per_minute: 120}
  - {org: helix, tokens_per_day: 200000, requests_per_minute: 120}
guardrails: {pii: redact, secrets: block, injection: log}
`, ServiceLLMGateway, dataDir, indent(LLMPolicies, "  "), ModelName, ServiceModel, SampleModel, Forecaster.ID(td), ForecasterTokensPerDay)
}

func indent(text, prefix string) string {
	out := ""
	line := ""
	for _, r := range text {
		line += string(r)
		if r == '\n' {
			if line == "\n" {
				out += line
			} else {
				out += prefix + line
			}
			line = ""
		}
	}
	if line != "" {
		out += prefix + line + "\n"
	}
	return out
}
