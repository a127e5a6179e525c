package controller

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// Revocation must reach hosts, not only the controller: an agentsdk host checks its peers' certificates itself,
// inside the overlay connection, where the controller is not asked. So every certificate the controller issues
// is recorded on its identity, and the certificates of revoked identities are published on a feed that every
// connected workload follows (api.PathRevocations) and consults in each mutual-TLS handshake.

// certEntry is a certificate issued to an identity, kept until it expires.
type certEntry struct {
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
}

func serialOf(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// issueSVID issues an SVID for csr to id and records its serial on id's record, in one update that fails if id
// has been revoked meanwhile: a certificate is handed out only if the revocation feed would list it.
func (s *Server) issueSVID(ctx context.Context, id spiffeid.ID, csr []byte) (*x509.Certificate, error) {
	now := time.Now()
	leaf, err := s.ca.IssueSVID(csr, id, s.cfg.SVIDTTL, now)
	if err != nil {
		return nil, err
	}
	if _, err := s.ids.update(ctx, id, func(r *identityRecord) error {
		if r.State == stateRevoked {
			return failf(http.StatusForbidden, api.CodeRevoked, "%s has been revoked", id)
		}
		live := r.Certs[:0]
		for _, c := range r.Certs {
			if c.NotAfter.After(now) {
				live = append(live, c)
			}
		}
		r.Certs = append(live, certEntry{Serial: serialOf(leaf), NotAfter: leaf.NotAfter})
		return nil
	}); err != nil {
		return nil, err
	}
	return leaf, nil
}

// revocationFeed is the list of revoked certificates, and of suspensions and resumptions, in the order this
// controller learnt them.
type revocationFeed struct {
	epoch     string // a new one each start: revisions of another run do not count here
	mu        sync.Mutex
	known     map[string]bool // revoked serials published
	suspended map[string]bool // serials published as suspended and not resumed since
	events    []feedEvent
	changed   chan struct{} // closed and replaced whenever events grows
}

// feedEvent is one step of the feed: a certificate revoked, suspended or resumed.
type feedEvent struct {
	cert api.RevokedCert
	kind feedEventKind
}

type feedEventKind int

const (
	eventRevoked feedEventKind = iota
	eventSuspended
	eventResumed
)

func newRevocationFeed() *revocationFeed {
	return &revocationFeed{epoch: rand.Text(), known: map[string]bool{}, suspended: map[string]bool{}, changed: make(chan struct{})}
}

// add publishes what changed in a record: the unexpired certificates of a revoked record not published yet, those
// of a suspended record not published as suspended, and the resumption of those of a record no longer suspended.
func (f *revocationFeed) add(r identityRecord, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	grew := false
	for _, c := range r.Certs {
		cert := api.RevokedCert{Serial: c.Serial, NotAfter: c.NotAfter}
		switch {
		case r.State == stateRevoked:
			delete(f.suspended, c.Serial) // revoked wins; hosts check the revoked list first
			if f.known[c.Serial] || !c.NotAfter.After(now) {
				continue
			}
			f.known[c.Serial] = true
			f.events = append(f.events, feedEvent{cert, eventRevoked})
		case r.Suspended:
			if f.suspended[c.Serial] || !c.NotAfter.After(now) {
				continue
			}
			f.suspended[c.Serial] = true
			f.events = append(f.events, feedEvent{cert, eventSuspended})
		default:
			if !f.suspended[c.Serial] {
				continue
			}
			delete(f.suspended, c.Serial)
			f.events = append(f.events, feedEvent{cert, eventResumed})
		}
		grew = true
	}
	if grew {
		close(f.changed)
		f.changed = make(chan struct{})
	}
}

// since returns what was published after revision of epoch, and a channel closed at the next change. A serial
// suspended and resumed within that span is reported by its last state only.
func (f *revocationFeed) since(epoch string, after int) (api.RevocationFeed, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch != f.epoch || after < 0 || after > len(f.events) {
		after = 0 // a revision of another controller or of an earlier run: start over
	}
	out := api.RevocationFeed{Epoch: f.epoch, Revision: len(f.events), Revoked: []api.RevokedCert{}}
	last := map[string]int{} // serial → index of its last suspension or resumption after `after`
	for i, e := range f.events[after:] {
		if e.kind == eventRevoked {
			out.Revoked = append(out.Revoked, e.cert)
		} else {
			last[e.cert.Serial] = after + i
		}
	}
	for i, e := range f.events[after:] {
		if e.kind == eventRevoked || last[e.cert.Serial] != after+i {
			continue
		}
		if e.kind == eventSuspended {
			out.Suspended = append(out.Suspended, e.cert)
		} else {
			out.Resumed = append(out.Resumed, e.cert.Serial)
		}
	}
	return out, f.changed
}

// followRevocations feeds the revocation list from the identity bucket: every record as it is, then every
// change, from whichever controller made it, and closes this controller's overlay circuits of every revoked or
// suspended identity. A watch that fails or is stuck (watchGuard) is watched anew: the list only grows, so
// reading every record again changes nothing already published. It returns when ctx ends.
func (s *Server) followRevocations(ctx context.Context) {
	watchAgain(ctx, s.log, "watching identities for revocations failed; watching again", s.watchRevocations, nil)
}

// watchRevocations is one watch of the identity bucket for followRevocations.
func (s *Server) watchRevocations(ctx context.Context) error {
	guard := newWatchGuard(ctx, s.ids.ids.kv, "identities")
	w, err := s.ids.ids.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch identities: %w", err)
	}
	defer w.Stop()
	check := time.NewTicker(watchCheck)
	defer check.Stop()
	loaded := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-check.C:
			if !loaded {
				continue
			}
			if err := guard.check(ctx); err != nil {
				return err
			}
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch identities: updates ended")
			}
			if e == nil { // the end of the initial values
				guard.loaded()
				loaded = true
				continue
			}
			guard.saw(e.Revision())
			if e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var r identityRecord
			if err := json.Unmarshal(e.Value(), &r); err != nil {
				s.log.Warn("unreadable identity record", "key", e.Key(), "err", err)
				continue
			}
			s.revoked.add(r, time.Now())
			s.sawIdentity(r, time.Now())
			if r.State == stateRevoked || r.Suspended {
				// Each controller of a cluster holds only the overlay circuits it created: whichever one revoked or
				// suspended the identity, every one closes its own.
				if n := s.closeCircuits(r.OverlayID); n > 0 {
					s.log.Info("closed the overlay circuits of a revoked or suspended identity", "spiffe_id", r.SPIFFEID, "circuits", n)
				}
			}
		}
	}
}

const maxRevocationWait = 20 * time.Second

// serveRevocations answers the feed: at once if anything was revoked after the caller's revision, otherwise
// as soon as something is, or empty after the wait.
func (s *Server) serveRevocations(w http.ResponseWriter, r *http.Request) {
	after, err := strconv.Atoi(r.URL.Query().Get("after"))
	if err != nil && r.URL.Query().Get("after") != "" {
		s.fail(w, r, failf(http.StatusBadRequest, api.CodeBadRequest, "after must be a revision number"))
		return
	}
	wait := time.Duration(0)
	if v := r.URL.Query().Get("wait"); v != "" {
		if wait, err = time.ParseDuration(v); err != nil || wait < 0 {
			s.fail(w, r, failf(http.StatusBadRequest, api.CodeBadRequest, "wait must be a duration such as 15s"))
			return
		}
	}
	wait = min(wait, maxRevocationWait)
	epoch := r.URL.Query().Get("epoch")
	feed, changed := s.revoked.since(epoch, after)
	if len(feed.Revoked)+len(feed.Suspended)+len(feed.Resumed) == 0 && wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-changed:
			feed, _ = s.revoked.since(epoch, after)
		case <-t.C:
		case <-r.Context().Done():
			return
		}
	}
	reply(w, http.StatusOK, feed)
}
