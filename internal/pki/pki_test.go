package pki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/pki"
)

var (
	t0        = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	td        = spiffeid.RequireTrustDomainFromString("example.org")
	agentID   = spiffeid.RequireFromString("spiffe://example.org/acme/agent/a1")
	otherID   = spiffeid.RequireFromString("spiffe://example.org/acme/agent/a2")
	foreignID = spiffeid.RequireFromString("spiffe://other.example/acme/agent/a1")

	// RSA key generation is slow; share one key of each size.
	rsa2048 = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) })
	rsa1024 = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 1024) })
)

func newCA(t *testing.T, td spiffeid.TrustDomain, lifetime time.Duration) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA("Umbra test CA", td, lifetime, t0)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

type keyCase struct {
	name string
	key  func(t *testing.T) crypto.Signer
}

func ecKey(curve elliptic.Curve) func(t *testing.T) crypto.Signer {
	return func(t *testing.T) crypto.Signer {
		k, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
}

func edKey(t *testing.T) crypto.Signer {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(gen func() (*rsa.PrivateKey, error)) func(t *testing.T) crypto.Signer {
	return func(t *testing.T) crypto.Signer {
		k, err := gen()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
}

var allowedKeys = []keyCase{
	{"ECDSA P-256", ecKey(elliptic.P256())},
	{"ECDSA P-384", ecKey(elliptic.P384())},
	{"Ed25519", edKey},
	{"RSA 2048", rsaKey(rsa2048)},
}

func csrWith(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return der
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
