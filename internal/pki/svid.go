package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrCSRMismatch means a CSR does not ask for exactly the SPIFFE ID the caller
// authorised. It is wrapped with both IDs.
var ErrCSRMismatch = errors.New("pki: CSR SPIFFE ID mismatch")

// ErrInvalidCSR means a CSR is unusable whatever ID was authorised: it does not
// parse, its signature does not verify, its key is too weak, or it asks for
// names other than a SPIFFE ID. It is wrapped with the reason.
var ErrInvalidCSR = errors.New("pki: invalid CSR")

// RSA keys are accepted from 2048 bits; the upper bound keeps a hostile CSR
// from making signature verification arbitrarily slow.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// IssueSVID checks a PKCS#10 CSR (DER) and returns an X.509-SVID for id signed
// by ca. The CSR's signature must verify, its key must be ECDSA P-256/P-384,
// Ed25519 or RSA of at least 2048 bits, and its only SAN must be one URI equal
// to id (ErrCSRMismatch otherwise). Everything else in the CSR, subject and
// requested extensions included, is ignored: the certificate is built from id
// and the CSR's public key alone.
//
// The certificate has id as its only SAN, an empty subject, digitalSignature
// key usage (plus keyEncipherment for RSA), server and client EKUs, and is
// valid from now-1m until now+ttl or the CA's expiry, whichever comes first.
func (ca *CA) IssueSVID(csrDER []byte, id spiffeid.ID, ttl time.Duration, now time.Time) (*x509.Certificate, error) {
	if err := ca.check(); err != nil {
		return nil, err
	}
	if id.IsZero() {
		return nil, errors.New("pki: SPIFFE ID is empty")
	}
	if id.Path() == "" {
		return nil, fmt.Errorf("pki: SPIFFE ID %s has no path; a workload ID needs one", id)
	}
	if td, ok := ca.trustDomain(); ok && !id.MemberOf(td) {
		return nil, fmt.Errorf("pki: SPIFFE ID %s is outside the CA's trust domain %s", id, td)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	// Check the key before the signature: verifying with a huge RSA key is the expensive part.
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrInvalidCSR, err)
	}
	if len(csr.DNSNames) > 0 || len(csr.IPAddresses) > 0 || len(csr.EmailAddresses) > 0 {
		return nil, fmt.Errorf("%w: DNS, IP and email SANs are not allowed, only the SPIFFE ID", ErrInvalidCSR)
	}
	switch len(csr.URIs) {
	case 0:
		return nil, fmt.Errorf("%w: CSR has no URI SAN, authorised %s", ErrCSRMismatch, id)
	case 1:
	default:
		return nil, fmt.Errorf("%w: CSR has %d URI SANs, want exactly one, authorised %s", ErrCSRMismatch, len(csr.URIs), id)
	}
	got, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("%w: CSR URI SAN %q is not a SPIFFE ID, authorised %s", ErrCSRMismatch, csr.URIs[0].String(), id)
	}
	if got.String() != id.String() {
		return nil, fmt.Errorf("%w: CSR asks for %s, authorised %s", ErrCSRMismatch, got, id)
	}
	tmpl := &x509.Certificate{
		URIs:        []*url.URL{id.URL()},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	return ca.issue(tmpl, csr.PublicKey, ttl, now)
}

// NewCSR returns a DER PKCS#10 request for id signed by key: one URI SAN and an
// empty subject, as IssueSVID expects.
func NewCSR(key crypto.Signer, id spiffeid.ID) ([]byte, error) {
	if id.IsZero() {
		return nil, errors.New("pki: SPIFFE ID is empty")
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CSR: %w", err)
	}
	return der, nil
}

// checkPublicKey enforces the key types Umbra issues certificates for.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return errors.New("malformed ECDSA public key")
		}
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s not allowed, want P-256 or P-384", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return errors.New("malformed Ed25519 public key")
		}
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return errors.New("malformed RSA public key")
		}
		if n := k.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("RSA key of %d bits not allowed, want %d to %d", n, minRSABits, maxRSABits)
		}
	default:
		return fmt.Errorf("public key type %T not allowed", pub)
	}
	return nil
}
