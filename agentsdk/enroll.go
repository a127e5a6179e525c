package agentsdk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/enrolltoken"
	"github.com/umbra-mesh/umbra/internal/pki"
)

// Enroll redeems a one-time enrollment token: it generates a private key locally, sends only a CSR for the
// token's SPIFFE ID to the enrollment endpoint named in the token, and returns the identity with its SVID.
// The endpoint's certificate must chain to the CA pinned in the token. Enroll returns by ctx's deadline (by 30 s
// if ctx has none) with an error wrapping ctx.Err().
func Enroll(ctx context.Context, token string) (*Identity, error) {
	claims, err := enrolltoken.Parse(token)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: enroll: %w", err)
	}
	sid, err := claims.SPIFFE()
	if err != nil {
		return nil, fmt.Errorf("agentsdk: enroll: %w", err)
	}
	key, err := pki.NewKey()
	if err != nil {
		return nil, fmt.Errorf("agentsdk: enroll: %w", err)
	}
	csr, err := pki.NewCSR(key, sid)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: enroll: %w", err)
	}
	client, err := pinnedClient(claims.Endpoint, claims.CAHash)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: enroll: %w", err)
	}
	defer client.CloseIdleConnections()
	var creds api.Credentials
	if err := postJSON(ctx, client, claims.Endpoint+api.PathEnroll, api.EnrollRequest{Token: token, CSR: csr}, &creds); err != nil {
		return nil, fmt.Errorf("agentsdk: enroll %s: %w", sid, err)
	}
	id, err := fromCredentials(key, creds)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: enroll: %w", err)
	}
	if id.id != sid {
		return nil, fmt.Errorf("agentsdk: enroll: controller issued %s, token was for %s", id.id, sid)
	}
	return id, nil
}

// pinnedClient trusts only server chains that include the CA whose SHA-256 is caHash.
func pinnedClient(endpoint, caHash string) (*http.Client, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, err
	}
	host := u.Hostname()
	verify := func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("enrollment endpoint sent no certificate")
		}
		certs := make([]*x509.Certificate, 0, len(raw))
		for _, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return err
			}
			certs = append(certs, c)
		}
		roots := x509.NewCertPool()
		for _, c := range certs {
			sum := sha256.Sum256(c.Raw)
			if hex.EncodeToString(sum[:]) == caHash {
				roots.AddCert(c)
			}
		}
		_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if err != nil {
			return fmt.Errorf("enrollment endpoint is not the one the token names: %w", err)
		}
		return nil
	}
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			MinVersion:            tls.VersionTLS12,
			InsecureSkipVerify:    true, // replaced by the pinned verification below
			VerifyPeerCertificate: verify,
		}},
	}, nil
}

// postJSON sends body and decodes a 2xx answer into out, or an api.Error into an *APIError.
func postJSON(ctx context.Context, client *http.Client, url string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", api.ContentTypeJSON)
	return doJSON(client, req, out)
}

// doJSON runs req; an error after req's context ended wraps that context's error.
func doJSON(client *http.Client, req *http.Request, out any) error {
	resp, err := client.Do(req)
	if err != nil {
		return ctxError(req.Context(), err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return ctxError(req.Context(), err)
	}
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(data, &e) != nil || e.Code == "" {
			return fmt.Errorf("controller answered %s", resp.Status)
		}
		ae := &APIError{Status: resp.StatusCode, Code: e.Code, Message: e.Message, ID: e.ID}
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			ae.RetryAfter = time.Duration(secs) * time.Second
		}
		return ae
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}
