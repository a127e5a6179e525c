package controller

import (
	"slices"
	"testing"
	"time"
)

// TestRevocationFeedSuspensions follows the feed as a host does, by revision, through a suspension, a resume,
// a suspension and resume between two reads, and a revocation of a suspended identity.
func TestRevocationFeedSuspensions(t *testing.T) {
	now := time.Now()
	f := newRevocationFeed()
	rec := identityRecord{SPIFFEID: "spiffe://umbra.local/acme/agent/a", State: stateEnrolled,
		Certs: []certEntry{{Serial: "a1", NotAfter: now.Add(time.Hour)}, {Serial: "a0", NotAfter: now.Add(-time.Minute)}}}
	f.add(rec, now) // enrolled, never suspended: nothing to publish
	first, _ := f.since("", 0)
	if first.Revision != 0 || len(first.Revoked)+len(first.Suspended)+len(first.Resumed) != 0 {
		t.Fatalf("an enrolled identity was published: %+v", first)
	}

	rec.Suspended = true
	f.add(rec, now)
	f.add(rec, now) // the same state again publishes nothing more
	got, _ := f.since(first.Epoch, first.Revision)
	if len(got.Suspended) != 1 || got.Suspended[0].Serial != "a1" || len(got.Resumed)+len(got.Revoked) != 0 || got.Revision != 1 {
		t.Fatalf("after the suspension: %+v, want a1 (unexpired only) suspended at revision 1", got)
	}

	rec.Suspended = false
	f.add(rec, now)
	got, _ = f.since(first.Epoch, 1)
	if !slices.Equal(got.Resumed, []string{"a1"}) || len(got.Suspended) != 0 {
		t.Fatalf("after the resume: %+v, want a1 resumed", got)
	}
	// A host that never saw the suspension reads both at once: the last state only.
	got, _ = f.since(first.Epoch, 0)
	if !slices.Equal(got.Resumed, []string{"a1"}) || len(got.Suspended) != 0 {
		t.Fatalf("suspension and resume read together: %+v, want only a1 resumed", got)
	}

	rec.Suspended = true
	f.add(rec, now)
	rec.State = stateRevoked
	f.add(rec, now)
	got, changed := f.since(first.Epoch, 2)
	if len(got.Revoked) != 1 || got.Revoked[0].Serial != "a1" || len(got.Suspended) != 1 {
		t.Fatalf("suspended, then revoked: %+v, want a1 revoked (and its suspension)", got)
	}
	select {
	case <-changed:
		t.Fatal("the change channel closed with nothing new")
	default:
	}
	// Another epoch (a restarted controller) starts over from the beginning.
	if again, _ := f.since("another-run", 3); again.Revision != got.Revision || len(again.Revoked) != 1 {
		t.Fatalf("a revision of another epoch: %+v", again)
	}
}
