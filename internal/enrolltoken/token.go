package enrolltoken

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	prefix = "uet1."

	// MaxLen is the longest token accepted; longer input is refused before
	// anything is decoded.
	MaxLen = 4096

	// maxFutureIssue is how far in the future a token's issue time may lie,
	// allowing for clocks that disagree slightly.
	maxFutureIssue = 60 // seconds

	// maxUnix (the last second of year 9999) bounds iat and exp so that time
	// arithmetic on them cannot overflow.
	maxUnix = 253402300799

	idBytes = 16
)

// Sentinel errors, wrapped with detail.
var (
	// ErrMalformed means the token is not a well-formed uet1 token with valid claims.
	ErrMalformed = errors.New("enrolltoken: malformed token")
	// ErrSignature means the token was not signed by the expected key, or was altered.
	ErrSignature = errors.New("enrolltoken: invalid signature")
	// ErrExpired means the token is outside its validity period: expired, or
	// issued further in the future than clock skew explains.
	ErrExpired = errors.New("enrolltoken: token outside its validity period")
	// ErrTrustDomain means the token's SPIFFE ID is not in the expected trust domain.
	ErrTrustDomain = errors.New("enrolltoken: SPIFFE ID outside the trust domain")
)

// b64 is the token's base64 alphabet. Strict refuses non-zero trailing bits,
// so each byte string has one encoding.
var b64 = base64.RawURLEncoding.Strict()

// Claims is what a token states. All fields are required.
type Claims struct {
	ID        string `json:"jti"` // random 128-bit, base64url; the controller records it to make tokens single-use
	SPIFFEID  string `json:"sub"` // the one identity this token may enroll
	IssuedAt  int64  `json:"iat"` // unix seconds
	ExpiresAt int64  `json:"exp"` // unix seconds; the token is expired from this second on
	Endpoint  string `json:"aud"` // https URL of the enrollment endpoint
	CAHash    string `json:"cah"` // hex SHA-256 of the DER of the CA that signed the endpoint's TLS certificate
}

// SPIFFE returns the SPIFFE ID the token may enroll.
func (c Claims) SPIFFE() (spiffeid.ID, error) {
	id, err := spiffeid.FromString(c.SPIFFEID)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("enrolltoken: sub: %w", err)
	}
	return id, nil
}

// Signer issues tokens with an Ed25519 key.
type Signer struct {
	key ed25519.PrivateKey
}

// NewSigner returns a Signer for key. A key of the wrong size makes Issue fail.
func NewSigner(key ed25519.PrivateKey) *Signer {
	return &Signer{key: slices.Clone(key)}
}

// Public returns the key that verifies this Signer's tokens.
func (s *Signer) Public() ed25519.PublicKey {
	if len(s.key) != ed25519.PrivateKeySize {
		return nil
	}
	return s.key.Public().(ed25519.PublicKey)
}

// Issue returns a signed token, and its claims, allowing id to enroll at
// endpoint (an https URL) whose TLS certificate chains to the CA with SHA-256
// hash caHash (see CAHash). The token is issued at now and expires at now+ttl;
// its ID is random.
func (s *Signer) Issue(id spiffeid.ID, endpoint, caHash string, ttl time.Duration, now time.Time) (string, Claims, error) {
	if len(s.key) != ed25519.PrivateKeySize {
		return "", Claims{}, errors.New("enrolltoken: signing key is not an Ed25519 private key")
	}
	if ttl < time.Second {
		return "", Claims{}, fmt.Errorf("enrolltoken: ttl %v is shorter than one second", ttl)
	}
	var jti [idBytes]byte
	_, _ = rand.Read(jti[:]) // crypto/rand.Read never fails on supported platforms.
	c := Claims{
		ID:        b64.EncodeToString(jti[:]),
		SPIFFEID:  id.String(),
		IssuedAt:  now.Unix(),
		ExpiresAt: now.Add(ttl).Unix(),
		Endpoint:  endpoint,
		CAHash:    caHash,
	}
	if err := c.validate(); err != nil {
		return "", Claims{}, fmt.Errorf("enrolltoken: cannot issue: %w", err)
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", Claims{}, fmt.Errorf("enrolltoken: encode claims: %w", err)
	}
	signed := prefix + b64.EncodeToString(payload)
	token := signed + "." + b64.EncodeToString(ed25519.Sign(s.key, []byte(signed)))
	if len(token) > MaxLen {
		return "", Claims{}, fmt.Errorf("enrolltoken: token would be %d bytes, limit %d", len(token), MaxLen)
	}
	return token, c, nil
}

// Parse decodes a token and checks its claims are complete and well formed,
// but does not check the signature or the times: a workload uses it to find
// where to enroll and which CA to pin. Every failure wraps ErrMalformed.
func Parse(token string) (Claims, error) {
	_, payload, _, err := split(token)
	if err != nil {
		return Claims{}, err
	}
	return decodeClaims(payload)
}

// Verify checks that token is well formed, signed by pub, valid at now
// (now >= exp is expired; an issue time more than a minute after now is
// refused) and allows a SPIFFE ID in trust domain td. It returns the claims;
// making the token single-use by recording Claims.ID is the caller's job.
func Verify(token string, pub ed25519.PublicKey, td spiffeid.TrustDomain, now time.Time) (Claims, error) {
	if len(pub) != ed25519.PublicKeySize {
		return Claims{}, errors.New("enrolltoken: verification key is not an Ed25519 public key")
	}
	if td.IsZero() {
		return Claims{}, errors.New("enrolltoken: trust domain is empty")
	}
	signed, payload, sig, err := split(token)
	if err != nil {
		return Claims{}, err
	}
	// Nothing in the payload is trusted before the signature checks out.
	if !ed25519.Verify(pub, []byte(signed), sig) {
		return Claims{}, fmt.Errorf("%w: not signed by the enrollment key", ErrSignature)
	}
	c, err := decodeClaims(payload)
	if err != nil {
		return Claims{}, err
	}
	t := now.Unix()
	if t >= c.ExpiresAt {
		return Claims{}, fmt.Errorf("%w: expired at %s", ErrExpired, time.Unix(c.ExpiresAt, 0).UTC().Format(time.RFC3339))
	}
	if c.IssuedAt-t > maxFutureIssue {
		return Claims{}, fmt.Errorf("%w: issued at %s, more than %ds in the future", ErrExpired,
			time.Unix(c.IssuedAt, 0).UTC().Format(time.RFC3339), maxFutureIssue)
	}
	id, err := c.SPIFFE()
	if err != nil { // decodeClaims already checked sub; kept so a change there cannot open a hole.
		return Claims{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if !id.MemberOf(td) {
		return Claims{}, fmt.Errorf("%w: %s is not in %s", ErrTrustDomain, id, td)
	}
	return c, nil
}

// CAHash returns the value for Claims.CAHash: the hex SHA-256 of cert's DER.
func CAHash(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// split checks the token's shape and returns the signed part, the decoded
// payload and the decoded signature.
func split(token string) (signed string, payload, sig []byte, err error) {
	if len(token) > MaxLen {
		return "", nil, nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(token), MaxLen)
	}
	rest, ok := strings.CutPrefix(token, prefix)
	if !ok {
		return "", nil, nil, fmt.Errorf("%w: no %q prefix", ErrMalformed, prefix)
	}
	p, s, ok := strings.Cut(rest, ".")
	if !ok {
		return "", nil, nil, fmt.Errorf("%w: no signature", ErrMalformed)
	}
	// The decoder skips CR and LF; refusing them keeps one spelling per token.
	if !isBase64URL(p) || !isBase64URL(s) {
		return "", nil, nil, fmt.Errorf("%w: not base64url", ErrMalformed)
	}
	if payload, err = b64.DecodeString(p); err != nil {
		return "", nil, nil, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	if sig, err = b64.DecodeString(s); err != nil {
		return "", nil, nil, fmt.Errorf("%w: signature: %v", ErrMalformed, err)
	}
	if len(sig) != ed25519.SignatureSize {
		return "", nil, nil, fmt.Errorf("%w: signature is %d bytes, want %d", ErrMalformed, len(sig), ed25519.SignatureSize)
	}
	return token[:len(prefix)+len(p)], payload, sig, nil
}

func isBase64URL(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// decodeClaims parses the JSON payload strictly: no unknown fields, every
// field valid, and byte for byte the encoding Issue produces, so that no two
// payloads mean the same thing (duplicate keys, other key case, whitespace).
func decodeClaims(payload []byte) (Claims, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var c Claims
	if err := dec.Decode(&c); err != nil {
		return Claims{}, fmt.Errorf("%w: claims: %v", ErrMalformed, err)
	}
	if err := c.validate(); err != nil {
		return Claims{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	canonical, err := json.Marshal(c)
	if err != nil || !bytes.Equal(canonical, payload) {
		return Claims{}, fmt.Errorf("%w: claims are not in canonical form", ErrMalformed)
	}
	return c, nil
}

// validate checks that every claim is present and well formed.
func (c Claims) validate() error {
	if jti, err := b64.DecodeString(c.ID); err != nil || len(jti) != idBytes || !isBase64URL(c.ID) {
		return fmt.Errorf("jti must be %d random bytes in base64url", idBytes)
	}
	id, err := spiffeid.FromString(c.SPIFFEID)
	if err != nil {
		return fmt.Errorf("sub %q is not a SPIFFE ID: %v", c.SPIFFEID, err)
	}
	if id.Path() == "" {
		return fmt.Errorf("sub %s names a trust domain, not a workload", id)
	}
	if c.IssuedAt <= 0 || c.IssuedAt > maxUnix {
		return fmt.Errorf("iat %d out of range", c.IssuedAt)
	}
	if c.ExpiresAt <= c.IssuedAt || c.ExpiresAt > maxUnix {
		return fmt.Errorf("exp %d not after iat %d or out of range", c.ExpiresAt, c.IssuedAt)
	}
	if err := checkEndpoint(c.Endpoint); err != nil {
		return err
	}
	if len(c.CAHash) != 2*sha256.Size || strings.ToLower(c.CAHash) != c.CAHash {
		return errors.New("cah must be a lower-case hex SHA-256")
	}
	if _, err := hex.DecodeString(c.CAHash); err != nil {
		return errors.New("cah must be a lower-case hex SHA-256")
	}
	return nil
}

func checkEndpoint(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("aud is not a URL: %v", err)
	}
	switch {
	case u.Scheme != "https":
		return fmt.Errorf("aud %q is not an https URL", s)
	case u.Hostname() == "":
		return fmt.Errorf("aud %q has no host", s)
	case u.User != nil:
		return errors.New("aud must not carry user information")
	case u.Fragment != "":
		return fmt.Errorf("aud %q must not have a fragment", s)
	}
	return nil
}
