package api

// Paths of an identity's life after enrollment: re-enrollment, and rotation of the platform administrator.
//
// Rotation takes three calls, so that the old administrator is revoked only once the new one has shown it holds
// its key: the current administrator begins (PathAdminRotate answers the new SPIFFE ID), has an SVID signed for a
// CSR it made for that ID (PathAdminRotateSVID), and the new administrator commits (PathAdminRotateCommit), which
// makes it current and revokes every earlier one. Each call may be repeated after a failure.
const (
	PathReenroll          = "/v1/identities/reenroll"
	PathAdminRotate       = "/v1/admin/rotate"
	PathAdminRotateSVID   = "/v1/admin/rotate/svid"
	PathAdminRotateCommit = "/v1/admin/rotate/commit"
)

// Error codes of the identity life cycle.
const (
	// CodeReenrollRequired refuses a renewal beyond the maximum identity age.
	CodeReenrollRequired = "reenroll_required"
	// CodeRotationPending answers a rotation begun by the new administrator of a rotation not yet committed.
	CodeRotationPending = "rotation_pending"
)

// ReenrollRequest asks for a new one-time enrollment token for an existing identity.
type ReenrollRequest struct {
	SPIFFEID string `json:"spiffe_id"`
	TokenTTL string `json:"token_ttl,omitempty"` // Go duration; default DefaultTokenTTL
}

// RotateAdminResponse names the new platform administrator of the rotation in progress.
type RotateAdminResponse struct {
	SPIFFEID string `json:"spiffe_id"`
}

// CommitRotationResponse reports the platform administrator after the commit and who was revoked by it.
type CommitRotationResponse struct {
	SPIFFEID string   `json:"spiffe_id"`
	Revoked  []string `json:"revoked"`
}
