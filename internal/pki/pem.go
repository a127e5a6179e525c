package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

const (
	pemCertificate = "CERTIFICATE"
	pemPKCS8       = "PRIVATE KEY"
	pemSEC1        = "EC PRIVATE KEY"
	pemPKCS1       = "RSA PRIVATE KEY"
	pemECParams    = "EC PARAMETERS"
)

// EncodeCertsPEM encodes certs as consecutive CERTIFICATE blocks, leaf first
// when given a chain.
func EncodeCertsPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: c.Raw})...)
	}
	return out
}

// ParseCertsPEM parses every CERTIFICATE block in b, in order. It fails if b
// holds no certificate, or any block of another type.
func ParseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != pemCertificate {
			return nil, fmt.Errorf("pki: unexpected PEM block %q, want %s", block.Type, pemCertificate)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: parse certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("pki: no PEM certificate found")
	}
	return certs, nil
}

// EncodeKeyPEM encodes key as a PKCS#8 "PRIVATE KEY" block.
func EncodeKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPKCS8, Bytes: der}), nil
}

// EncodeECKeyPEM encodes key as a SEC1 "EC PRIVATE KEY" block, the form
// OpenZiti reads for CA keys.
func EncodeECKeyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	if key == nil {
		return nil, errors.New("pki: encode key: nil key")
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemSEC1, Bytes: der}), nil
}

// ParseKeyPEM parses the first private key in b: PKCS#8 "PRIVATE KEY", SEC1
// "EC PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY". An "EC PARAMETERS" block, as
// OpenSSL writes before SEC1 keys, is skipped; any other block is an error.
func ParseKeyPEM(b []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, errors.New("pki: no PEM private key found")
		}
		if _, encrypted := block.Headers["DEK-Info"]; encrypted {
			return nil, errors.New("pki: encrypted PEM private keys are not supported")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case pemECParams:
			continue
		case pemPKCS8:
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case pemSEC1:
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case pemPKCS1:
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			return nil, fmt.Errorf("pki: unexpected PEM block %q, want a private key", block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("pki: parse %s: %w", block.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("pki: private key type %T cannot sign", key)
		}
		return signer, nil
	}
}
