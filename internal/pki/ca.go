package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// clockSkew is how far NotBefore is back-dated so that peers whose clocks run
// slightly behind ours accept a certificate the moment it is issued.
const clockSkew = time.Minute

// CA is a certificate authority: its certificate and the key that signs with it.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA creates a self-signed ECDSA P-256 root CA valid from now (less one
// minute of clock skew) for lifetime. If td is non-zero the certificate carries
// the URI SAN spiffe://<td>, making it a SPIFFE trust-domain CA, and IssueSVID
// then only issues IDs in that trust domain.
func NewCA(commonName string, td spiffeid.TrustDomain, lifetime time.Duration, now time.Time) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("pki: CA common name is empty")
	}
	if lifetime <= 0 {
		return nil, fmt.Errorf("pki: CA lifetime %v is not positive", lifetime)
	}
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	skid, err := keyID(key.Public())
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          skid,
	}
	if !td.IsZero() {
		tmpl.URIs = []*url.URL{td.ID().URL()}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA reads a CA written by Save (or any PEM CA certificate and a PKCS#8,
// SEC1 or PKCS#1 key). The certificate file must hold exactly one CA
// certificate and the key must belong to it.
func LoadCA(certPath, keyPath string) (*CA, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("pki: read CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: read CA key: %w", err)
	}
	certs, err := ParseCertsPEM(certPEM)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("pki: CA certificate file holds %d certificates, want 1", len(certs))
	}
	cert := certs[0]
	if !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("pki: certificate is not a CA (needs CA basic constraint and certSign key usage)")
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("pki: CA key does not match CA certificate")
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Save writes the certificate (mode 0644) and the key (mode 0600, SEC1 "EC
// PRIVATE KEY" for ECDSA keys because OpenZiti reads that, PKCS#8 otherwise).
// Each file is replaced atomically, so a reader never sees half a file.
func (ca *CA) Save(certPath, keyPath string) error {
	if err := ca.check(); err != nil {
		return err
	}
	var keyPEM []byte
	var err error
	if k, ok := ca.Key.(*ecdsa.PrivateKey); ok {
		keyPEM, err = EncodeECKeyPEM(k)
	} else {
		keyPEM, err = EncodeKeyPEM(ca.Key)
	}
	if err != nil {
		return err
	}
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(certPath, ca.CertPEM(), 0o644)
}

// CertPEM returns the CA certificate PEM-encoded, as it goes into trust bundles.
func (ca *CA) CertPEM() []byte {
	return EncodeCertsPEM(ca.Cert)
}

// IssueServer issues a TLS certificate for pub with the given SANs, usable for
// both server and client authentication. Its subject CN is the first DNS name,
// or "umbra" when there is none.
func (ca *CA) IssueServer(pub crypto.PublicKey, dnsNames []string, ips []net.IP, uris []*url.URL, ttl time.Duration, now time.Time) (*x509.Certificate, error) {
	cn := "umbra"
	if len(dnsNames) > 0 {
		cn = dnsNames[0]
	}
	return ca.IssueServerCN(pub, cn, dnsNames, ips, uris, ttl, now)
}

// IssueServerCN is IssueServer with the subject CN given: an OpenZiti controller in a cluster must carry its
// cluster member id both as its CN and in its spiffe://TD/controller/ID URI SAN.
func (ca *CA) IssueServerCN(pub crypto.PublicKey, cn string, dnsNames []string, ips []net.IP, uris []*url.URL, ttl time.Duration, now time.Time) (*x509.Certificate, error) {
	if err := checkPublicKey(pub); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		DNSNames:    dnsNames,
		IPAddresses: ips,
		URIs:        uris,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	return ca.issue(tmpl, pub, ttl, now)
}

// IssueWithCN issues a client certificate whose subject CN is cn and which has
// no SANs. OpenZiti verifies possession of a CA by asking for a certificate
// with CN set to its verification token.
func (ca *CA) IssueWithCN(pub crypto.PublicKey, cn string, ttl time.Duration, now time.Time) (*x509.Certificate, error) {
	if cn == "" {
		return nil, errors.New("pki: common name is empty")
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return ca.issue(tmpl, pub, ttl, now)
}

// issue completes tmpl as a leaf certificate for pub and signs it. Validity is
// [now-clockSkew, now+ttl], clipped to the CA's own validity.
func (ca *CA) issue(tmpl *x509.Certificate, pub crypto.PublicKey, ttl time.Duration, now time.Time) (*x509.Certificate, error) {
	if err := ca.check(); err != nil {
		return nil, err
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("pki: ttl %v is not positive", ttl)
	}
	if now.Before(ca.Cert.NotBefore) || !now.Before(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("pki: CA is not valid at %s (valid %s to %s)",
			now.UTC().Format(time.RFC3339), ca.Cert.NotBefore.UTC().Format(time.RFC3339), ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	notBefore := now.Add(-clockSkew)
	if notBefore.Before(ca.Cert.NotBefore) {
		notBefore = ca.Cert.NotBefore
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	skid, err := keyID(pub)
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = newSerial()
	tmpl.NotBefore = notBefore
	tmpl.NotAfter = notAfter
	tmpl.BasicConstraintsValid = true
	tmpl.IsCA = false
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		// RSA key exchange in TLS 1.2 encrypts to the certificate key.
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	tmpl.SubjectKeyId = skid
	// crypto/x509 takes the AKI from the parent's SKID; this covers loaded CAs without one.
	tmpl.AuthorityKeyId = ca.Cert.SubjectKeyId
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse issued certificate: %w", err)
	}
	return cert, nil
}

func (ca *CA) check() error {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return errors.New("pki: CA has no certificate or no key")
	}
	return nil
}

// trustDomain returns the trust domain named by the CA's spiffe://<td> URI
// SAN, if it has one.
func (ca *CA) trustDomain() (spiffeid.TrustDomain, bool) {
	for _, u := range ca.Cert.URIs {
		id, err := spiffeid.FromURI(u)
		if err == nil && id.Path() == "" {
			return id.TrustDomain(), true
		}
	}
	return spiffeid.TrustDomain{}, false
}

// NewKey generates an ECDSA P-256 key, the key type Umbra uses everywhere.
func NewKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate key: %w", err)
	}
	return key, nil
}

// newSerial returns a random positive 128-bit serial number. The top bit is
// fixed so every serial has the same length; 127 bits remain random.
func newSerial() *big.Int {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms.
	n := new(big.Int).SetBytes(b[:])
	return n.SetBit(n, 127, 1)
}

// keyID computes a subject key identifier as in RFC 7093 section 2 method 1:
// the leftmost 160 bits of the SHA-256 of the subjectPublicKey bit string.
func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("pki: marshal public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("pki: parse public key: %w", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

// writeFileAtomic writes data to a temporary file next to path and renames it
// into place.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", filepath.Base(path), err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
			err = fmt.Errorf("pki: write %s: %w", filepath.Base(path), err)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
