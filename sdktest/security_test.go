package sdktest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openziti/identity"
	"github.com/openziti/sdk-golang/ziti"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/enrolltoken"
	"github.com/umbra-mesh/umbra/internal/pki"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// breakWithin bounds how long revocation may take to cut an established connection or refuse a new dial.
const breakWithin = 10 * time.Second

var nameSeq atomic.Int64

// uniq returns a fresh identity or service name, so tests and benchmarks survive -count=N against the one
// shared controller (identity names can never be reused, not even after revocation).
func uniq(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, nameSeq.Add(1))
}

// identityJSON mirrors the file Identity.Save writes; tests read it to get at the raw credentials.
type identityJSON struct {
	SPIFFEID     string `json:"spiffe_id"`
	Key          string `json:"key"`
	SVID         string `json:"svid"`
	Bundle       string `json:"bundle"`
	OverlayAPI   string `json:"overlay_api"`
	OverlayCA    string `json:"overlay_ca"`
	ControllerID string `json:"controller_id"`
	EnrollURL    string `json:"enroll_url"`
}

func readIdentityFile(tb testing.TB, path string) identityJSON {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	var f identityJSON
	if err := json.Unmarshal(b, &f); err != nil {
		tb.Fatalf("identity file %s: %v", path, err)
	}
	return f
}

func rawIdentity(tb testing.TB, id *agentsdk.Identity) identityJSON {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "identity.json")
	if err := id.Save(path); err != nil {
		tb.Fatal(err)
	}
	return readIdentityFile(tb, path)
}

func (f identityJSON) leaf(tb testing.TB) *x509.Certificate {
	tb.Helper()
	certs, err := pki.ParseCertsPEM([]byte(f.SVID))
	if err != nil {
		tb.Fatal(err)
	}
	return certs[0]
}

// rawContext authenticates id to the overlay with sdk-golang directly, bypassing the agent's inner mutual TLS.
func rawContext(tb testing.TB, id *agentsdk.Identity) ziti.Context {
	tb.Helper()
	f := rawIdentity(tb, id)
	cfg := &ziti.Config{ZtAPI: f.OverlayAPI, ID: identity.Config{
		Cert: "pem:" + f.SVID, Key: "pem:" + f.Key, CA: "pem:" + f.OverlayCA}}
	zctx, err := ziti.NewContextWithOpts(cfg, &ziti.Options{RefreshInterval: 5 * time.Second, SessionRefreshInterval: 5 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	if err := zctx.Authenticate(); err != nil {
		zctx.Close()
		tb.Fatalf("raw overlay authentication: %v", err)
	}
	tb.Cleanup(zctx.Close)
	return zctx
}

// rawHostWait is how long rawDial waits for a host that has no terminator at the moment. The attack tests are
// about what the host answers, and a host agent that is hosting its service again (its connection to the router
// dropped, or it moved to a new overlay session) has none for a moment, as dialEcho's comment says.
const rawHostWait = 5 * time.Second

// rawDial dials service on the raw overlay, refreshing the service list once if a grant is newer than it, and
// dialling again for up to rawHostWait while the service has no terminator; it logs how long that took.
func rawDial(tb testing.TB, zctx ziti.Context, service string) (net.Conn, error) {
	tb.Helper()
	opts := &ziti.DialOptions{ConnectTimeout: 10 * time.Second}
	c, err := zctx.DialWithOptions(service, opts)
	if err != nil && strings.Contains(err.Error(), "not found") {
		if _, rerr := zctx.RefreshService(service); rerr == nil {
			c, err = zctx.DialWithOptions(service, opts)
		}
	}
	start := time.Now()
	for err != nil && strings.Contains(err.Error(), "has no terminators") && time.Since(start) < rawHostWait {
		time.Sleep(100 * time.Millisecond)
		if c, err = zctx.DialWithOptions(service, opts); err == nil {
			tb.Logf("raw overlay dial of %s: the host had no terminator for %s", service, time.Since(start).Round(time.Millisecond))
		}
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// probe reports whether conn still echoes: a write or read error means it is broken, a read timeout means
// undecided (the caller polls again).
func probe(conn net.Conn) (broken bool, err error) {
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write([]byte("p")); err != nil {
		return true, err
	}
	buf := make([]byte, 256)
	if _, err := conn.Read(buf); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false, err
		}
		return true, err
	}
	return false, nil
}

// waitBroken polls conn with a write and a read every 20ms until it fails, and fails the test if it still
// works after breakWithin.
func waitBroken(t *testing.T, what string, conn net.Conn) {
	t.Helper()
	start := time.Now()
	for {
		broken, err := probe(conn)
		if broken {
			t.Logf("%s broke after %v: %v", what, time.Since(start).Round(time.Millisecond), err)
			return
		}
		if time.Since(start) > breakWithin {
			t.Fatalf("%s still open %v after revocation (last probe: %v)", what, breakWithin, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialEcho dials a serveEcho service and checks the greeting names the caller.
func dialEcho(t *testing.T, ctx context.Context, a *agentsdk.Agent, service string) net.Conn {
	t.Helper()
	// A listener may count as hosted before the controller has its terminator, so a dial at once may find none
	// yet: that answer is retried. During a burst of terminator changes at the controller the router registered
	// new terminators tens of seconds late: up to a minute (docs/overlay-reliability.md, "A burst of terminator
	// removals", and the lead there).
	began := time.Now()
	conn, err := a.Dial(ctx, service)
	for deadline := began.Add(time.Minute); err != nil && strings.Contains(err.Error(), "has no terminators") && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		conn, err = a.Dial(ctx, service)
	}
	if waited := time.Since(began); waited > 5*time.Second {
		t.Logf("%s had no terminator for %s after it was hosted", service, waited.Round(time.Millisecond))
	}
	if err != nil {
		t.Fatalf("dial %s: %v", service, err)
	}
	t.Cleanup(func() { conn.Close() })
	line := make([]byte, len(a.ID().String())+1)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, line); err != nil {
		t.Fatalf("read greeting from %s: %v", service, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	if got := strings.TrimSuffix(string(line), "\n"); got != a.ID().String() {
		t.Fatalf("%s greeted %q, want %s", service, got, a.ID())
	}
	if broken, err := probe(conn); broken || err != nil {
		t.Fatalf("fresh connection to %s does not echo: %v", service, err)
	}
	return conn
}

// eventually retries f every 50ms until it returns nil or breakWithin passes.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	start := time.Now()
	for {
		err := f()
		if err == nil {
			t.Logf("%s after %v", what, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > breakWithin {
			t.Fatalf("%s: not within %v: %v", what, breakWithin, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func apiCode(err error) string {
	var ae *agentsdk.APIError
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

func TestRevocation(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := env.Admin().Controller()

	t.Run("dialer", func(t *testing.T) {
		host := env.NewAgent(t, "acme", "agent", uniq("rev-host"))
		victimName := uniq("rev-dialer")
		victim := env.NewAgent(t, "acme", "agent", victimName)
		bystander := env.NewAgent(t, "acme", "agent", uniq("rev-bystander"))
		svc := uniq("rev-echo")
		env.Grant(t, svc, []spiffeid.ID{host.ID()}, []spiffeid.ID{victim.ID(), bystander.ID()})
		serveEcho(t, host, svc)

		conn := dialEcho(t, ctx, victim, svc)
		vc := victim.Controller() // keeps its HTTP connection to the controller alive across the revocation
		if _, err := vc.WhoAmI(ctx); err != nil {
			t.Fatalf("whoami before revocation: %v", err)
		}

		resp, err := admin.Revoke(ctx, victim.ID(), "test")
		if err != nil {
			t.Fatal(err)
		}
		// CircuitsClosed is not checked: disabling the overlay identity often drops the circuits before the
		// controller enumerates them, so it may be 0.
		if resp.SPIFFEID != victim.ID().String() {
			t.Errorf("revoke answered %+v, want %s", resp, victim.ID())
		}

		waitBroken(t, "victim's established connection", conn)
		dctx, dcancel := context.WithTimeout(ctx, breakWithin)
		defer dcancel()
		start := time.Now()
		c, err := victim.Dial(dctx, svc)
		if err == nil {
			c.Close()
			t.Fatal("revoked identity dialled a new connection")
		}
		t.Logf("dial after revocation failed in %v: %v", time.Since(start).Round(time.Millisecond), err)
		if !errors.Is(err, agentsdk.ErrNotAuthorized) {
			t.Errorf("dial after revocation: err = %v, want ErrNotAuthorized", err)
		}
		who, err := vc.WhoAmI(ctx)
		if err == nil {
			t.Fatalf("revoked identity got whoami %+v", who)
		}
		if !errors.Is(err, agentsdk.ErrNotAuthorized) {
			t.Errorf("whoami after revocation: err = %v, want ErrNotAuthorized", err)
		}
		if _, err := victim.Controller().WhoAmI(ctx); err == nil {
			t.Fatal("revoked identity got whoami on a new controller client")
		}
		err = victim.Renew(ctx)
		if err == nil {
			t.Fatal("revoked identity renewed its SVID")
		}
		if !errors.Is(err, agentsdk.ErrNotAuthorized) {
			t.Errorf("renew after revocation: err = %v, want ErrNotAuthorized", err)
		}
		if a, err := agentsdk.Connect(ctx, victim.Identity()); err == nil {
			a.Close()
			t.Fatal("revoked identity connected to the overlay again")
		} else if !errors.Is(err, agentsdk.ErrNotAuthorized) {
			t.Errorf("connect after revocation: err = %v, want ErrNotAuthorized", err)
		}
		_, err = admin.CreateIdentity(ctx, api.CreateIdentityRequest{Org: "acme", Kind: "agent", Name: victimName})
		if code := apiCode(err); code != api.CodeConflict {
			t.Fatalf("re-creating a revoked identity: err = %v, want code %s", err, api.CodeConflict)
		}
		err = admin.Grant(ctx, api.GrantRequest{Service: svc, Dial: []string{victim.ID().String()}})
		if code := apiCode(err); code != api.CodeRevoked {
			t.Errorf("granting to a revoked identity: err = %v, want code %s", err, api.CodeRevoked)
		}

		// Only the victim was cut: the host still serves others.
		dialEcho(t, ctx, bystander, svc)
	})

	t.Run("host", func(t *testing.T) {
		host := env.NewAgent(t, "acme", "agent", uniq("rev-host"))
		client := env.NewAgent(t, "acme", "agent", uniq("rev-client"))
		svc := uniq("rev-echo")
		env.Grant(t, svc, []spiffeid.ID{host.ID()}, []spiffeid.ID{client.ID()})
		ln, err := host.Listen(svc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		ended := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				ended <- err
				return
			}
			defer c.Close()
			_, err = io.Copy(c, c)
			ended <- fmt.Errorf("echo ended: %v", err)
		}()

		conn, err := client.Dial(ctx, svc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if broken, err := probe(conn); broken || err != nil {
			t.Fatalf("connection does not echo before revocation: %v", err)
		}

		if _, err := admin.Revoke(ctx, host.ID(), "test"); err != nil {
			t.Fatal(err)
		}
		waitBroken(t, "client's connection to the revoked host", conn)
		select {
		case err := <-ended:
			t.Logf("host side: %v", err)
		case <-time.After(breakWithin):
			t.Fatal("the revoked host's accepted connection is still open")
		}
		eventually(t, "dial to the revoked host's service refused", func() error {
			dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
			defer dcancel()
			c, err := client.Dial(dctx, svc)
			if err == nil {
				c.Close()
				return errors.New("dial still reaches the revoked host")
			}
			return nil
		})
		if _, err := host.Controller().WhoAmI(ctx); err == nil {
			t.Fatal("revoked host got whoami")
		}
		// The client was not revoked.
		if _, err := client.Controller().WhoAmI(ctx); err != nil {
			t.Fatalf("client's whoami after its host was revoked: %v", err)
		}
	})
}

// postEnroll talks to the enrollment endpoint directly, as an attacker would, and returns the error code.
func postEnroll(t *testing.T, ctx context.Context, endpoint string, req api.EnrollRequest) (status int, code string) {
	t.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint+api.PathEnroll, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	hreq.Header.Set("Content-Type", api.ContentTypeJSON)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} // only the controller's answer matters here
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.Error
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Code
}

// tamper re-signs nothing: it swaps the token's subject and keeps the original signature.
func tamper(t *testing.T, token string, sub spiffeid.ID) string {
	t.Helper()
	rest := strings.TrimPrefix(token, "uet1.")
	payload, sig, ok := strings.Cut(rest, ".")
	if !ok || rest == token {
		t.Fatalf("unexpected token shape %q", token)
	}
	claims, err := enrolltoken.Parse(token)
	if err != nil {
		t.Fatal(err)
	}
	claims.SPIFFEID = sub.String()
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	forged := "uet1." + base64.RawURLEncoding.EncodeToString(b) + "." + sig
	if strings.Contains(forged, payload) {
		t.Fatal("tampering left the payload unchanged")
	}
	if _, err := enrolltoken.Parse(forged); err != nil {
		t.Fatalf("tampered token no longer parses, so it would not reach the controller: %v", err)
	}
	return forged
}

// connectAndAsk proves an identity works end to end: it connects and the controller names it.
func connectAndAsk(t *testing.T, ctx context.Context, id *agentsdk.Identity) {
	t.Helper()
	a, err := agentsdk.Connect(ctx, id)
	if err != nil {
		t.Fatalf("connect %s: %v", id.SPIFFEID(), err)
	}
	defer a.Close()
	who, err := a.Controller().WhoAmI(ctx)
	if err != nil {
		t.Fatalf("whoami %s: %v", id.SPIFFEID(), err)
	}
	if who.SPIFFEID != id.SPIFFEID().String() {
		t.Fatalf("whoami = %s, want %s", who.SPIFFEID, id.SPIFFEID())
	}
}

func TestEnrollRejects(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := env.Admin().Controller()

	create := func(t *testing.T, ttl string) api.CreateIdentityResponse {
		t.Helper()
		resp, err := admin.CreateIdentity(ctx, api.CreateIdentityRequest{Org: "acme", Kind: "agent", Name: uniq("enroll"), TokenTTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	cases := []struct {
		name string
		ttl  string
		// attack misuses the token and returns the controller's refusal.
		attack      func(t *testing.T, token string) error
		code        string
		tokenUsable bool // whether the token must still enroll afterwards
	}{
		{
			name: "reused token",
			attack: func(t *testing.T, token string) error {
				id, err := agentsdk.Enroll(ctx, token)
				if err != nil {
					t.Fatalf("first enrollment: %v", err)
				}
				_, err = agentsdk.Enroll(ctx, token)
				// The identity from the first enrollment is unaffected by the replay.
				connectAndAsk(t, ctx, id)
				return err
			},
			code: api.CodeTokenUsed,
		},
		{
			name: "expired token",
			ttl:  "1s",
			attack: func(t *testing.T, token string) error {
				time.Sleep(2 * time.Second)
				_, err := agentsdk.Enroll(ctx, token)
				return err
			},
			code: api.CodeTokenExpired,
		},
		{
			name: "tampered subject",
			attack: func(t *testing.T, token string) error {
				other := create(t, "")
				_, err := agentsdk.Enroll(ctx, tamper(t, token, spiffeid.RequireFromString(other.SPIFFEID)))
				// The identity the forgery aimed at is untouched: its own token still enrolls it.
				id, oerr := agentsdk.Enroll(ctx, other.Token)
				if oerr != nil {
					t.Fatalf("target's own token after the forgery: %v", oerr)
				}
				connectAndAsk(t, ctx, id)
				return err
			},
			code:        api.CodeTokenInvalid,
			tokenUsable: true,
		},
		{
			name: "foreign trust domain",
			attack: func(t *testing.T, token string) error {
				real, err := enrolltoken.Parse(token)
				if err != nil {
					t.Fatal(err)
				}
				_, key, err := ed25519.GenerateKey(rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				foreign, _, err := enrolltoken.NewSigner(key).Issue(spiffeid.RequireFromString("spiffe://other.example/acme/agent/intruder"),
					real.Endpoint, real.CAHash, time.Hour, time.Now())
				if err != nil {
					t.Fatal(err)
				}
				_, err = agentsdk.Enroll(ctx, foreign)
				return err
			},
			code:        api.CodeTokenInvalid,
			tokenUsable: true,
		},
		{
			name: "CSR for another SPIFFE ID",
			attack: func(t *testing.T, token string) error {
				claims, err := enrolltoken.Parse(token)
				if err != nil {
					t.Fatal(err)
				}
				key, err := pki.NewKey()
				if err != nil {
					t.Fatal(err)
				}
				csr, err := pki.NewCSR(key, env.Admin().ID())
				if err != nil {
					t.Fatal(err)
				}
				status, code := postEnroll(t, ctx, claims.Endpoint, api.EnrollRequest{Token: token, CSR: csr})
				if status/100 == 2 {
					t.Fatalf("enrollment with a CSR for %s answered %d", env.Admin().ID(), status)
				}
				return &agentsdk.APIError{Status: status, Code: code}
			},
			code:        api.CodeCSRMismatch,
			tokenUsable: true,
		},
		{
			name: "garbage CSR",
			attack: func(t *testing.T, token string) error {
				claims, err := enrolltoken.Parse(token)
				if err != nil {
					t.Fatal(err)
				}
				status, code := postEnroll(t, ctx, claims.Endpoint, api.EnrollRequest{Token: token, CSR: []byte("not a CSR")})
				return &agentsdk.APIError{Status: status, Code: code}
			},
			code:        api.CodeBadRequest,
			tokenUsable: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := create(t, tc.ttl)
			err := tc.attack(t, resp.Token)
			var ae *agentsdk.APIError
			if !errors.As(err, &ae) {
				t.Fatalf("err = %v, want an *APIError with code %s", err, tc.code)
			}
			if ae.Code != tc.code {
				t.Fatalf("code = %q (%v), want %q", ae.Code, err, tc.code)
			}
			id, err := agentsdk.Enroll(ctx, resp.Token)
			switch {
			case tc.tokenUsable && err != nil:
				t.Fatalf("the token was spent by a refused enrollment: %v", err)
			case tc.tokenUsable:
				if id.SPIFFEID().String() != resp.SPIFFEID {
					t.Fatalf("enrolled %s, want %s", id.SPIFFEID(), resp.SPIFFEID)
				}
				connectAndAsk(t, ctx, id)
			case err == nil:
				t.Fatal("the token enrolled after it was refused")
			default:
				if code := apiCode(err); code != tc.code {
					t.Fatalf("retry: code = %q (%v), want %q again", code, err, tc.code)
				}
			}
		})
	}
}

// selfSigned returns a certificate carrying id as its URI SAN, signed by its own key.
func selfSigned(t *testing.T, id spiffeid.ID) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		URIs:         []*url.URL{id.URL()},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// rogueSVID returns an SVID for id issued by a fresh CA of id's trust domain that nobody trusts.
func rogueSVID(t *testing.T, id spiffeid.ID) (*ecdsa.PrivateKey, *x509.Certificate, *pki.CA) {
	t.Helper()
	ca, err := pki.NewCA("rogue", id.TrustDomain(), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.IssueSVID(csr, id, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return key, leaf, ca
}

func TestUntrustedSVID(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	real := env.NewIdentity(t, "acme", "agent", uniq("untrusted"))
	f := rawIdentity(t, real)
	unknown, err := spiffeid.FromSegments(real.SPIFFEID().TrustDomain(), "acme", "agent", uniq("nobody"))
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name  string
		id    spiffeid.ID
		chain func(t *testing.T, id spiffeid.ID) (*ecdsa.PrivateKey, string)
	}{
		{"rogue CA, registered ID", real.SPIFFEID(), func(t *testing.T, id spiffeid.ID) (*ecdsa.PrivateKey, string) {
			key, leaf, _ := rogueSVID(t, id)
			return key, string(pki.EncodeCertsPEM(leaf))
		}},
		{"rogue CA with chain, registered ID", real.SPIFFEID(), func(t *testing.T, id spiffeid.ID) (*ecdsa.PrivateKey, string) {
			key, leaf, ca := rogueSVID(t, id)
			return key, string(pki.EncodeCertsPEM(leaf, ca.Cert))
		}},
		{"rogue CA, unregistered ID", unknown, func(t *testing.T, id spiffeid.ID) (*ecdsa.PrivateKey, string) {
			key, leaf, _ := rogueSVID(t, id)
			return key, string(pki.EncodeCertsPEM(leaf))
		}},
		{"self-signed, registered ID", real.SPIFFEID(), func(t *testing.T, id spiffeid.ID) (*ecdsa.PrivateKey, string) {
			c := selfSigned(t, id)
			leaf, err := x509.ParseCertificate(c.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			return c.PrivateKey.(*ecdsa.PrivateKey), string(pki.EncodeCertsPEM(leaf))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key, svid := tc.chain(t, tc.id)
			id, err := agentsdk.NewIdentity(key, agentsdk.Credentials{
				SPIFFEID: tc.id.String(), SVID: svid, Bundle: f.Bundle, OverlayAPI: f.OverlayAPI,
				OverlayCA: f.OverlayCA, ControllerID: f.ControllerID, EnrollURL: f.EnrollURL,
			})
			if err != nil {
				t.Fatal(err)
			}
			a, err := agentsdk.Connect(ctx, id)
			if err == nil {
				a.Close()
				t.Fatal("the overlay accepted an SVID from a CA it does not trust")
			}
			if !errors.Is(err, agentsdk.ErrNotAuthorized) {
				t.Fatalf("err = %v, want ErrNotAuthorized", err)
			}
		})
	}
	// The genuine SVID of the same identity still works.
	connectAndAsk(t, ctx, real)
}

// peerLog hosts service on a and records the verified peer of every connection its listener yields (or why
// it has none: the listener must never yield such a connection).
type peerLog struct {
	mu    sync.Mutex
	peers []string
}

func (p *peerLog) serve(t *testing.T, a *agentsdk.Agent, service string) {
	t.Helper()
	ln, err := a.Listen(service)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			peer, err := agentsdk.PeerIdentity(c)
			p.mu.Lock()
			if err != nil {
				p.peers = append(p.peers, "unverified: "+err.Error())
			} else {
				p.peers = append(p.peers, peer.String())
			}
			p.mu.Unlock()
			if err != nil {
				c.Close()
				continue
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", peer)
				io.Copy(c, c)
			}()
		}
	}()
}

func (p *peerLog) get() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.peers)
}

func TestForgedPeerIdentity(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	server := env.NewAgent(t, "acme", "agent", uniq("forge-server"))
	victim := env.NewIdentity(t, "acme", "agent", uniq("forge-victim"))
	attacker := env.NewAgent(t, "evil", "agent", uniq("forge-attacker"))
	svc := uniq("forge-echo")
	env.Grant(t, svc, []spiffeid.ID{server.ID()}, []spiffeid.ID{victim.SPIFFEID(), attacker.ID()})
	var log peerLog
	log.serve(t, server, svc)
	raw := rawContext(t, attacker.Identity())

	victimCert := rawIdentity(t, victim).leaf(t)
	attackerKey, err := pki.ParseKeyPEM([]byte(rawIdentity(t, attacker.Identity()).Key))
	if err != nil {
		t.Fatal(err)
	}
	rogueKey, rogueLeaf, rogueCA := rogueSVID(t, victim.SPIFFEID())

	tlsCases := []struct {
		name  string
		certs []tls.Certificate
	}{
		{"self-signed cert naming the victim", []tls.Certificate{selfSigned(t, victim.SPIFFEID())}},
		{"rogue CA SVID naming the victim", []tls.Certificate{{Certificate: [][]byte{rogueLeaf.Raw, rogueCA.Cert.Raw}, PrivateKey: rogueKey}}},
		// The victim's SVID is public (it travels in every handshake); without its key it must be useless.
		{"victim's real SVID with the attacker's key", []tls.Certificate{{Certificate: [][]byte{victimCert.Raw}, PrivateKey: attackerKey}}},
		{"no client certificate", nil},
	}
	for _, tc := range tlsCases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := rawDial(t, raw, svc)
			if err != nil {
				t.Fatalf("raw overlay dial: %v", err)
			}
			defer conn.Close()
			tconn := tls.Client(conn, &tls.Config{Certificates: tc.certs, InsecureSkipVerify: true}) // the attacker does not care who answers
			_ = tconn.SetDeadline(time.Now().Add(8 * time.Second))
			herr := tconn.HandshakeContext(ctx)
			// With TLS 1.3 the client finishes before the server has checked its certificate; the refusal then
			// arrives as an alert on the first read. Either way no byte of the service may come through.
			var rerr error
			var n int
			if herr == nil {
				buf := make([]byte, 512)
				n, rerr = tconn.Read(buf)
				if n > 0 {
					t.Fatalf("server answered the forged handshake: %q", buf[:n])
				}
			}
			switch {
			case herr != nil:
				t.Logf("handshake refused: %v", herr)
			case rerr == nil:
				t.Fatal("forged handshake succeeded")
			default:
				var ne net.Error
				if errors.As(rerr, &ne) && ne.Timeout() {
					t.Fatalf("server neither accepted nor refused the forged handshake: %v", rerr)
				}
				t.Logf("refused after the handshake: %v", rerr)
			}
		})
	}

	t.Run("plain bytes without TLS", func(t *testing.T) {
		conn, err := rawDial(t, raw, svc)
		if err != nil {
			t.Fatalf("raw overlay dial: %v", err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(8 * time.Second))
		if _, err := fmt.Fprintf(conn, "%s\nhello\n", victim.SPIFFEID()); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		var ne net.Error
		switch {
		case n > 0 && bytes.Contains(buf[:n], []byte("spiffe://")):
			t.Fatalf("server answered plain bytes: %q", buf[:n])
		case err == nil && n == 0:
			t.Fatal("read returned nothing and no error")
		case errors.As(err, &ne) && ne.Timeout():
			t.Fatalf("server did not drop a non-TLS connection: %v", err)
		}
		t.Logf("dropped: n=%d err=%v", n, err)
	})

	t.Run("attacker through the SDK is itself", func(t *testing.T) {
		conn := dialEcho(t, ctx, attacker, svc)
		peer, err := agentsdk.PeerIdentity(conn)
		if err != nil {
			t.Fatal(err)
		}
		if peer != server.ID() {
			t.Fatalf("attacker reached %s, want %s", peer, server.ID())
		}
	})

	peers := log.get()
	if len(peers) != 1 || peers[0] != attacker.ID().String() {
		t.Fatalf("server accepted peers %v, want exactly [%s]", peers, attacker.ID())
	}
}

func TestUnknownService(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	a := env.NewAgent(t, "acme", "agent", uniq("unknown"))
	const svc = "no-such-svc"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cases := []struct {
		name string
		do   func() error
	}{
		{"Dial", func() error {
			c, err := a.Dial(ctx, svc)
			if err == nil {
				c.Close()
			}
			return err
		}},
		{"Listen", func() error {
			ln, err := a.Listen(svc)
			if err == nil {
				ln.Close()
			}
			return err
		}},
		{"HTTPClient", func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+svc+"/", nil)
			if err != nil {
				return err
			}
			resp, err := a.HTTPClient().Do(req)
			if err == nil {
				resp.Body.Close()
			}
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do()
			if !errors.Is(err, agentsdk.ErrServiceNotFound) {
				t.Fatalf("err = %v, want ErrServiceNotFound", err)
			}
			if !strings.Contains(err.Error(), svc) {
				t.Fatalf("error %q does not name the service", err)
			}
		})
	}
}

func TestRenew(t *testing.T) {
	testlimit.Start(t, 4*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	path := filepath.Join(t.TempDir(), "identity.json")
	id := env.NewIdentity(t, "acme", "agent", uniq("renewer"))
	if err := id.Save(path); err != nil {
		t.Fatal(err)
	}
	a, err := agentsdk.Connect(ctx, id, agentsdk.WithIdentityFile(path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	client := env.NewAgent(t, "acme", "agent", uniq("renew-client"))
	svc := uniq("renew-echo")
	env.Grant(t, svc, []spiffeid.ID{a.ID()}, []spiffeid.ID{client.ID()})
	serveEcho(t, a, svc)
	before := dialEcho(t, ctx, client, svc)

	seen := map[string]bool{rawIdentity(t, a.Identity()).leaf(t).SerialNumber.String(): true}
	for round := 1; round <= 2; round++ {
		t.Run(fmt.Sprintf("round %d", round), func(t *testing.T) {
			if err := a.Renew(ctx); err != nil {
				t.Fatal(err)
			}
			if a.ID() != id.SPIFFEID() {
				t.Fatalf("renewal changed the SPIFFE ID to %s", a.ID())
			}
			leaf := rawIdentity(t, a.Identity()).leaf(t)
			serial := leaf.SerialNumber.String()
			if seen[serial] {
				t.Fatalf("renewed SVID reuses serial %s", serial)
			}
			seen[serial] = true

			who, err := a.Controller().WhoAmI(ctx)
			if err != nil {
				t.Fatalf("whoami after renewal: %v", err)
			}
			if who.SPIFFEID != id.SPIFFEID().String() {
				t.Fatalf("whoami = %s after renewal", who.SPIFFEID)
			}

			// New dials reach the listener on the new overlay context, which presents the new SVID.
			conn := dialEcho(t, ctx, client, svc)
			st := conn.(*tls.Conn).ConnectionState()
			if got := st.PeerCertificates[0].SerialNumber.String(); got != serial {
				t.Fatalf("host presented SVID serial %s, want the renewed %s", got, serial)
			}
			conn.Close()

			// Connections from before the renewal keep running.
			if broken, err := probe(before); broken || err != nil {
				t.Fatalf("connection opened before renewal stopped echoing: %v", err)
			}

			f := readIdentityFile(t, path)
			if got := f.leaf(t).SerialNumber.String(); got != serial {
				t.Fatalf("identity file holds serial %s, want %s", got, serial)
			}
			saved, err := agentsdk.LoadIdentity(path)
			if err != nil {
				t.Fatalf("identity file after renewal: %v", err)
			}
			if saved.SPIFFEID() != id.SPIFFEID() {
				t.Fatalf("identity file is for %s", saved.SPIFFEID())
			}
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("identity file mode: %v %v", fi.Mode(), err)
			}
		})
	}
	// The file on disk is enough to come back after a restart.
	saved, err := agentsdk.LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	connectAndAsk(t, ctx, saved)
}
