package controller

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// identityState is where an identity is in its life.
type identityState string

const (
	statePending  identityState = "pending"  // created, token issued, not yet enrolled
	stateEnrolled identityState = "enrolled" // holds an SVID
	stateRevoked  identityState = "revoked"  // refused forever
)

// identityRecord is the controller's record of one workload identity, kept in JetStream KV.
type identityRecord struct {
	SPIFFEID   string        `json:"spiffe_id"`
	Org        string        `json:"org"`
	Kind       string        `json:"kind"`
	Name       string        `json:"name"`
	Admin      bool          `json:"admin,omitempty"`
	State      identityState `json:"state"`
	OverlayID  string        `json:"overlay_id"`
	Attributes []string      `json:"attributes,omitempty"`
	// GrantedAt is when each service attribute was first added (grant); absent for grants made before it was
	// recorded. A grant given again keeps its first time.
	GrantedAt    map[string]time.Time `json:"granted_at,omitempty"`
	CreatedAt    time.Time            `json:"created_at"`
	CreatedBy    string               `json:"created_by"`
	EnrolledAt   time.Time            `json:"enrolled_at,omitzero"`
	RevokedAt    time.Time            `json:"revoked_at,omitzero"`
	RevokedBy    string               `json:"revoked_by,omitempty"`
	RevokeReason string               `json:"revoke_reason,omitempty"`
	// Suspended is the kill switch (suspend.go): refused everywhere, as if revoked, until resumed.
	Suspended     bool      `json:"suspended,omitempty"`
	SuspendedAt   time.Time `json:"suspended_at,omitzero"`
	SuspendedBy   string    `json:"suspended_by,omitempty"`
	SuspendReason string    `json:"suspend_reason,omitempty"`
	// Certs are the certificates issued to the identity that have not expired yet: once it is revoked, the
	// revocation feed lists them.
	Certs []certEntry `json:"certs,omitempty"`
}

var errNoIdentity = errors.New("no such identity")

// identityStore keeps identity records, spent enrollment token IDs, the platform administrator's succession and
// each identity's count of open sessions (quota.go).
type identityStore struct {
	ids    table[identityRecord]
	tokens jetstream.KeyValue
	admins table[adminSuccession]
	quotas table[sessionQuota]
}

func openIdentityStore(ctx context.Context, js jetstream.JetStream) (*identityStore, error) {
	ids, err := openTable[identityRecord](ctx, js, "umbra_identities")
	if err != nil {
		return nil, err
	}
	// A spent token's id must outlive the token (tokens last at most a week), then may go.
	tokens, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "umbra_enroll_tokens", Storage: jetstream.FileStorage,
		TTL: 8 * 24 * time.Hour, MaxBytes: tableMaxBytes, MaxValueSize: 4 << 10})
	if err != nil {
		return nil, fmt.Errorf("tokens bucket: %w", noRoom(err, tableMaxBytes))
	}
	admins, err := openTable[adminSuccession](ctx, js, "umbra_platform_admin")
	if err != nil {
		return nil, err
	}
	quotas, err := openTable[sessionQuota](ctx, js, "umbra_session_quotas")
	if err != nil {
		return nil, err
	}
	return &identityStore{ids: ids, tokens: tokens, admins: admins, quotas: quotas}, nil
}

func idKey(id spiffeid.ID) string { return base64.RawURLEncoding.EncodeToString([]byte(id.String())) }

func (s *identityStore) get(ctx context.Context, id spiffeid.ID) (identityRecord, uint64, error) {
	r, rev, err := s.ids.get(ctx, idKey(id))
	if errors.Is(err, errNotFound) {
		return r, 0, errNoIdentity
	}
	return r, rev, err
}

// create stores a new record; it fails with jetstream.ErrKeyExists if the identity exists.
func (s *identityStore) create(ctx context.Context, r identityRecord) error {
	id, err := spiffeid.FromString(r.SPIFFEID)
	if err != nil {
		return err
	}
	return s.ids.create(ctx, idKey(id), r)
}

// update applies fn to the record under optimistic concurrency.
func (s *identityStore) update(ctx context.Context, id spiffeid.ID, fn func(*identityRecord) error) (identityRecord, error) {
	r, err := s.ids.update(ctx, idKey(id), fn)
	if errors.Is(err, errNotFound) {
		return r, errNoIdentity
	}
	return r, err
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	// A replicated (R>1) stream answers a failed compare-and-set with an error code of its own.
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// spendToken records a token ID as used; it fails with jetstream.ErrKeyExists if it already was.
func (s *identityStore) spendToken(ctx context.Context, jti string, id spiffeid.ID) error {
	_, err := s.tokens.Create(ctx, jti, []byte(id.String()))
	return err
}
