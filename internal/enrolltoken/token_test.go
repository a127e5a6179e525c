package enrolltoken

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	t0        = time.Unix(1_800_000_000, 0).UTC()
	td        = spiffeid.RequireTrustDomainFromString("example.org")
	agentID   = spiffeid.RequireFromString("spiffe://example.org/acme/agent/a1")
	foreignID = spiffeid.RequireFromString("spiffe://other.example/acme/agent/a1")
	endpoint  = "https://controller.example.org:8443/enroll"
	caHash    = strings.Repeat("0123456789abcdef", 4)

	// Fixed keys keep the committed fuzz corpus meaningful.
	testKey  = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x42}, ed25519.SeedSize))
	otherKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x17}, ed25519.SeedSize))
)

// testClaims are valid claims for agentID, issued at t0 for ten minutes.
func testClaims() Claims {
	return Claims{
		ID:        "AAECAwQFBgcICQoLDA0ODw",
		SPIFFEID:  agentID.String(),
		IssuedAt:  t0.Unix(),
		ExpiresAt: t0.Add(10 * time.Minute).Unix(),
		Endpoint:  endpoint,
		CAHash:    caHash,
	}
}

// signRaw builds a token around any payload, signed by key, so tests can
// produce validly signed tokens with bad claims.
func signRaw(key ed25519.PrivateKey, payload []byte) string {
	signed := prefix + b64.EncodeToString(payload)
	return signed + "." + b64.EncodeToString(ed25519.Sign(key, []byte(signed)))
}

func mustJSON(t testing.TB, c Claims) []byte {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// replaceAt returns s with the byte at i swapped for another base64url character.
func replaceAt(s string, i int) string {
	c := byte('A')
	if s[i] == 'A' {
		c = 'B'
	}
	return s[:i] + string(c) + s[i+1:]
}

func TestIssueRoundTrip(t *testing.T) {
	tests := []struct {
		name     string
		id       spiffeid.ID
		endpoint string
		ttl      time.Duration
		now      time.Time
	}{
		{"typical", agentID, endpoint, 15 * time.Minute, t0},
		{"IP endpoint", agentID, "https://127.0.0.1:9443", time.Hour, t0},
		{"IPv6 endpoint with query", agentID, "https://[::1]:9443/enroll?x=a&y=b", time.Hour, t0},
		{"sub-second now", agentID, endpoint, time.Minute, t0.Add(999 * time.Millisecond)},
		{"one second ttl", agentID, endpoint, time.Second, t0},
	}
	s := NewSigner(testKey)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token, claims, err := s.Issue(tt.id, tt.endpoint, caHash, tt.ttl, tt.now)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if !strings.HasPrefix(token, "uet1.") || strings.Count(token, ".") != 2 || len(token) > MaxLen {
				t.Errorf("token %q has the wrong shape", token)
			}
			want := Claims{
				ID:        claims.ID,
				SPIFFEID:  tt.id.String(),
				IssuedAt:  tt.now.Unix(),
				ExpiresAt: tt.now.Add(tt.ttl).Unix(),
				Endpoint:  tt.endpoint,
				CAHash:    caHash,
			}
			if claims != want {
				t.Errorf("claims = %+v, want %+v", claims, want)
			}
			if jti, err := b64.DecodeString(claims.ID); err != nil || len(jti) != 16 {
				t.Errorf("jti %q is not 16 bytes of base64url", claims.ID)
			}
			parsed, err := Parse(token)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if parsed != claims {
				t.Errorf("Parse = %+v, want %+v", parsed, claims)
			}
			verified, err := Verify(token, s.Public(), td, tt.now)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if verified != claims {
				t.Errorf("Verify = %+v, want %+v", verified, claims)
			}
			id, err := verified.SPIFFE()
			if err != nil || id != tt.id {
				t.Errorf("SPIFFE() = %v, %v", id, err)
			}
		})
	}
}

func TestIssueIDsAreUnique(t *testing.T) {
	s := NewSigner(testKey)
	seen := map[string]bool{}
	for range 16 {
		_, c, err := s.Issue(agentID, endpoint, caHash, time.Minute, t0)
		if err != nil {
			t.Fatal(err)
		}
		if seen[c.ID] {
			t.Fatalf("jti %s issued twice", c.ID)
		}
		seen[c.ID] = true
	}
}

func TestIssueRefuses(t *testing.T) {
	tests := []struct {
		name     string
		key      ed25519.PrivateKey
		id       spiffeid.ID
		endpoint string
		caHash   string
		ttl      time.Duration
	}{
		{"no key", nil, agentID, endpoint, caHash, time.Minute},
		{"short key", testKey[:32], agentID, endpoint, caHash, time.Minute},
		{"zero ID", testKey, spiffeid.ID{}, endpoint, caHash, time.Minute},
		{"trust domain ID", testKey, td.ID(), endpoint, caHash, time.Minute},
		{"http endpoint", testKey, agentID, "http://controller.example.org/enroll", caHash, time.Minute},
		{"endpoint without host", testKey, agentID, "https:///enroll", caHash, time.Minute},
		{"endpoint with credentials", testKey, agentID, "https://u:p@controller.example.org/", caHash, time.Minute},
		{"relative endpoint", testKey, agentID, "/enroll", caHash, time.Minute},
		{"upper-case CA hash", testKey, agentID, endpoint, strings.ToUpper(caHash), time.Minute},
		{"short CA hash", testKey, agentID, endpoint, caHash[:40], time.Minute},
		{"non-hex CA hash", testKey, agentID, endpoint, strings.Repeat("zz", 32), time.Minute},
		{"zero ttl", testKey, agentID, endpoint, caHash, 0},
		{"sub-second ttl", testKey, agentID, endpoint, caHash, 500 * time.Millisecond},
		{"token too long", testKey, agentID, "https://controller.example.org/" + strings.Repeat("a", MaxLen), caHash, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token, _, err := NewSigner(tt.key).Issue(tt.id, tt.endpoint, tt.caHash, tt.ttl, t0)
			if err == nil {
				t.Fatalf("Issue returned %q", token)
			}
			if !strings.HasPrefix(err.Error(), "enrolltoken: ") {
				t.Errorf("err %q lacks the enrolltoken: prefix", err)
			}
		})
	}
}

func TestVerifyTimes(t *testing.T) {
	token := signRaw(testKey, mustJSON(t, testClaims()))
	exp := time.Unix(testClaims().ExpiresAt, 0)
	tests := []struct {
		name    string
		now     time.Time
		wantErr error
	}{
		{"at issue", t0, nil},
		{"just before expiry", exp.Add(-time.Nanosecond), nil},
		{"at expiry", exp, ErrExpired},
		{"long after expiry", exp.Add(24 * time.Hour), ErrExpired},
		{"issued one minute ahead", t0.Add(-time.Minute), nil},
		{"issued more than a minute ahead", t0.Add(-time.Minute - time.Second), ErrExpired},
		{"issued a day ahead", t0.Add(-24 * time.Hour), ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Verify(token, testKey.Public().(ed25519.PublicKey), td, tt.now)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// malformed lists tokens that fail before or regardless of the signature:
// Parse and Verify must both refuse them with ErrMalformed. Signed ones are
// signed with testKey.
func malformed(t *testing.T) []struct{ name, token, wantIn string } {
	good := signRaw(testKey, mustJSON(t, testClaims()))
	canon := string(mustJSON(t, testClaims()))
	signed := func(payload string) string { return signRaw(testKey, []byte(payload)) }
	with := func(mut func(c *Claims)) string {
		c := testClaims()
		mut(&c)
		return signed(string(mustJSON(t, c)))
	}
	payloadEnd := strings.LastIndexByte(good, '.')
	return []struct{ name, token, wantIn string }{
		{"empty", "", "prefix"},
		{"prefix only", "uet1.", "no signature"},
		{"truncated", good[:len(good)/2], ""},
		{"truncated signature", good[:len(good)-4], ""},
		{"oversized", "uet1." + strings.Repeat("A", MaxLen) + ".AAAA", "limit"},
		{"wrong prefix", "uet2." + good[len(prefix):], "prefix"},
		{"upper-case prefix", "UET1." + good[len(prefix):], "prefix"},
		{"no signature", good[:payloadEnd], "no signature"},
		{"empty payload", "uet1." + good[payloadEnd:], "base64url"},
		{"extra segment", good + ".AAAA", "base64url"},
		{"bad base64 payload", good[:10] + "!" + good[11:], "base64url"},
		{"standard base64 alphabet", good[:10] + "+" + good[11:], "base64url"},
		{"padding", good + "==", "base64url"},
		{"newline in signature", good[:payloadEnd+10] + "\n" + good[payloadEnd+10:], "base64url"},
		{"signature too short", good[:payloadEnd] + "." + b64.EncodeToString(make([]byte, 32)), "signature is 32 bytes"},
		{"payload not JSON", signed("hello"), "claims"},
		{"payload JSON array", signed(`[1,2]`), "claims"},
		{"unknown field", signed(strings.TrimSuffix(canon, "}") + `,"adm":true}`), "unknown field"},
		{"missing field", signed(canon[:strings.Index(canon, `,"cah"`)] + "}"), "cah"},
		{"null field", signed(strings.Replace(canon, `"sub":"`+agentID.String()+`"`, `"sub":null`, 1)), "sub"},
		{"duplicate key", signed(strings.Replace(canon, `{`, `{"sub":"spiffe://example.org/evil",`, 1)), "canonical"},
		{"other key case", signed(strings.Replace(canon, `"sub"`, `"SUB"`, 1)), "canonical"},
		{"whitespace", signed(strings.Replace(canon, `,`, `, `, 1)), "canonical"},
		{"trailing data", signed(canon + `{}`), "canonical"},
		{"sub not a SPIFFE ID", with(func(c *Claims) { c.SPIFFEID = "agent-a1" }), "SPIFFE ID"},
		{"sub is a trust domain", with(func(c *Claims) { c.SPIFFEID = "spiffe://example.org" }), "trust domain"},
		{"http endpoint", with(func(c *Claims) { c.Endpoint = "http://controller.example.org/enroll" }), "https"},
		{"endpoint with fragment", with(func(c *Claims) { c.Endpoint = endpoint + "#x" }), "fragment"},
		{"short jti", with(func(c *Claims) { c.ID = "AAEC" }), "jti"},
		{"jti with newline", with(func(c *Claims) { c.ID = c.ID[:5] + "\n" + c.ID[5:] }), "jti"},
		{"exp before iat", with(func(c *Claims) { c.ExpiresAt = c.IssuedAt - 1 }), "exp"},
		{"zero iat", with(func(c *Claims) { c.IssuedAt = 0 }), "iat"},
		{"exp beyond year 9999", with(func(c *Claims) { c.ExpiresAt = 1 << 62 }), "exp"},
		{"upper-case cah", with(func(c *Claims) { c.CAHash = strings.ToUpper(c.CAHash) }), "cah"},
	}
}

func TestParseRefuses(t *testing.T) {
	for _, tt := range malformed(t) {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(tt.token)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
			if c != (Claims{}) {
				t.Errorf("claims returned with an error: %+v", c)
			}
			if !strings.Contains(err.Error(), tt.wantIn) {
				t.Errorf("err %q does not mention %q", err, tt.wantIn)
			}
		})
	}
}

func TestVerifyRefuses(t *testing.T) {
	pub := testKey.Public().(ed25519.PublicKey)
	good := signRaw(testKey, mustJSON(t, testClaims()))
	sigStart := strings.LastIndexByte(good, '.') + 1
	foreign := testClaims()
	foreign.SPIFFEID = foreignID.String()
	other := testClaims()
	other.ID = "DwAAAAAAAAAAAAAAAAAAAA"
	otherTok := signRaw(testKey, mustJSON(t, other))

	tests := []struct {
		name    string
		token   string
		pub     ed25519.PublicKey
		td      spiffeid.TrustDomain
		wantErr error // nil: an error that is none of the sentinels
	}{
		{"tampered payload", replaceAt(good, len(prefix)+10), pub, td, ErrSignature},
		{"tampered signature", replaceAt(good, sigStart+10), pub, td, ErrSignature},
		{"signature of another token", good[:sigStart] + otherTok[strings.LastIndexByte(otherTok, '.')+1:], pub, td, ErrSignature},
		{"wrong key", good, otherKey.Public().(ed25519.PublicKey), td, ErrSignature},
		{"signed by the wrong key", signRaw(otherKey, mustJSON(t, testClaims())), pub, td, ErrSignature},
		{"zero signature", good[:sigStart] + b64.EncodeToString(make([]byte, 64)), pub, td, ErrSignature},
		{"wrong trust domain", signRaw(testKey, mustJSON(t, foreign)), pub, td, ErrTrustDomain},
		{"verifier in another trust domain", good, pub, foreignID.TrustDomain(), ErrTrustDomain},
		{"no verification key", good, nil, td, nil},
		{"short verification key", good, pub[:16], td, nil},
		{"no trust domain", good, pub, spiffeid.TrustDomain{}, nil},
	}
	for _, tt := range malformed(t) {
		tests = append(tests, struct {
			name    string
			token   string
			pub     ed25519.PublicKey
			td      spiffeid.TrustDomain
			wantErr error
		}{"malformed/" + tt.name, tt.token, pub, td, ErrMalformed})
	}
	sentinels := []error{ErrMalformed, ErrSignature, ErrExpired, ErrTrustDomain}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Verify(tt.token, tt.pub, tt.td, t0)
			if err == nil {
				t.Fatalf("Verify accepted: %+v", c)
			}
			if c != (Claims{}) {
				t.Errorf("claims returned with an error: %+v", c)
			}
			if !strings.HasPrefix(err.Error(), "enrolltoken: ") {
				t.Errorf("err %q lacks the enrolltoken: prefix", err)
			}
			for _, s := range sentinels {
				if errors.Is(err, s) != (s == tt.wantErr) {
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
			}
		})
	}
}

func TestSignerPublic(t *testing.T) {
	if got := NewSigner(testKey).Public(); !got.Equal(testKey.Public()) {
		t.Error("Public does not match the signing key")
	}
	if got := NewSigner(nil).Public(); got != nil {
		t.Errorf("Public of an empty signer = %x", got)
	}
}

func TestClaimsSPIFFE(t *testing.T) {
	if _, err := (Claims{SPIFFEID: "not an id"}).SPIFFE(); err == nil {
		t.Error("SPIFFE accepted a bad ID")
	}
}

func TestCAHash(t *testing.T) {
	// SHA-256("abc"), FIPS 180-2 appendix B.1.
	const want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := CAHash(&x509.Certificate{Raw: []byte("abc")}); got != want {
		t.Errorf("CAHash = %s, want %s", got, want)
	}
}
