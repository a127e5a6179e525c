package controller

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
)

// The platform administrator is a succession of identities, umbra/admin/root, root-2, root-3 and so on: every
// rotation and every break-glass reset hands out the next name, since a revoked SPIFFE ID is never issued again.
// Which one is current is kept in JetStream KV (adminSuccession), so it survives restarts and every controller of
// a deployment agrees on it. Every other name of the succession is revoked, except the new administrator of a
// rotation begun and not yet committed.

// successionKey is the one key of the succession bucket.
const successionKey = "current"

// adminSuccession is the durable record of who the platform administrator is.
type adminSuccession struct {
	Current    string    `json:"current"`           // SPIFFE ID of the platform administrator
	Pending    string    `json:"pending,omitempty"` // new administrator of a rotation not yet committed
	Generation int       `json:"generation"`        // the last N handed out: root is 1, root-2 is 2, ...
	ChangedAt  time.Time `json:"changed_at"`
	ChangedBy  string    `json:"changed_by"`
}

// platformAdmin is what this controller process knows of the succession.
type platformAdmin struct {
	current atomic.Pointer[spiffeid.ID] // as last read
	warned  atomic.Bool                 // the data directory's file holds a revoked administrator; logged once
	// fault, set only by tests, fails the named step of a rotation as a crash there would.
	fault func(step string) error
}

func (p *platformAdmin) failAt(step string) error {
	if p.fault == nil {
		return nil
	}
	return p.fault(step)
}

// adminName is the name segment of the n-th platform administrator.
func adminName(n int) string {
	if n <= 1 {
		return api.PlatformAdminName
	}
	return api.PlatformAdminName + "-" + strconv.Itoa(n)
}

func (s *Server) nthAdmin(n int) spiffeid.ID {
	return spiffeid.RequireFromSegments(s.td, api.PlatformAdminOrg, api.PlatformAdminKind, adminName(n))
}

// succession reads the record; found is false before the first start completed.
func (s *Server) succession(ctx context.Context) (st adminSuccession, found bool, err error) {
	st, _, err = s.ids.admins.get(ctx, successionKey)
	if errors.Is(err, errNotFound) {
		return st, false, nil
	}
	return st, err == nil, err
}

func (s *Server) noteCurrent(st adminSuccession) {
	if id, err := spiffeid.FromString(st.Current); err == nil {
		s.platform.current.Store(&id)
	}
}

// nextAdmin returns the first name after generation that was never registered.
func (s *Server) nextAdmin(ctx context.Context, generation int) (spiffeid.ID, int, error) {
	for n := generation + 1; n <= generation+1000; n++ {
		id := s.nthAdmin(n)
		switch _, _, err := s.ids.get(ctx, id); {
		case errors.Is(err, errNoIdentity):
			return id, n, nil
		case err != nil:
			return spiffeid.ID{}, 0, err
		}
	}
	return spiffeid.ID{}, 0, fmt.Errorf("no free platform administrator name after %s", adminName(generation))
}

// ensureAdmin runs at start. The first start creates the platform administrator root and writes its identity
// file in the data directory. Later starts perform a break-glass reset if configured, finish the revocations an
// interrupted rotation left, and refresh the identity file if it holds the current administrator.
func (s *Server) ensureAdmin(ctx context.Context) error {
	st, found, err := s.succession(ctx)
	if err != nil {
		return fmt.Errorf("controller: reading the platform administrator record: %w", err)
	}
	switch {
	case !found:
		if st, err = s.firstAdmin(ctx); err != nil {
			return fmt.Errorf("controller: admin identity: %w", err)
		}
		if s.cfg.ResetAdmin {
			s.log.Info("first start: the platform administrator was just created, nothing to reset", "spiffe_id", st.Current)
		}
	case s.cfg.ResetAdmin:
		if st, err = s.resetAdmin(ctx); err != nil {
			return fmt.Errorf("controller: resetting the platform administrator: %w", err)
		}
	}
	s.noteCurrent(st)
	if revoked, err := s.retireAdmins(ctx, st, s.controllerID, "superseded platform administrator"); err != nil {
		return fmt.Errorf("controller: revoking superseded platform administrators: %w", err)
	} else if len(revoked) > 0 {
		s.log.Warn("revoked platform administrators an interrupted rotation left valid", "revoked", revoked, "current", st.Current)
	}
	if err := s.refreshAdminFile(ctx, st); err != nil {
		return fmt.Errorf("controller: admin identity: %w", err)
	}
	return nil
}

// firstAdmin creates root, writes its identity file, and only then records it as current: a crash in between
// leaves no record, and the next start does the same again.
func (s *Server) firstAdmin(ctx context.Context) (adminSuccession, error) {
	root := s.nthAdmin(1)
	if rec, _, err := s.ids.get(ctx, root); err == nil && rec.State == stateRevoked {
		return adminSuccession{}, fmt.Errorf("the platform administrator record is missing and %s is revoked; start once with --reset-admin to issue a new administrator", root)
	}
	file := s.AdminIdentityPath()
	if held, err := agentsdk.LoadIdentity(file); err != nil || held.SPIFFEID() != root || time.Until(held.ExpiresAt()) <= s.cfg.SVIDTTL/2 {
		id, err := s.issueDirect(ctx, root, api.PlatformAdminOrg, api.PlatformAdminKind, adminName(1), true)
		if err != nil {
			return adminSuccession{}, err
		}
		if err := id.Save(file); err != nil {
			return adminSuccession{}, err
		}
	}
	st := adminSuccession{Current: root.String(), Generation: 1, ChangedAt: time.Now().UTC(), ChangedBy: s.controllerID.String()}
	if err := s.ids.admins.create(ctx, successionKey, st); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return adminSuccession{}, err
		}
		// Another controller of the deployment recorded it first.
		st, _, err = s.succession(ctx)
		return st, err
	}
	s.log.Info("platform administrator created", "spiffe_id", root.String(), "identity_file", file)
	return st, nil
}

// resetAdmin is break-glass recovery: whoever starts the controller on its data directory holds the CA key and
// is the root of trust already, so it may name a new platform administrator without the old one. The next name
// is reserved first, so that no rotation hands it out as well; the new identity is written to the data
// directory before it becomes current; then every earlier administrator is revoked.
func (s *Server) resetAdmin(ctx context.Context) (adminSuccession, error) {
	var next spiffeid.ID
	var n int
	if _, err := s.ids.admins.update(ctx, successionKey, func(st *adminSuccession) error {
		var err error
		next, n, err = s.nextAdmin(ctx, st.Generation)
		st.Generation = n
		return err
	}); err != nil {
		return adminSuccession{}, err
	}
	id, err := s.issueDirect(ctx, next, api.PlatformAdminOrg, api.PlatformAdminKind, adminName(n), true)
	if err != nil {
		return adminSuccession{}, err
	}
	file := s.AdminIdentityPath()
	if err := id.Save(file); err != nil {
		return adminSuccession{}, err
	}
	var previous string
	st, err := s.ids.admins.update(ctx, successionKey, func(st *adminSuccession) error {
		previous = st.Current
		st.Current, st.Pending, st.ChangedAt, st.ChangedBy = next.String(), "", time.Now().UTC(), s.controllerID.String()
		return nil
	})
	if err != nil {
		return adminSuccession{}, err
	}
	revoked, err := s.retireAdmins(ctx, st, s.controllerID, "break-glass reset of the platform administrator")
	if err != nil {
		return adminSuccession{}, err
	}
	s.record(ctx, audit.Record{Kind: "admin.reset", Actor: s.controllerID.String(), Decision: "allow",
		Reason: "break-glass reset from the data directory", Data: jsonRaw(map[string]any{"previous": previous, "current": next.String(), "revoked": revoked})})
	s.log.Warn("platform administrator reset from the data directory", "spiffe_id", next.String(), "identity_file", file,
		"previous", previous, "revoked", revoked)
	return st, nil
}

// retireAdmins revokes every platform administrator of the succession that is neither current nor pending and
// not revoked yet. Normally there is none; after a commit or a reset that was cut short, these are the ones left.
func (s *Server) retireAdmins(ctx context.Context, st adminSuccession, actor spiffeid.ID, reason string) ([]string, error) {
	var revoked []string
	for n := 1; n <= st.Generation; n++ {
		id := s.nthAdmin(n)
		if id.String() == st.Current || id.String() == st.Pending {
			continue
		}
		rec, _, err := s.ids.get(ctx, id)
		if errors.Is(err, errNoIdentity) {
			continue
		}
		if err != nil {
			return revoked, err
		}
		if rec.State == stateRevoked {
			continue
		}
		if _, err := s.revoke(ctx, actor, id, reason); err != nil {
			return revoked, err
		}
		revoked = append(revoked, id.String())
	}
	return revoked, nil
}

// refreshAdminFile re-issues the SVID of the data directory's administrator file when less than half of its
// lifetime is left, if and only if the file holds the current platform administrator. A revoked administrator
// is never re-issued, and a file that is missing or holds anyone else is left alone: the controller never mints
// an administrator on its own after the first start.
func (s *Server) refreshAdminFile(ctx context.Context, st adminSuccession) error {
	file := s.AdminIdentityPath()
	held, err := agentsdk.LoadIdentity(file)
	if err != nil {
		return nil // moved away or replaced by the operator: not ours to recreate
	}
	id := held.SPIFFEID()
	if id.String() != st.Current {
		if rec, _, err := s.ids.get(ctx, id); err == nil && rec.State == stateRevoked && !s.platform.warned.Swap(true) {
			s.log.Warn("the administrator identity file in the data directory holds a revoked administrator and is no longer refreshed: use the current administrator's file, or restart once with --reset-admin",
				"file", file, "spiffe_id", id.String(), "current", st.Current)
		}
		return nil
	}
	// While a rotation is in progress its new administrator may be written to this very file.
	if st.Pending != "" || time.Until(held.ExpiresAt()) > s.cfg.SVIDTTL/2 {
		return nil
	}
	rec, _, err := s.ids.get(ctx, id)
	if err != nil {
		return err
	}
	fresh, err := s.issueDirect(ctx, id, rec.Org, rec.Kind, path.Base(id.Path()), rec.Admin)
	if err != nil {
		return err
	}
	// Look again just before writing, so that a rotation begun meanwhile is not overwritten.
	if now, _, err := s.succession(ctx); err != nil || now.Current != st.Current || now.Pending != "" {
		return err
	}
	if again, err := agentsdk.LoadIdentity(file); err != nil || again.SPIFFEID() != id {
		return nil
	}
	return fresh.Save(file)
}

// keepAdminFresh keeps the data directory's administrator file usable however long the controller runs, as long
// as it holds the current platform administrator.
func (s *Server) keepAdminFresh(ctx context.Context) {
	t := time.NewTicker(s.cfg.SVIDTTL / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, found, err := s.succession(ctx)
		if err == nil && found {
			s.noteCurrent(st)
			err = s.refreshAdminFile(ctx, st)
		}
		if err != nil && ctx.Err() == nil {
			s.log.Error("refreshing the administrator's identity file failed", "err", err)
		}
	}
}
