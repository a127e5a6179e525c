package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
)

// cmdIdentitySuspend returns `identity suspend` (suspend true) or `identity resume`: the kill switch.
func cmdIdentitySuspend(suspend bool) command {
	name := "identity suspend"
	if !suspend {
		name = "identity resume"
	}
	return func(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
		var reason string
		return withAgent(ctx, name, args, stderr, func(f *flags) {
			f.StringVar(&reason, "reason", "", "why (recorded in the audit trail)")
			f.require("reason")
			f.args(1, "the SPIFFE ID")
			f.check(checkSPIFFEID)
		}, func(a *agentsdk.Agent, pos []string) error {
			raw, err := one(pos, "SPIFFE ID")
			if err != nil {
				return err
			}
			id, err := spiffeid.FromString(raw)
			if err != nil {
				return fmt.Errorf("%s: %q: %w", name, raw, err)
			}
			if !suspend {
				resp, err := a.Controller().Resume(ctx, id, reason)
				if err != nil {
					return err
				}
				fmt.Fprintf(stdout, "resumed %s\n", resp.SPIFFEID)
				return nil
			}
			resp, err := a.Controller().Suspend(ctx, id, reason)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "suspended %s (%d live connections cut, %d sessions closed)\n", resp.SPIFFEID, resp.CircuitsClosed, resp.SessionsClosed)
			return nil
		})
	}
}
