package posture

import (
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// State is a snapshot of the controller's state.
type State struct {
	Now            time.Time
	SVIDLifetime   time.Duration // the lifetime of the SVIDs the controller issues
	PlatformOrg    string        // the platform's own organisation (the controller and the platform administrator)
	Orgs           []Org
	Identities     []Identity
	Workgroups     []workgroups.Workgroup
	Advertisements []workgroups.Advertisement
	Reports        map[string]GatewayReport // each gateway's newest report, by its SPIFFE ID
	Routers        []api.InventoryRouter    // the OpenZiti edge routers
	Usage          Usage                    // what the audit trail says identities used
	GrantUse       GrantUse                 // what the overlay showed identities dialing and binding
	Baseline       map[string]string        // the items (Items) of the scope's recorded baseline; nil if none
}

// GatewayReport is a gateway's newest report (api.GatewayReport) and when the controller received it.
type GatewayReport struct {
	Kind string // "mcp" or "llm"
	At   time.Time
	api.GatewayReport
}

// Org is an organisation.
type Org struct {
	Name      string
	CreatedAt time.Time
}

// Identity states, as the inventory names them.
const (
	StatePending   = "pending"
	StateEnrolled  = "enrolled"
	StateSuspended = "suspended"
	StateRevoked   = "revoked"
)

// Identity is a workload identity as the controller records it.
type Identity struct {
	ID            spiffeid.ID
	Org           string
	Kind          string
	Name          string
	Admin         bool
	State         string // one of the State constants
	SuspendReason string
	CreatedAt     time.Time
	EnrolledAt    time.Time
	LastSeen      time.Time // its last enrollment or renewal; zero if never
	SVIDExpiresAt time.Time // the latest of its unexpired certificates; zero if none
	Dial, Bind    []string  // services
	// Granted is when each service grant was first given, by "dial:SERVICE" or "bind:SERVICE"; a grant
	// absent here is as old as the identity.
	Granted map[string]time.Time
}

// Live reports whether the identity can still act (or be resumed): not revoked.
func (i Identity) Live() bool { return i.State != StateRevoked }

// Policy are the limits the findings hold the state to. The zero value of a field takes its default.
type Policy struct {
	MaxSVIDLifetime       time.Duration // default 24h
	MaxAdvertisedMessages uint64        // default 10000 messages per session
	MaxAdvertisedDuration time.Duration // default 24h per session
	StaleAfter            time.Duration // an identity not seen for this long; default 30 days (720h)
	MaxAdmins             int           // administrators per organisation; default 3
	UnusedAfter           time.Duration // a grant with no recorded use for this long; default 30 days (720h)
	ReachFactor           float64       // an identity reaching more than this many times its kind's median; default 3
	ReachMinPeers         int           // identities of a kind needed before reach is compared; default 5
}

// DefaultPolicy is the policy with every default.
func DefaultPolicy() Policy { return Policy{}.withDefaults() }

func (p Policy) withDefaults() Policy {
	if p.MaxSVIDLifetime <= 0 {
		p.MaxSVIDLifetime = 24 * time.Hour
	}
	if p.MaxAdvertisedMessages == 0 {
		p.MaxAdvertisedMessages = 10000
	}
	if p.MaxAdvertisedDuration <= 0 {
		p.MaxAdvertisedDuration = 24 * time.Hour
	}
	if p.StaleAfter <= 0 {
		p.StaleAfter = 30 * 24 * time.Hour
	}
	if p.MaxAdmins <= 0 {
		p.MaxAdmins = 3
	}
	if p.UnusedAfter <= 0 {
		p.UnusedAfter = 30 * 24 * time.Hour
	}
	if p.ReachFactor <= 0 {
		p.ReachFactor = 3
	}
	if p.ReachMinPeers <= 0 {
		p.ReachMinPeers = 5
	}
	return p
}

// Scope names whose state is seen: one organisation's, or with Org empty (the zero value) the whole platform's.
type Scope struct{ Org string }

// String is "platform" or the organisation's name.
func (s Scope) String() string {
	if s.Org == "" {
		return "platform"
	}
	return s.Org
}

func (s Scope) sees(org string) bool { return s.Org == "" || s.Org == org }

// seesWorkgroup: an organisation sees the workgroups it owns or was invited to.
func (s Scope) seesWorkgroup(w workgroups.Workgroup) bool {
	if s.sees(w.ID.Org) {
		return true
	}
	for _, inv := range w.Invitations {
		if inv.Org == s.Org {
			return true
		}
	}
	return false
}
