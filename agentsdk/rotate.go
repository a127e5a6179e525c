package agentsdk

import (
	"context"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/pki"
)

// Reenroll issues a new one-time enrollment token for an existing, unrevoked identity (admin only; an
// organisation administrator for its own organisation, gateways and administrators by the platform). Enrolling
// with it gives the identity a new key and SVID under the same SPIFFE ID, with its grants and memberships, and
// starts its maximum age over. It returns the token and when it expires.
func (c *Controller) Reenroll(ctx context.Context, id spiffeid.ID, tokenTTL string) (api.CreateIdentityResponse, error) {
	var out api.CreateIdentityResponse
	if err := c.post(ctx, api.PathReenroll, api.ReenrollRequest{SPIFFEID: id.String(), TokenTTL: tokenTTL}, &out); err != nil {
		return out, fmt.Errorf("agentsdk: reenroll %s: %w", id, err)
	}
	return out, nil
}

// BeginAdminRotation starts replacing the platform administrator (the current one only): the controller names
// and registers the next administrator, and signs an SVID for a key generated here. The caller stays valid until
// the new identity calls CommitAdminRotation; calling BeginAdminRotation again before that continues the same
// rotation.
func (c *Controller) BeginAdminRotation(ctx context.Context) (*Identity, error) {
	var begun api.RotateAdminResponse
	if err := c.post(ctx, api.PathAdminRotate, struct{}{}, &begun); err != nil {
		return nil, fmt.Errorf("agentsdk: rotate admin: %w", err)
	}
	next, err := spiffeid.FromString(begun.SPIFFEID)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: rotate admin: controller named %q: %w", begun.SPIFFEID, err)
	}
	key, err := pki.NewKey()
	if err != nil {
		return nil, fmt.Errorf("agentsdk: rotate admin: %w", err)
	}
	csr, err := pki.NewCSR(key, next)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: rotate admin: %w", err)
	}
	var creds Credentials
	if err := c.post(ctx, api.PathAdminRotateSVID, api.RenewRequest{CSR: csr}, &creds); err != nil {
		return nil, fmt.Errorf("agentsdk: rotate admin: %w", err)
	}
	id, err := fromCredentials(key, creds)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: rotate admin: %w", err)
	}
	if id.id != next {
		return nil, fmt.Errorf("agentsdk: rotate admin: controller issued %s, not %s", id.id, next)
	}
	return id, nil
}

// CommitAdminRotation, called by the new administrator of a rotation, makes it the platform administrator and
// revokes every earlier one. It returns the identities it revoked; repeating it finishes what a failure left.
func (c *Controller) CommitAdminRotation(ctx context.Context) ([]spiffeid.ID, error) {
	var out api.CommitRotationResponse
	if err := c.post(ctx, api.PathAdminRotateCommit, struct{}{}, &out); err != nil {
		return nil, fmt.Errorf("agentsdk: commit admin rotation: %w", err)
	}
	revoked := make([]spiffeid.ID, 0, len(out.Revoked))
	for _, raw := range out.Revoked {
		id, err := spiffeid.FromString(raw)
		if err != nil {
			return nil, fmt.Errorf("agentsdk: commit admin rotation: controller named %q: %w", raw, err)
		}
		revoked = append(revoked, id)
	}
	return revoked, nil
}

// RotateAdmin replaces the platform administrator a is with a new one and revokes a. save is called with the new
// identity before anything is revoked; if it fails, a stays valid and nothing changes. If a is itself the new
// administrator of a rotation that was interrupted before its commit, RotateAdmin commits it and returns a's
// identity. Running RotateAdmin again after any failure, with whichever identity was saved, finishes the rotation.
func (a *Agent) RotateAdmin(ctx context.Context, save func(*Identity) error) (*Identity, error) {
	next, err := a.Controller().BeginAdminRotation(ctx)
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.Code == api.CodeRotationPending {
		if _, err := a.Controller().CommitAdminRotation(ctx); err != nil {
			return nil, err
		}
		return a.Identity(), nil
	}
	if err != nil {
		return nil, err
	}
	if err := save(next); err != nil {
		return nil, fmt.Errorf("agentsdk: rotate admin: saving the new identity: %w", err)
	}
	na, err := Connect(ctx, next, WithLogger(a.opts.log))
	if err != nil {
		return nil, fmt.Errorf("agentsdk: rotate admin: connecting as %s: %w", next.id, err)
	}
	defer na.Close()
	if _, err := na.Controller().CommitAdminRotation(ctx); err != nil {
		return nil, err
	}
	return next, nil
}
