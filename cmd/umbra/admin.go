package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
)

// cmdAdminRotate replaces the platform administrator: a new identity is issued for a key made here, written to
// --out (default: over the --as file), and only then is the old one revoked.
func cmdAdminRotate(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("admin rotate", stderr)
	var as, out string
	f.StringVar(&as, "as", "", "identity file of the current platform administrator (required)")
	f.StringVar(&out, "out", "", "where to write the new administrator's identity (default: replace the --as file)")
	f.require("as")
	f.args(0, "")
	if _, err := f.parse(args); err != nil {
		return err
	}
	if out == "" {
		out = as
	}
	a, err := connect(ctx, f, as, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
	old := a.ID()
	next, err := a.RotateAdmin(ctx, func(id *agentsdk.Identity) error { return id.Save(out) })
	if errors.Is(err, agentsdk.ErrNotAuthorized) {
		return fmt.Errorf("admin rotate: %w", err)
	}
	if err != nil {
		return fmt.Errorf("admin rotate: %w; nothing was lost: run the same command again to finish", err)
	}
	// The file may have been rewritten meanwhile (the controller refreshes the data directory's copy while it
	// holds the current administrator): make sure it holds the new one now.
	if held, err := agentsdk.LoadIdentity(out); err != nil || held.SPIFFEID() != next.SPIFFEID() {
		if err := next.Save(out); err != nil {
			return fmt.Errorf("admin rotate: writing %s: %w", out, err)
		}
	}
	if next.SPIFFEID() == old {
		fmt.Fprintf(stderr, "finished an interrupted rotation; %s is the platform administrator, identity in %s\n", old, out)
	} else {
		fmt.Fprintf(stderr, "revoked %s; new platform administrator written to %s (SVID valid until %s)\n",
			old, out, next.ExpiresAt().Format(time.RFC3339))
	}
	fmt.Fprintln(stdout, next.SPIFFEID())
	return nil
}

// cmdIdentityReenroll prints a new one-time enrollment token for an existing identity.
func cmdIdentityReenroll(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var ttl string
	return withAgent(ctx, "identity reenroll", args, stderr, func(f *flags) {
		f.StringVar(&ttl, "token-ttl", "", "enrollment token lifetime (default 1h)")
		f.args(1, "the SPIFFE ID to re-enroll")
		f.check(checkSPIFFEID)
	}, func(a *agentsdk.Agent, pos []string) error {
		raw, err := one(pos, "SPIFFE ID")
		if err != nil {
			return err
		}
		id, err := spiffeid.FromString(raw)
		if err != nil {
			return fmt.Errorf("identity reenroll: %q: %w", raw, err)
		}
		resp, err := a.Controller().Reenroll(ctx, id, ttl)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "re-enrollment token for %s valid until %s; enroll with it to start the identity's age over\n",
			resp.SPIFFEID, resp.ExpiresAt.Format(time.RFC3339))
		fmt.Fprintln(stdout, resp.Token)
		return nil
	})
}
