package pki_test

import (
	"crypto"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/umbra-mesh/umbra/internal/pki"
)

// FuzzIssueSVID feeds arbitrary bytes as a CSR for agentID. IssueSVID must not
// panic, and whatever it issues must come from a CSR that is validly signed,
// asks for agentID and nothing else, and yield an SVID for agentID.
// The committed corpus (testdata/fuzz/FuzzIssueSVID) holds CSRs for agentID
// and for other IDs, CSRs with extra SANs, a bad signature and garbage.
func FuzzIssueSVID(f *testing.F) {
	ca, err := pki.NewCA("Umbra fuzz CA", td, 24*time.Hour, t0)
	if err != nil {
		f.Fatal(err)
	}
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Cert})
	key, err := pki.NewKey()
	if err != nil {
		f.Fatal(err)
	}
	for _, id := range []spiffeid.ID{agentID, otherID} {
		der, err := pki.NewCSR(key, id)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}

	f.Fuzz(func(t *testing.T, csrDER []byte) {
		cert, err := ca.IssueSVID(csrDER, agentID, time.Hour, t0)
		if err != nil {
			if cert != nil {
				t.Fatal("certificate returned with an error")
			}
			return
		}

		csr, perr := x509.ParseCertificateRequest(csrDER)
		if perr != nil {
			t.Fatalf("issued for bytes that do not parse as a CSR: %v", perr)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("issued for a CSR whose signature fails: %v", err)
		}
		if len(csr.URIs) != 1 || csr.URIs[0].String() != agentID.String() {
			t.Fatalf("issued for a CSR asking for %v", csr.URIs)
		}
		if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
			t.Fatal("issued for a CSR with extra SANs")
		}
		if pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(csr.PublicKey) {
			t.Fatal("certificate key differs from the CSR key")
		}
		id, _, err := x509svid.Verify([]*x509.Certificate{cert}, bundle, x509svid.WithTime(t0))
		if err != nil {
			t.Fatalf("issued SVID does not verify: %v", err)
		}
		if id != agentID {
			t.Fatalf("issued SVID for %s", id)
		}
		// Asking for any other ID with the same CSR must be a mismatch.
		if _, err := ca.IssueSVID(csrDER, otherID, time.Hour, t0); !errors.Is(err, pki.ErrCSRMismatch) {
			t.Fatalf("CSR for %s accepted for %s (err %v)", agentID, otherID, err)
		}
	})
}
