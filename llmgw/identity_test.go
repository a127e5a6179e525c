package llmgw_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/llmgw"
)

// issue makes a certificate signed by parent (self-signed when parent is nil) with an optional SPIFFE ID.
func issue(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, id string, ca bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	if ca {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
	}
	if id != "" {
		u, _ := url.Parse(id)
		tmpl.URIs = []*url.URL{u}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

func TestDefaultIdentityFromClientCertificate(t *testing.T) {
	up := newUpstream(t, "openai")
	gw, err := llmgw.New(llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}, Policies: policyAll})
	if err != nil {
		t.Fatal(err)
	}
	caCert, caKey := issue(t, nil, nil, "", true)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	srv := httptest.NewUnstartedServer(gw.Handler())
	srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	srv.StartTLS()
	defer srv.Close()

	get := func(id string) int {
		tr := srv.Client().Transport.(*http.Transport).Clone()
		if id != "none" {
			cert, key := issue(t, caCert, caKey, id, false)
			tr.TLSClientConfig.Certificates = []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key}}
		}
		resp, err := (&http.Client{Transport: tr}).Get(srv.URL + "/v1/models")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := get(alice); s != 200 {
		t.Errorf("with an SVID: %d", s)
	}
	if s := get(""); s != http.StatusUnauthorized {
		t.Errorf("with a certificate without SPIFFE ID: %d", s)
	}
	if s := get("none"); s != http.StatusUnauthorized {
		t.Errorf("without a certificate: %d", s)
	}
}

type failingDirectory struct{}

func (failingDirectory) Lookup(context.Context, spiffeid.ID) (llmgw.Principal, error) {
	return llmgw.Principal{}, errors.New("controller unreachable")
}

func TestDirectoryFailureIsUnavailable(t *testing.T) {
	up := newUpstream(t, "openai")
	h := newHarness(t, llmgw.Config{Models: []llmgw.Model{oneModel("gpt-test", up)}, Directory: failingDirectory{}})
	status, body, _ := h.do(alice, http.MethodPost, "/v1/chat/completions", `{"model":"gpt-test","messages":[{"role":"user","content":"x"}]}`)
	if status != http.StatusServiceUnavailable || up.chats.Load() != 0 {
		t.Errorf("%d %s", status, body)
	}
}

func TestConfigRejected(t *testing.T) {
	ep := llmgw.Endpoint{BaseURL: "http://127.0.0.1:1/v1"}
	for name, cfg := range map[string]llmgw.Config{
		"no endpoints":         {Models: []llmgw.Model{{Name: "m"}}},
		"twice":                {Models: []llmgw.Model{{Name: "m", Endpoints: []llmgw.Endpoint{ep}}, {Name: "m", Endpoints: []llmgw.Endpoint{ep}}}},
		"bad provider":         {Models: []llmgw.Model{{Name: "m", Endpoints: []llmgw.Endpoint{{Provider: "bard"}}}}},
		"compatible needs url": {Models: []llmgw.Model{{Name: "m", Endpoints: []llmgw.Endpoint{{Provider: "openai-compatible"}}}}},
		"bad url":              {Models: []llmgw.Model{{Name: "m", Endpoints: []llmgw.Endpoint{{BaseURL: "ftp://x"}}}}},
		"bad policy":           {Policies: "permit (principal"},
		"bad budget identity":  {Budgets: []llmgw.Budget{{Identity: "bob"}}},
		"bad mode":             {Guardrails: llmgw.Guardrails{PII: "shout"}},
		"router to nowhere":    {Router: llmgw.Router{Default: "missing"}},
	} {
		if _, err := llmgw.New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
