package pki_test

import (
	"bytes"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/umbra-mesh/umbra/internal/pki"
)

func TestIssueSVID(t *testing.T) {
	const ttl = time.Hour
	for _, tdCA := range []spiffeid.TrustDomain{td, {}} {
		ca := newCA(t, tdCA, 24*time.Hour)
		bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Cert})
		for _, kc := range allowedKeys {
			t.Run(kc.name+"/CA td="+tdCA.Name(), func(t *testing.T) {
				key := kc.key(t)
				csr, err := pki.NewCSR(key, agentID)
				if err != nil {
					t.Fatalf("NewCSR: %v", err)
				}
				cert, err := ca.IssueSVID(csr, agentID, ttl, t0)
				if err != nil {
					t.Fatalf("IssueSVID: %v", err)
				}

				if len(cert.URIs) != 1 || cert.URIs[0].String() != agentID.String() {
					t.Errorf("URI SANs = %v, want [%s]", cert.URIs, agentID)
				}
				if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
					t.Error("certificate has non-URI SANs")
				}
				if cert.Subject.CommonName != "" || len(cert.Subject.Names) != 0 {
					t.Errorf("subject = %q, want empty", cert.Subject)
				}
				wantKU := x509.KeyUsageDigitalSignature
				if _, isRSA := key.(*rsa.PrivateKey); isRSA {
					wantKU |= x509.KeyUsageKeyEncipherment
				}
				if cert.KeyUsage != wantKU {
					t.Errorf("key usage = %b, want %b", cert.KeyUsage, wantKU)
				}
				if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
					t.Errorf("EKU = %v", cert.ExtKeyUsage)
				}
				if cert.IsCA {
					t.Error("leaf is a CA")
				}
				if !cert.NotBefore.Equal(t0.Add(-time.Minute)) || !cert.NotAfter.Equal(t0.Add(ttl)) {
					t.Errorf("validity %v to %v", cert.NotBefore, cert.NotAfter)
				}
				if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() != 128 {
					t.Errorf("serial %x is not a positive 128-bit number", cert.SerialNumber)
				}
				if len(cert.SubjectKeyId) == 0 || !bytes.Equal(cert.AuthorityKeyId, ca.Cert.SubjectKeyId) {
					t.Errorf("SKID %x, AKID %x, CA SKID %x", cert.SubjectKeyId, cert.AuthorityKeyId, ca.Cert.SubjectKeyId)
				}

				keyPEM, err := pki.EncodeKeyPEM(key)
				if err != nil {
					t.Fatal(err)
				}
				svid, err := x509svid.Parse(pki.EncodeCertsPEM(cert), keyPEM)
				if err != nil {
					t.Fatalf("x509svid.Parse: %v", err)
				}
				if svid.ID != agentID {
					t.Errorf("parsed ID = %s", svid.ID)
				}
				gotID, _, err := x509svid.Verify([]*x509.Certificate{cert}, bundle, x509svid.WithTime(t0))
				if err != nil {
					t.Fatalf("x509svid.Verify: %v", err)
				}
				if gotID != agentID {
					t.Errorf("verified ID = %s", gotID)
				}
			})
		}
	}
}

// TestIssueSVIDSerialsDiffer guards against a constant or low-entropy serial.
func TestIssueSVIDSerialsDiffer(t *testing.T) {
	ca := newCA(t, td, time.Hour)
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, agentID)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 8 {
		cert, err := ca.IssueSVID(csr, agentID, time.Minute, t0)
		if err != nil {
			t.Fatal(err)
		}
		s := cert.SerialNumber.String()
		if seen[s] {
			t.Fatalf("serial %s issued twice", s)
		}
		seen[s] = true
	}
}

func TestIssueSVIDRefuses(t *testing.T) {
	ca := newCA(t, td, 24*time.Hour)
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	valid, err := pki.NewCSR(key, agentID)
	if err != nil {
		t.Fatal(err)
	}
	uris := func(s ...string) []*url.URL {
		var out []*url.URL
		for _, u := range s {
			out = append(out, mustURL(t, u))
		}
		return out
	}
	badSig := slices.Clone(valid)
	badSig[len(badSig)-3] ^= 0x01 // inside the signature's s value

	tests := []struct {
		name    string
		csr     func(t *testing.T) []byte
		id      spiffeid.ID
		ttl     time.Duration // 0: one hour; negative: pass 0
		now     time.Time
		wantErr error    // nil: any error but neither sentinel
		wantIn  []string // substrings of the message
	}{
		{
			name:    "another SPIFFE ID",
			csr:     func(t *testing.T) []byte { c, _ := pki.NewCSR(key, otherID); return c },
			wantErr: pki.ErrCSRMismatch,
			wantIn:  []string{otherID.String(), agentID.String()},
		},
		{
			name: "two URI SANs",
			csr: func(t *testing.T) []byte {
				return csrWith(t, key, &x509.CertificateRequest{URIs: uris(agentID.String(), otherID.String())})
			},
			wantErr: pki.ErrCSRMismatch,
			wantIn:  []string{"2 URI SANs"},
		},
		{
			name: "same URI SAN twice",
			csr: func(t *testing.T) []byte {
				return csrWith(t, key, &x509.CertificateRequest{URIs: uris(agentID.String(), agentID.String())})
			},
			wantErr: pki.ErrCSRMismatch,
		},
		{
			name:    "no SAN",
			csr:     func(t *testing.T) []byte { return csrWith(t, key, &x509.CertificateRequest{}) },
			wantErr: pki.ErrCSRMismatch,
		},
		{
			name: "URI SAN not a SPIFFE ID",
			csr: func(t *testing.T) []byte {
				return csrWith(t, key, &x509.CertificateRequest{URIs: uris("https://example.org/acme/agent/a1")})
			},
			wantErr: pki.ErrCSRMismatch,
		},
		{
			name:    "SPIFFE ID in another trust domain",
			csr:     func(t *testing.T) []byte { c, _ := pki.NewCSR(key, foreignID); return c },
			wantErr: pki.ErrCSRMismatch,
		},
		{
			name: "DNS SAN",
			csr: func(t *testing.T) []byte {
				return csrWith(t, key, &x509.CertificateRequest{URIs: uris(agentID.String()), DNSNames: []string{"evil.example.org"}})
			},
			wantErr: pki.ErrInvalidCSR,
			wantIn:  []string{"SANs are not allowed"},
		},
		{
			name: "IP SAN",
			csr: func(t *testing.T) []byte {
				return csrWith(t, key, &x509.CertificateRequest{URIs: uris(agentID.String()), IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}})
			},
			wantErr: pki.ErrInvalidCSR,
		},
		{
			name: "email SAN",
			csr: func(t *testing.T) []byte {
				return csrWith(t, key, &x509.CertificateRequest{URIs: uris(agentID.String()), EmailAddresses: []string{"a@example.org"}})
			},
			wantErr: pki.ErrInvalidCSR,
		},
		{
			name:    "bad signature",
			csr:     func(t *testing.T) []byte { return badSig },
			wantErr: pki.ErrInvalidCSR,
			wantIn:  []string{"signature"},
		},
		{
			name:    "garbage",
			csr:     func(t *testing.T) []byte { return []byte("this is not a CSR") },
			wantErr: pki.ErrInvalidCSR,
		},
		{
			name:    "empty",
			csr:     func(t *testing.T) []byte { return nil },
			wantErr: pki.ErrInvalidCSR,
		},
		{
			name:    "truncated",
			csr:     func(t *testing.T) []byte { return valid[:len(valid)/2] },
			wantErr: pki.ErrInvalidCSR,
		},
		{
			name: "PEM instead of DER",
			csr: func(t *testing.T) []byte {
				return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: valid})
			},
			wantErr: pki.ErrInvalidCSR,
		},
		{
			name:    "ECDSA P-224 key",
			csr:     func(t *testing.T) []byte { c, _ := pki.NewCSR(ecKey(elliptic.P224())(t), agentID); return c },
			wantErr: pki.ErrInvalidCSR,
			wantIn:  []string{"P-224"},
		},
		{
			name:    "ECDSA P-521 key",
			csr:     func(t *testing.T) []byte { c, _ := pki.NewCSR(ecKey(elliptic.P521())(t), agentID); return c },
			wantErr: pki.ErrInvalidCSR,
		},
		{
			name:    "RSA 1024 key",
			csr:     func(t *testing.T) []byte { c, _ := pki.NewCSR(rsaKey(rsa1024)(t), agentID); return c },
			wantErr: pki.ErrInvalidCSR,
			wantIn:  []string{"1024 bits"},
		},
		{
			name:   "authorised ID outside the CA trust domain",
			csr:    func(t *testing.T) []byte { c, _ := pki.NewCSR(key, foreignID); return c },
			id:     foreignID,
			wantIn: []string{"outside the CA's trust domain"},
		},
		{
			name:   "authorised ID without path",
			csr:    func(t *testing.T) []byte { return valid },
			id:     td.ID(),
			wantIn: []string{"no path"},
		},
		{
			name: "zero ttl",
			csr:  func(t *testing.T) []byte { return valid },
			ttl:  -1,
		},
		{
			name:   "CA expired",
			csr:    func(t *testing.T) []byte { return valid },
			now:    t0.Add(24 * time.Hour),
			wantIn: []string{"CA is not valid"},
		},
		{
			name:   "CA not yet valid",
			csr:    func(t *testing.T) []byte { return valid },
			now:    t0.Add(-time.Hour),
			wantIn: []string{"CA is not valid"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ttl, now := tt.id, tt.ttl, tt.now
			if id.IsZero() {
				id = agentID
			}
			if ttl == 0 {
				ttl = time.Hour
			} else if ttl < 0 {
				ttl = 0
			}
			if now.IsZero() {
				now = t0
			}
			csr := tt.csr(t)
			if len(csr) == 0 && tt.name != "empty" {
				t.Fatal("test CSR could not be built")
			}
			cert, err := ca.IssueSVID(csr, id, ttl, now)
			if err == nil {
				t.Fatalf("IssueSVID issued %v", cert.URIs)
			}
			t.Log(err)
			if cert != nil {
				t.Error("certificate returned with an error")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && (errors.Is(err, pki.ErrCSRMismatch) || errors.Is(err, pki.ErrInvalidCSR)) {
				t.Errorf("err = %v blames the CSR", err)
			}
			if tt.wantErr != pki.ErrCSRMismatch && errors.Is(err, pki.ErrCSRMismatch) {
				t.Errorf("err = %v, must not be ErrCSRMismatch", err)
			}
			if !strings.HasPrefix(err.Error(), "pki: ") {
				t.Errorf("err %q lacks the pki: prefix", err)
			}
			for _, s := range tt.wantIn {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("err %q does not mention %q", err, s)
				}
			}
		})
	}
}

func TestNewCSR(t *testing.T) {
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := pki.NewCSR(key, agentID)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Error(err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != agentID.String() || csr.Subject.CommonName != "" || len(csr.DNSNames) != 0 {
		t.Errorf("CSR subject %q, URIs %v, DNS %v", csr.Subject, csr.URIs, csr.DNSNames)
	}
	if _, err := pki.NewCSR(key, spiffeid.ID{}); err == nil {
		t.Error("NewCSR accepted a zero ID")
	}
}
