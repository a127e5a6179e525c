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
