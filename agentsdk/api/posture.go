package api

import "time"

// Posture: what exists on the platform (inventory), what in it is riskier than policy allows (findings), and what
// changed since a recorded baseline (drift). An organisation administrator is answered for its own organisation
// only; the platform administrator for the whole platform.
const (
	PathInventory    = "/v1/posture/inventory"
	PathPosture      = "/v1/posture/findings"
	PathPostureBase  = "/v1/posture/baseline"
	SeverityInfo     = "info"
	SeverityLow      = "low"
	SeverityMedium   = "medium"
	SeverityHigh     = "high"
	SeverityCritical = "critical"
)

// Inventory is what exists, as the controller knows it, at GeneratedAt.
type Inventory struct {
	GeneratedAt    time.Time                `json:"generated_at"`
	Scope          string                   `json:"scope"` // "platform" or the organisation
	Organisations  []InventoryOrg           `json:"organisations"`
	Identities     []InventoryIdentity      `json:"identities"`
	Services       []InventoryService       `json:"services"`
	Workgroups     []InventoryWorkgroup     `json:"workgroups"`
	Advertisements []InventoryAdvertisement `json:"advertisements"`
	Gateways       []InventoryGateway       `json:"gateways"` // as each last reported itself
	Tools          []InventoryTool          `json:"tools"`    // behind the MCP gateways
	Models         []InventoryModel         `json:"models"`   // behind the LLM gateways
	Routers        []InventoryRouter        `json:"routers"`  // the platform's only; none for an organisation
}

// InventoryOrg is an organisation.
type InventoryOrg struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// InventoryIdentity is a workload identity. LastSeen is when it last proved itself to the controller (its last
// enrollment or renewal), zero if never.
type InventoryIdentity struct {
	SPIFFEID      string    `json:"spiffe_id"`
	Org           string    `json:"org"`
	Kind          string    `json:"kind"`
	Name          string    `json:"name"`
	Admin         bool      `json:"admin,omitempty"`
	State         string    `json:"state"` // pending, enrolled, suspended or revoked
	CreatedAt     time.Time `json:"created_at"`
	EnrolledAt    time.Time `json:"enrolled_at,omitzero"`
	LastSeen      time.Time `json:"last_seen,omitzero"`
	SVIDExpiresAt time.Time `json:"svid_expires_at,omitzero"` // the latest of its unexpired certificates
	Dial          []string  `json:"dial,omitempty"`           // services it may dial
	Bind          []string  `json:"bind,omitempty"`           // services it may host
	Workgroups    []string  `json:"workgroups,omitempty"`
	Suspended     string    `json:"suspend_reason,omitempty"`
	// LastUsed is, per grant it holds ("dial:SERVICE", "bind:SERVICE"), the newest use the overlay showed, as
	// the controller records it (at most one granularity, default 1h, older than the use); absent if none.
	LastUsed map[string]time.Time `json:"last_used,omitempty"`
}

// InventoryService is an overlay service granted to identities.
type InventoryService struct {
	Name string   `json:"name"`
	Bind []string `json:"bind"`
	Dial []string `json:"dial"`
}

// InventoryWorkgroup is a workgroup and its members.
type InventoryWorkgroup struct {
	ID      string   `json:"id"`
	Scope   string   `json:"scope"`
	Status  string   `json:"status"`
	Orgs    []string `json:"orgs"` // the owner and every invited organisation
	Members []string `json:"members"`
}

// InventoryAdvertisement is an advertisement and the terms it offers.
type InventoryAdvertisement struct {
	ID              string        `json:"id"`
	Provider        string        `json:"provider"`
	Name            string        `json:"name"`
	Workgroups      []string      `json:"workgroups"`
	MaxMessages     uint64        `json:"max_messages"`
	MaxDuration     time.Duration `json:"max_duration"`
	AllowedTypes    []string      `json:"allowed_message_types"`
	HoldForProvider bool          `json:"hold_for_provider,omitempty"`
}

// InventoryGateway is an MCP or LLM gateway identity and what it last reported (GatewayReport). ReportedAt is
// zero for a gateway that never reported: what it holds is then unknown.
type InventoryGateway struct {
	SPIFFEID   string          `json:"spiffe_id"`
	Kind       string          `json:"kind,omitempty"` // "mcp" or "llm", from its report
	State      string          `json:"state"`
	ReportedAt time.Time       `json:"reported_at,omitzero"`
	Service    string          `json:"service,omitempty"`
	Servers    []GatewayServer `json:"servers,omitempty"`
	Limits     []string        `json:"limits,omitempty"`
	Guardrails []string        `json:"guardrails,omitempty"`
}

// InventoryTool is a tool an MCP gateway exposes (or holds back), with the digest of its pinned definition.
type InventoryTool struct {
	Gateway string `json:"gateway"`
	GatewayTool
}

// InventoryModel is a model an LLM gateway serves.
type InventoryModel struct {
	Gateway string `json:"gateway"`
	GatewayModel
}

// InventoryRouter is an OpenZiti edge router the controller knows.
type InventoryRouter struct {
	Name      string    `json:"name"`
	Online    bool      `json:"online"`
	Enrolled  bool      `json:"enrolled"`
	Disabled  bool      `json:"disabled,omitempty"`
	Version   string    `json:"version,omitempty"`
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// Audit record kinds of gateway reports: an MCP or LLM gateway writes one (through PathAuditRecords, actor its
// own SPIFFE ID, data a GatewayReport) when it starts and whenever what it holds changes. The controller keeps
// each gateway's newest report for the inventory and the findings.
const (
	KindGatewayReportMCP = "mcp.inventory"
	KindGatewayReportLLM = "llm.inventory"
)

// GatewayReport is what a gateway holds, from its own configuration and pin store.
type GatewayReport struct {
	Service    string          `json:"service,omitempty"`    // the overlay service callers reach the gateway by
	Servers    []GatewayServer `json:"servers,omitempty"`    // MCP servers behind an MCP gateway
	Tools      []GatewayTool   `json:"tools,omitempty"`      // their tools
	Models     []GatewayModel  `json:"models,omitempty"`     // models behind an LLM gateway
	Limits     []string        `json:"limits,omitempty"`     // what bounds callers (rates, budgets); none: unbounded
	Guardrails []string        `json:"guardrails,omitempty"` // what content is checked (e.g. "pii:redact"); none: nothing
}

// GatewayServer is an MCP server behind a gateway. Service is the overlay service of a dark server (Kind
// "overlay"), empty for one reached otherwise (stdio, http).
type GatewayServer struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Service string `json:"service,omitempty"`
}

// GatewayTool is a tool as the gateway pinned it: Digest is its definition's, State one of approved, pending,
// quarantined (changed after approval), denied, or unpinned (the pin could not be checked).
type GatewayTool struct {
	Name   string `json:"name"` // as callers see it
	Server string `json:"server"`
	Digest string `json:"digest,omitempty"`
	State  string `json:"state"`
}

// GatewayModel is a model and the endpoints that serve it.
type GatewayModel struct {
	Name      string            `json:"name"`
	Endpoints []GatewayEndpoint `json:"endpoints"`
}

// GatewayEndpoint is one upstream of a model: Service for a dark model server on the overlay, else Host (of its
// base URL, without credentials or path; empty for the provider's public API).
type GatewayEndpoint struct {
	Provider string `json:"provider"`
	Model    string `json:"model,omitempty"`
	Service  string `json:"service,omitempty"`
	Host     string `json:"host,omitempty"`
}

// Finding is one thing in the inventory that is riskier than policy allows, with the evidence and the fix.
type Finding struct {
	ID       string `json:"id"`    // stable for the same check and subject: check/subject
	Check    string `json:"check"` // which check found it
	Severity string `json:"severity"`
	Subject  string `json:"subject"` // what it is about: a SPIFFE ID, workgroup, advertisement or organisation
	Summary  string `json:"summary"`
	Evidence string `json:"evidence"` // from the controller's own state or audit trail
	Fix      string `json:"fix"`
}

// PostureReport is the answer of PathPosture: findings, most severe first, and the drift since the baseline.
type PostureReport struct {
	GeneratedAt time.Time `json:"generated_at"`
	Scope       string    `json:"scope"`
	Findings    []Finding `json:"findings"`
	Drift       *Drift    `json:"drift,omitempty"` // nil without a recorded baseline
}

// Drift is what changed between a baseline inventory and now, as item keys such as "identity:<spiffe-id>".
type Drift struct {
	BaselineAt time.Time `json:"baseline_at"`
	Added      []string  `json:"added"`
	Removed    []string  `json:"removed"`
	Changed    []string  `json:"changed"`
}

// BaselineResponse reports a recorded baseline.
type BaselineResponse struct {
	Scope      string    `json:"scope"`
	RecordedAt time.Time `json:"recorded_at"`
	Items      int       `json:"items"`
}

// PathAlerts answers the anomaly alerts: GET ?after=<cursor>[&wait=<duration>][&limit=<n>]. With after 0 it
// answers the latest alerts (limit, default 100); otherwise those after the cursor, waiting up to wait (at most
// 20 s) for one to come. An organisation administrator is answered its organisation's alerts only.
const PathAlerts = "/v1/posture/alerts"

// Alert is an anomaly alert: an identity deviated from the baseline the controller learned from the audit trail
// (docs/posture.md, "Anomalies").
type Alert struct {
	Cursor    uint64    `json:"cursor,omitempty"` // the audit sequence of its anomaly.alert record
	Time      time.Time `json:"time"`             // the time of the record that raised it
	SPIFFEID  string    `json:"spiffe_id"`
	Org       string    `json:"org"`
	Rule      string    `json:"rule"` // rate, refusals, new_peer, new_message_type, new_tool, new_model, auto_suspend
	Severity  string    `json:"severity"`
	Observed  float64   `json:"observed"`          // records or refusals in the window; 1 for something new
	Baseline  float64   `json:"baseline"`          // the usual number per window
	Threshold float64   `json:"threshold"`         // where the rule alerts
	Item      string    `json:"item,omitempty"`    // the new peer, message type, tool or model
	Suspend   bool      `json:"suspend,omitempty"` // the automatic suspension policy suspends the identity
	Message   string    `json:"message"`           // one line for a human
	Window    string    `json:"window,omitempty"`  // the window the rule counts over
}

// Alerts is an answer of PathAlerts, oldest first. Cursor is what to pass as after for the next ones.
type Alerts struct {
	Cursor uint64  `json:"cursor"`
	Alerts []Alert `json:"alerts"`
}
