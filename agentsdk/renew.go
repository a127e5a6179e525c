package agentsdk

import (
	"context"
	"fmt"
	"time"

	"github.com/umbra-mesh/umbra/internal/pki"
)

// renewAt is when to renew an SVID valid from nb to na: at half its lifetime, as SPIRE agents do.
func renewAt(nb, na time.Time) time.Time { return nb.Add(na.Sub(nb) / 2) }

func (a *Agent) renewLoop(ctx context.Context) {
	retry := time.Duration(0)
	for {
		a.mu.Lock()
		leaf := a.id.svid[0]
		a.mu.Unlock()
		wait := time.Until(renewAt(leaf.NotBefore, leaf.NotAfter))
		if retry > 0 {
			wait = retry
		}
		a.closeRetired(time.Now())
		timer := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		if err := a.Renew(ctx); err != nil {
			left := time.Until(leaf.NotAfter)
			retry = min(max(left/10, time.Second), 30*time.Second)
			a.opts.log.Warn("svid renewal failed", "spiffe_id", a.ID().String(), "expires_in", left.Round(time.Second), "err", err)
			continue
		}
		retry = 0
	}
}

// Renew replaces the agent's key and SVID now: a new key is generated locally, the CSR is signed by the
// controller, the agent reconnects to the overlay with the new SVID and moves its listeners there. Connections
// already open keep running until the old SVID expires. Renew returns by ctx's deadline; if it ends first, the
// agent keeps its current SVID.
func (a *Agent) Renew(ctx context.Context) error {
	old, _, err := a.current()
	if err != nil {
		return err
	}
	key, err := pki.NewKey()
	if err != nil {
		return fmt.Errorf("agentsdk: renew: %w", err)
	}
	csr, err := pki.NewCSR(key, old.id)
	if err != nil {
		return fmt.Errorf("agentsdk: renew: %w", err)
	}
	creds, err := a.opts.renewer(ctx, csr)
	if err != nil {
		return fmt.Errorf("agentsdk: renew: %w", err)
	}
	next, err := old.withSVID(key, creds)
	if err != nil {
		return fmt.Errorf("agentsdk: renew: %w", err)
	}
	if err := a.switchContext(ctx, next, 0); err != nil {
		return fmt.Errorf("agentsdk: renew: %w", err)
	}
	if a.opts.savePath != "" {
		if err := next.Save(a.opts.savePath); err != nil {
			a.opts.log.Warn("saving renewed identity failed", "path", a.opts.savePath, "err", err)
		}
	}
	a.opts.log.Info("svid renewed", "spiffe_id", next.id.String(), "expires_at", next.ExpiresAt())
	return nil
}

// closeRetired closes overlay contexts whose SVID has expired.
func (a *Agent) closeRetired(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	keep := a.retiring[:0]
	for _, r := range a.retiring {
		if now.After(r.at) {
			r.zctx.Close()
			continue
		}
		keep = append(keep, r)
	}
	a.retiring = keep
}
