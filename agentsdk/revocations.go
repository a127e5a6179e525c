package agentsdk

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// ErrRevoked is a peer certificate the controller has revoked, refused in the mutual-TLS handshake.
var ErrRevoked = errors.New("agentsdk: peer certificate revoked")

// ErrSuspended is a peer certificate of an identity an administrator has suspended, refused in the mutual-TLS
// handshake until the identity is resumed.
var ErrSuspended = errors.New("agentsdk: peer identity suspended")

// revocations is what an agent knows of revoked certificates: their serial numbers, until they expire. The
// controller pushes them on its revocation feed, which the agent follows for as long as it is connected
// (catching up from its last revision after a reconnect), so a host refuses a revoked peer within about a
// second of the revocation even though the certificate itself is still valid. The same feed names the
// certificates of suspended identities, refused the same way until the feed says they were resumed.
type revocations struct {
	mu        sync.RWMutex
	serials   map[string]time.Time // serial (hex) → not after
	suspended map[string]time.Time // serial (hex) → not after
	epoch     string
	revision  int
}

func newRevocations() *revocations {
	return &revocations{serials: map[string]time.Time{}, suspended: map[string]time.Time{}}
}

// refused returns ErrRevoked or ErrSuspended for a certificate the feed named, nil for any other.
func (r *revocations) refused(c *x509.Certificate) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	serial := c.SerialNumber.Text(16)
	if _, ok := r.serials[serial]; ok {
		return ErrRevoked
	}
	if _, ok := r.suspended[serial]; ok {
		return ErrSuspended
	}
	return nil
}

func (r *revocations) merge(feed api.RevocationFeed, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if feed.Epoch != r.epoch {
		// A new run of the feed starts over from the beginning and names every suspension still in force.
		clear(r.suspended)
	}
	for _, c := range feed.Revoked {
		r.serials[c.Serial] = c.NotAfter
	}
	for _, c := range feed.Suspended {
		r.suspended[c.Serial] = c.NotAfter
	}
	for _, serial := range feed.Resumed {
		delete(r.suspended, serial)
	}
	for _, m := range []map[string]time.Time{r.serials, r.suspended} {
		for s, notAfter := range m {
			if !notAfter.After(now) {
				delete(m, s) // expired: the handshake refuses it anyway
			}
		}
	}
	r.epoch, r.revision = feed.Epoch, feed.Revision
}

// query asks the feed for what came after what this list has seen.
func (r *revocations) query() string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return url.Values{"epoch": {r.epoch}, "after": {strconv.Itoa(r.revision)}, "wait": {revocationWait.String()}}.Encode()
}

// notRevoked wraps authorize so that the handshake first refuses a peer whose certificate was revoked.
func (a *Agent) notRevoked(authorize tlsconfig.Authorizer) tlsconfig.Authorizer {
	return func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		for _, chain := range chains {
			if len(chain) == 0 {
				continue
			}
			if err := a.revoked.refused(chain[0]); err != nil {
				return fmt.Errorf("%w: %s (serial %s)", err, id, chain[0].SerialNumber.Text(16))
			}
		}
		return authorize(id, chains)
	}
}

// revocationWait is how long one request to the feed waits for news.
const revocationWait = 15 * time.Second

// followRevocations keeps the agent's revocation list current until ctx ends: a long poll on the controller's
// feed, resumed from the last revision, with a capped backoff while the controller is unreachable.
func (a *Agent) followRevocations(ctx context.Context) {
	// A client of its own: the long poll neither takes nor leaves a connection in the pool the agent's own API
	// calls use.
	feed := a.newController()
	defer feed.client.CloseIdleConnections()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, revocationWait+10*time.Second)
		var page api.RevocationFeed
		err := feed.get(rctx, api.PathRevocations+"?"+a.revoked.query(), &page)
		cancel()
		if err == nil {
			a.revoked.merge(page, time.Now())
			backoff = 100 * time.Millisecond
			continue
		}
		if ctx.Err() != nil {
			return
		}
		a.opts.log.Debug("revocation feed unreachable, retrying", "in", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
		if errors.Is(err, ErrNotAuthorized) {
			backoff = time.Minute // this identity was refused: nothing it could learn would help it now
		}
	}
}
