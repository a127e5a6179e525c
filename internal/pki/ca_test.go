package pki_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/umbra-mesh/umbra/internal/pki"
)

func TestNewCA(t *testing.T) {
	tests := []struct {
		name    string
		td      spiffeid.TrustDomain
		wantURI string
	}{
		{"trust domain CA", td, "spiffe://example.org"},
		{"plain CA", spiffeid.TrustDomain{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newCA(t, tt.td, 24*time.Hour)
			c := ca.Cert
			if !c.IsCA || !c.BasicConstraintsValid {
				t.Error("certificate is not a CA")
			}
			if c.KeyUsage&x509.KeyUsageCertSign == 0 {
				t.Error("CA lacks certSign key usage")
			}
			if c.Subject.CommonName != "Umbra test CA" {
				t.Errorf("CN = %q", c.Subject.CommonName)
			}
			var uris []string
			for _, u := range c.URIs {
				uris = append(uris, u.String())
			}
			if tt.wantURI == "" && len(uris) != 0 || tt.wantURI != "" && !slices.Equal(uris, []string{tt.wantURI}) {
				t.Errorf("URI SANs = %v, want %q", uris, tt.wantURI)
			}
			if !c.NotBefore.Equal(t0.Add(-time.Minute)) || !c.NotAfter.Equal(t0.Add(24*time.Hour)) {
				t.Errorf("validity %v to %v", c.NotBefore, c.NotAfter)
			}
			if len(c.SubjectKeyId) == 0 {
				t.Error("no subject key id")
			}
			pub, ok := c.PublicKey.(*ecdsa.PublicKey)
			if !ok || pub.Curve != elliptic.P256() {
				t.Errorf("CA key is %T, want ECDSA P-256", c.PublicKey)
			}
			if err := c.CheckSignatureFrom(c); err != nil {
				t.Errorf("not self-signed: %v", err)
			}
			if !bytes.Equal(ca.CertPEM(), pki.EncodeCertsPEM(c)) {
				t.Error("CertPEM differs from EncodeCertsPEM")
			}
		})
	}
}

func TestNewCARefuses(t *testing.T) {
	tests := []struct {
		name     string
		cn       string
		lifetime time.Duration
	}{
		{"empty CN", "", time.Hour},
		{"zero lifetime", "ca", 0},
		{"negative lifetime", "ca", -time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := pki.NewCA(tt.cn, td, tt.lifetime, t0); err == nil {
				t.Fatal("NewCA succeeded")
			}
		})
	}
}

func TestIssueValidityCappedByCA(t *testing.T) {
	ca := newCA(t, td, time.Hour) // valid t0-1m .. t0+1h
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, agentID)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                string
		now                 time.Time
		ttl                 time.Duration
		wantFrom, wantUntil time.Time
	}{
		{"ttl inside CA validity", t0, 30 * time.Minute, t0.Add(-time.Minute), t0.Add(30 * time.Minute)},
		{"ttl beyond CA expiry", t0, 24 * time.Hour, t0.Add(-time.Minute), ca.Cert.NotAfter},
		{"late issue, ttl beyond CA expiry", t0.Add(50 * time.Minute), time.Hour, t0.Add(49 * time.Minute), ca.Cert.NotAfter},
		{"skew clipped to CA start", t0.Add(-30 * time.Second), time.Minute, ca.Cert.NotBefore, t0.Add(30 * time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, err := ca.IssueSVID(csr, agentID, tt.ttl, tt.now)
			if err != nil {
				t.Fatal(err)
			}
			if !cert.NotBefore.Equal(tt.wantFrom) || !cert.NotAfter.Equal(tt.wantUntil) {
				t.Errorf("validity %v to %v, want %v to %v", cert.NotBefore, cert.NotAfter, tt.wantFrom, tt.wantUntil)
			}
			if cert.NotAfter.After(ca.Cert.NotAfter) || cert.NotBefore.Before(ca.Cert.NotBefore) {
				t.Error("certificate outlives its CA")
			}
		})
	}
}

func TestIssueServer(t *testing.T) {
	ca := newCA(t, td, 24*time.Hour)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		dns    []string
		ips    []net.IP
		uris   []*url.URL
		cn     string // given to IssueServerCN; empty: IssueServer
		wantCN string
		verify string // host name to verify, empty: skip
	}{
		{"DNS names", []string{"controller.umbra.test", "ctl.umbra.test"}, nil, nil, "", "controller.umbra.test", "ctl.umbra.test"},
		{"IP only", nil, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}, nil, "", "umbra", "127.0.0.1"},
		{"URI", nil, nil, []*url.URL{mustURL(t, "spiffe://example.org/umbra/controller")}, "", "umbra", ""},
		{"CN given", []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")},
			[]*url.URL{mustURL(t, "spiffe://overlay.example.org/controller/a1b2c3")}, "a1b2c3", "a1b2c3", "localhost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			issue := ca.IssueServer
			if tt.cn != "" {
				issue = func(pub crypto.PublicKey, dns []string, ips []net.IP, uris []*url.URL, ttl time.Duration, now time.Time) (*x509.Certificate, error) {
					return ca.IssueServerCN(pub, tt.cn, dns, ips, uris, ttl, now)
				}
			}
			cert, err := issue(key.Public(), tt.dns, tt.ips, tt.uris, time.Hour, t0)
			if err != nil {
				t.Fatalf("IssueServer: %v", err)
			}
			if cert.Subject.CommonName != tt.wantCN {
				t.Errorf("CN = %q, want %q", cert.Subject.CommonName, tt.wantCN)
			}
			if !slices.Equal(cert.DNSNames, tt.dns) || len(cert.IPAddresses) != len(tt.ips) || len(cert.URIs) != len(tt.uris) {
				t.Errorf("SANs = %v %v %v", cert.DNSNames, cert.IPAddresses, cert.URIs)
			}
			if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Errorf("EKU = %v", cert.ExtKeyUsage)
			}
			if cert.IsCA || cert.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("IsCA %v, key usage %b", cert.IsCA, cert.KeyUsage)
			}
			for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				_, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: tt.verify, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{eku}})
				if err != nil {
					t.Errorf("verify %q for EKU %v: %v", tt.verify, eku, err)
				}
			}
		})
	}
}

func TestIssueRefusesWeakKeys(t *testing.T) {
	ca := newCA(t, td, 24*time.Hour)
	huge := &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 9000), E: 65537}
	tests := []struct {
		name string
		pub  crypto.PublicKey
	}{
		{"ECDSA P-224", ecKey(elliptic.P224())(t).Public()},
		{"RSA 1024", rsaKey(rsa1024)(t).Public()},
		{"RSA 9001", huge},
		{"nil", nil},
		{"empty ECDSA", &ecdsa.PublicKey{}},
		{"empty RSA", &rsa.PublicKey{}},
		{"short Ed25519", ed25519.PublicKey{1, 2, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ca.IssueServer(tt.pub, []string{"x.test"}, nil, nil, time.Hour, t0); err == nil {
				t.Error("IssueServer accepted the key")
			}
			if _, err := ca.IssueWithCN(tt.pub, "token", time.Hour, t0); err == nil {
				t.Error("IssueWithCN accepted the key")
			}
		})
	}
}

func TestIssueWithCN(t *testing.T) {
	ca := newCA(t, td, 24*time.Hour)
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	const token = "6c0d2a7e-1b9f-4c1e-9d51-7f3f0e0e5a11"
	cert, err := ca.IssueWithCN(key.Public(), token, 10*time.Minute, t0)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != token {
		t.Errorf("CN = %q", cert.Subject.CommonName)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.URIs)+len(cert.EmailAddresses) != 0 {
		t.Error("certificate has SANs")
	}
	// OpenZiti verifies the proof like this.
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("verify: %v", err)
	}
	if _, err := ca.IssueWithCN(key.Public(), "", time.Minute, t0); err == nil {
		t.Error("empty CN accepted")
	}
}

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	ca := newCA(t, td, 24*time.Hour)
	// Saving twice exercises replacing existing files.
	for range 2 {
		if err := ca.Save(certPath, keyPath); err != nil {
			t.Fatalf("Save: %v", err)
		}
	}
	for path, want := range map[string]os.FileMode{certPath: 0o644, keyPath: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", filepath.Base(path), fi.Mode().Perm(), want)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("directory holds %d entries, want 2 (temporary files left behind?)", len(entries))
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "EC PRIVATE KEY" {
		t.Errorf("key file is not an EC PRIVATE KEY block")
	}

	loaded, err := pki.LoadCA(certPath, keyPath)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !loaded.Cert.Equal(ca.Cert) {
		t.Error("loaded certificate differs")
	}
	if !loaded.Key.(*ecdsa.PrivateKey).Equal(ca.Key) {
		t.Error("loaded key differs")
	}
	// The loaded CA issues SVIDs that verify against the original.
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, agentID)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := loaded.IssueSVID(csr, agentID, time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Cert})
	if _, _, err := x509svid.Verify([]*x509.Certificate{svid}, bundle, x509svid.WithTime(t0)); err != nil {
		t.Errorf("verify: %v", err)
	}
}

func TestLoadCARefuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b := newCA(t, td, time.Hour), newCA(t, td, time.Hour)
	aCert, bCert := write("a.pem", a.CertPEM()), write("b.pem", b.CertPEM())
	aKeyPEM, _ := pki.EncodeKeyPEM(a.Key)
	aKey := write("a.key", aKeyPEM)
	leafKey, _ := pki.NewKey()
	leaf, err := a.IssueServer(leafKey.Public(), []string{"x.test"}, nil, nil, time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	leafKeyPEM, _ := pki.EncodeKeyPEM(leafKey)
	tests := []struct {
		name, cert, key string
	}{
		{"missing cert", filepath.Join(dir, "nope.pem"), aKey},
		{"missing key", aCert, filepath.Join(dir, "nope.key")},
		{"key of another CA", bCert, aKey},
		{"leaf certificate", write("leaf.pem", pki.EncodeCertsPEM(leaf)), write("leaf.key", leafKeyPEM)},
		{"two certificates", write("two.pem", pki.EncodeCertsPEM(a.Cert, b.Cert)), aKey},
		{"key file holds a certificate", aCert, aCert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := pki.LoadCA(tt.cert, tt.key); err == nil {
				t.Fatal("LoadCA succeeded")
			} else if !strings.HasPrefix(err.Error(), "pki: ") {
				t.Errorf("err %q lacks the pki: prefix", err)
			}
		})
	}
}
