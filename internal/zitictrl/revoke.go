package zitictrl

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/openziti/edge-api/rest_management_api_client"
	"github.com/openziti/edge-api/rest_management_api_client/identity"
	"github.com/openziti/edge-api/rest_management_api_client/terminator"
	"github.com/openziti/storage/boltz"
	"github.com/openziti/ziti/controller/change"
	"github.com/openziti/ziti/controller/model"
	"github.com/openziti/ziti/controller/models"
)

// RevokeIdentity ends the overlay identity id's access for good, at every member of a cluster. An identity
// already deleted counts as revoked, so a revocation cut short may simply be repeated.
//
// A lone controller issues legacy API sessions: disabling the identity deletes them, and with them routers drop
// the identity's connections, bindings and circuits. A cluster member issues OIDC (JWT) API sessions instead,
// and OpenZiti v1.7.2 neither ends those on disable nor checks the disabled flag while they last: the client API
// accepts the token (AppEnv.ProcessJwt), a router asks any member for a circuit with it and gets one
// (handler_edge_ctrl loadFromTokens), its terminators stay, and the SDK exchanges its refresh token for new
// tokens for as long as the identity exists (HybridStorage.createAccessToken). So in a cluster, after disabling,
// RevokeIdentity
//   - records an OpenZiti revocation under the identity's id: replicated through raft, it makes every member
//     refuse each token issued to the identity until now when a router asks for a circuit or a terminator
//     (AppEnv.ValidateAccessToken);
//   - deletes the terminators the identity hosts, so that no dial reaches its listeners;
//   - deletes the identity, so that no member issues, refreshes or accepts a token for it again.
//
// Live circuits are left to the caller: each member holds only the circuits it created, so every member must
// close the identity's own (Fabric().GetNetwork()).
func (c *Controller) RevokeIdentity(id string) error {
	if err := c.mgmt.DisableIdentity(id); err != nil && !isNotFound(err) {
		return err
	}
	if c.cfg.Cluster == nil {
		return nil
	}
	if err := c.revokeTokensOnce(id); err != nil {
		return err
	}
	if err := c.mgmt.deleteTerminatorsOf(id); err != nil {
		return err
	}
	if err := c.mgmt.deleteIdentity(id); err != nil && !isNotFound(err) {
		return err
	}
	return nil
}

// Admits reports whether the overlay still lets identity id in although Umbra has cut it off: revoked (true)
// or suspended (false). On a lone controller an identity is cut off once it is disabled. In a cluster a revoked
// one is cut off once it is deleted (RevokeIdentity), a suspended one once it is disabled and its tokens were
// revoked since (SuspendIdentity). An identity the overlay does not know is cut off. It reads this member's copy
// of the overlay's store, so a change made a moment ago at another member may not be seen yet.
func (c *Controller) Admits(id string, revoked bool) (bool, error) {
	ident, err := c.edge.AppEnv.Managers.Identity.Read(id)
	switch {
	case boltz.IsErrNotFoundErr(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("zitictrl: read identity %s: %w", id, err)
	case c.cfg.Cluster == nil || !ident.Disabled:
		return !ident.Disabled, nil
	case revoked:
		return true, nil
	}
	r, err := c.edge.AppEnv.Managers.Revocation.Read(id)
	switch {
	case boltz.IsErrNotFoundErr(err):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("zitictrl: read the token revocation of identity %s: %w", id, err)
	}
	return r == nil || ident.DisabledAt == nil || r.CreatedAt.Before(*ident.DisabledAt), nil
}

// Attributes are the role attributes of overlay identity id, from this member's copy of the overlay's store;
// found is false if the overlay does not know it.
func (c *Controller) Attributes(id string) (attrs []string, found bool, err error) {
	ident, err := c.edge.AppEnv.Managers.Identity.Read(id)
	switch {
	case boltz.IsErrNotFoundErr(err):
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("zitictrl: read identity %s: %w", id, err)
	}
	return ident.RoleAttributes, true, nil
}

// revokeTokens records a revocation of every token issued to identity id until now, replacing an earlier one
// (which would only cover the tokens issued before it). It lasts as long as the longest token OpenZiti issues.
func (c *Controller) revokeTokens(id string) error {
	revocations := c.edge.AppEnv.GetManagers().Revocation
	if _, err := revocations.Read(id); err == nil {
		if err := revocations.Delete(id, change.New()); err != nil && !boltz.IsErrNotFoundErr(err) {
			return fmt.Errorf("zitictrl: replace the token revocation of identity %s: %w", id, err)
		}
	} else if !boltz.IsErrNotFoundErr(err) {
		return fmt.Errorf("zitictrl: read the token revocation of identity %s: %w", id, err)
	}
	lifetime := c.edge.AppEnv.GetConfig().Edge.Oidc.RefreshTokenDuration
	if lifetime <= 0 {
		lifetime = 24 * time.Hour
	}
	r := &model.Revocation{BaseEntity: models.BaseEntity{Id: id}, ExpiresAt: time.Now().Add(lifetime)}
	if err := revocations.Create(r, change.New().SetSourceType("umbra.revoke")); err != nil {
		return fmt.Errorf("zitictrl: revoke the tokens of identity %s: %w", id, err)
	}
	return nil
}

// deleteTerminatorsOf deletes every terminator the identity hosts.
func (m *Mgmt) deleteTerminatorsOf(identityID string) error {
	var ids []string
	err := m.do("list terminators", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		ids = ids[:0]
		resp, err := c.Terminator.ListTerminators(&terminator.ListTerminatorsParams{
			Filter: ptr("hostId = " + strconv.Quote(identityID)), Limit: ptr(int64(500))}, nil)
		if err != nil {
			return err
		}
		for _, d := range resp.Payload.Data {
			ids = append(ids, *d.ID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, t := range ids {
		err := m.do("delete terminator", func(c *rest_management_api_client.ZitiEdgeManagement) error {
			_, err := c.Terminator.DeleteTerminator(&terminator.DeleteTerminatorParams{ID: t}, nil)
			return err
		})
		if err != nil && !isNotFound(err) {
			return err
		}
	}
	return nil
}

// deleteIdentity deletes an identity.
func (m *Mgmt) deleteIdentity(id string) error {
	return m.do("delete identity", func(c *rest_management_api_client.ZitiEdgeManagement) error {
		_, err := c.Identity.DeleteIdentity(&identity.DeleteIdentityParams{ID: id}, nil)
		return err
	})
}

// isNotFound tells whether the management API answered that the entity does not exist.
func isNotFound(err error) bool {
	var di *identity.DeleteIdentityNotFound
	var dt *terminator.DeleteTerminatorNotFound
	var xi *identity.DisableIdentityNotFound
	return errors.As(err, &di) || errors.As(err, &dt) || errors.As(err, &xi)
}
