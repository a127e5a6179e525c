package agentsdk

import (
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/pki"
)

const (
	apiA = "https://10.0.0.1:1280/edge/client/v1"
	apiB = "https://10.0.0.2:1280/edge/client/v1"
	apiC = "https://10.0.0.3:1280/edge/client/v1"
)

// TestIdentityOverlayAPIs covers the list of overlay APIs an identity holds: from the credentials (the issuer's
// first, without repeats), through its file (an identity file written before the list loads with its one API,
// and a file with the list still names the first API where older SDKs read it), and across a renewal that
// names fewer.
func TestIdentityOverlayAPIs(t *testing.T) {
	hangLimit(t, time.Minute)
	dir := t.TempDir()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	sid := spiffeid.RequireFromPath(td, "/acme/agent/a")
	ca, err := pki.NewCA("test", td, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	creds := func(first string, others ...string) api.Credentials {
		csr, err := pki.NewCSR(key, sid)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := ca.IssueSVID(csr, sid, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return api.Credentials{SPIFFEID: sid.String(), SVID: string(pki.EncodeCertsPEM(leaf)), Bundle: string(ca.CertPEM()),
			OverlayAPI: first, OverlayAPIs: others, OverlayCA: string(ca.CertPEM()),
			ControllerID: "spiffe://example.org/controller", EnrollURL: "https://10.0.0.1:8443"}
	}

	t.Run("from credentials", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			first  string
			others []string
			want   []string
			bad    bool
		}{
			{"lone controller", apiA, nil, []string{apiA}, false},
			{"issuer first, no repeats", apiB, []string{apiB, apiA, apiC, apiA}, []string{apiB, apiA, apiC}, false},
			{"list alone", "", []string{apiC, apiA}, []string{apiC, apiA}, false},
			{"none", "", nil, nil, true},
			{"not https", apiA, []string{"http://10.0.0.2:1280/edge/client/v1"}, nil, true},
			{"no host", apiA, []string{"https:///edge/client/v1"}, nil, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				id, err := NewIdentity(key, creds(tc.first, tc.others...))
				if tc.bad {
					if err == nil {
						t.Fatalf("NewIdentity accepted overlay APIs %q, %q", tc.first, tc.others)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if got := id.OverlayAPIs(); !slices.Equal(got, tc.want) {
					t.Fatalf("OverlayAPIs() = %q, want %q", got, tc.want)
				}
				if id.overlayAPI != tc.want[0] {
					t.Fatalf("overlay API %q, want the first, %q", id.overlayAPI, tc.want[0])
				}
			})
		}
	})

	t.Run("file written before the list", func(t *testing.T) {
		id, err := NewIdentity(key, creds(apiB, apiA, apiC))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "old.json")
		if err := id.Save(path); err != nil {
			t.Fatal(err)
		}
		var raw map[string]any
		b, _ := os.ReadFile(path)
		if err := json.Unmarshal(b, &raw); err != nil {
			t.Fatal(err)
		}
		if raw["overlay_api"] != apiB {
			t.Fatalf("file names overlay_api %v, want %s (what an older SDK reads)", raw["overlay_api"], apiB)
		}
		delete(raw, "overlay_apis")
		b, _ = json.Marshal(raw)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		old, err := LoadIdentity(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := old.OverlayAPIs(); !slices.Equal(got, []string{apiB}) {
			t.Fatalf("an old file's OverlayAPIs() = %q, want [%s]", got, apiB)
		}
	})

	t.Run("file round trip", func(t *testing.T) {
		id, err := NewIdentity(key, creds(apiB, apiA, apiC))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "new.json")
		if err := id.Save(path); err != nil {
			t.Fatal(err)
		}
		back, err := LoadIdentity(path)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := back.OverlayAPIs(), []string{apiB, apiA, apiC}; !slices.Equal(got, want) {
			t.Fatalf("loaded OverlayAPIs() = %q, want %q", got, want)
		}
	})

	t.Run("renewal names fewer", func(t *testing.T) {
		id, err := NewIdentity(key, creds(apiA, apiB, apiC))
		if err != nil {
			t.Fatal(err)
		}
		next, err := id.withSVID(key, creds(apiC))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := next.OverlayAPIs(), []string{apiC, apiA, apiB}; !slices.Equal(got, want) {
			t.Fatalf("after a renewal through %s: OverlayAPIs() = %q, want %q", apiC, got, want)
		}
	})
}

// TestOverlayAPIOrder checks the order in which a new overlay context tries the APIs: the one that authenticated
// the last context, the identity's, then those learned from the overlay, each once.
func TestOverlayAPIOrder(t *testing.T) {
	hangLimit(t, time.Minute)
	id := &Identity{overlayAPI: apiA, overlayAPIs: []string{apiA, apiB}}
	var book overlayAPIs
	if got, want := book.order(id), []string{apiA, apiB}; !slices.Equal(got, want) {
		t.Fatalf("fresh: %q, want %q", got, want)
	}
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	book.learn([]*url.URL{mustURL(apiB), mustURL(apiC), mustURL("http://10.0.0.9:1280/edge/client/v1"), mustURL(apiC)})
	if got, want := book.order(id), []string{apiA, apiB, apiC}; !slices.Equal(got, want) {
		t.Fatalf("after learning: %q, want %q (plain http is not learned)", got, want)
	}
	book.used(apiC)
	if got, want := book.order(id), []string{apiC, apiA, apiB}; !slices.Equal(got, want) {
		t.Fatalf("after authenticating through %s: %q, want %q", apiC, got, want)
	}
}
