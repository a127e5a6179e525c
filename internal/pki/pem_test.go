package pki_test

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/pki"
)

func TestKeyPEMRoundTrip(t *testing.T) {
	ec, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	rk := rsaKey(rsa2048)(t).(*rsa.PrivateKey)
	ed := edKey(t)
	sec1, err := pki.EncodeECKeyPEM(ec)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := func(k crypto.Signer) []byte {
		b, err := pki.EncodeKeyPEM(k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ecParams := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}})
	tests := []struct {
		name     string
		pem      []byte
		key      crypto.Signer
		wantType string
	}{
		{"PKCS#8 ECDSA", pkcs8(ec), ec, "PRIVATE KEY"},
		{"PKCS#8 RSA", pkcs8(rk), rk, "PRIVATE KEY"},
		{"PKCS#8 Ed25519", pkcs8(ed), ed, "PRIVATE KEY"},
		{"SEC1 ECDSA", sec1, ec, "EC PRIVATE KEY"},
		{"SEC1 ECDSA after EC PARAMETERS", append(ecParams, sec1...), ec, ""},
		{"PKCS#1 RSA", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)}), rk, "RSA PRIVATE KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.wantType != "" {
				if b, _ := pem.Decode(tt.pem); b == nil || b.Type != tt.wantType {
					t.Fatalf("encoded block type is not %q", tt.wantType)
				}
			}
			got, err := pki.ParseKeyPEM(tt.pem)
			if err != nil {
				t.Fatalf("ParseKeyPEM: %v", err)
			}
			eq, ok := got.(interface{ Equal(crypto.PrivateKey) bool })
			if !ok || !eq.Equal(tt.key) {
				t.Errorf("parsed key %T differs from the original", got)
			}
		})
	}
}

func TestParseKeyPEMRefuses(t *testing.T) {
	ec, _ := pki.NewKey()
	ca := newCA(t, td, time.Hour)
	encrypted := &pem.Block{Type: "EC PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00"}, Bytes: []byte{1, 2, 3}}
	der, _ := x509.MarshalECPrivateKey(ec)
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"not PEM", []byte("hello")},
		{"certificate", ca.CertPEM()},
		{"corrupt PKCS#8", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}})},
		{"SEC1 labelled PKCS#1", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der})},
		{"encrypted", pem.EncodeToMemory(encrypted)},
		{"only EC PARAMETERS", pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{5, 0}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if k, err := pki.ParseKeyPEM(tt.in); err == nil {
				t.Fatalf("parsed %T", k)
			}
		})
	}
	if _, err := pki.EncodeECKeyPEM(nil); err == nil {
		t.Error("EncodeECKeyPEM(nil) succeeded")
	}
}

func TestParseCertsPEM(t *testing.T) {
	a, b := newCA(t, td, time.Hour), newCA(t, spiffeid.TrustDomain{}, time.Hour)
	keyPEM, _ := pki.EncodeKeyPEM(a.Key)
	chain := pki.EncodeCertsPEM(a.Cert, b.Cert)
	tests := []struct {
		name    string
		in      []byte
		want    []*x509.Certificate
		wantErr bool
	}{
		{"one", a.CertPEM(), []*x509.Certificate{a.Cert}, false},
		{"two in order", chain, []*x509.Certificate{a.Cert, b.Cert}, false},
		{"text around blocks", append(append([]byte("subject=CN = Umbra\n"), chain...), "\n\n"...), []*x509.Certificate{a.Cert, b.Cert}, false},
		{"empty", nil, nil, true},
		{"no PEM", []byte("garbage"), nil, true},
		{"key block", keyPEM, nil, true},
		{"certificate then key", append(slices.Clone(chain), keyPEM...), nil, true},
		{"corrupt certificate", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x01}}), nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pki.ParseCertsPEM(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !slices.EqualFunc(got, tt.want, (*x509.Certificate).Equal) {
				t.Errorf("got %d certificates, want %d in order", len(got), len(tt.want))
			}
		})
	}
}
