package api

import "time"

// PathPolicies serves the organisation policies: forbid-only Cedar policies an organisation adds to every A2A
// decision that involves it (docs/intent.md, "Organisation policies"). Administrators only; an organisation
// administrator reaches its own organisation's, the platform administrator every organisation's.
//
//	GET    PathPolicies[?org=ORG]       lists them (Policies)
//	PUT    PathPolicies/{org}/{name}    sets one (SetPolicyRequest), replacing one of that name
//	DELETE PathPolicies/{org}/{name}    removes one
const PathPolicies = "/v1/policies"

// SetPolicyRequest is the body of a PUT on PathPolicies/{org}/{name}.
type SetPolicyRequest struct {
	Text string `json:"text"` // Cedar; forbid policies only
}

// Policy is one organisation policy as stored.
type Policy struct {
	Org    string    `json:"org"`
	Name   string    `json:"name"`
	Text   string    `json:"text"`
	SHA256 string    `json:"sha256"` // of Text, as the audit records name it
	SetBy  string    `json:"set_by"`
	SetAt  time.Time `json:"set_at"`
}

// Policies is the answer of a GET on PathPolicies, ordered by organisation and name.
type Policies struct {
	Policies []Policy `json:"policies"`
}
