package workgroups

import (
	"encoding/base32"
	"fmt"
	"io"
	"strings"
)

// Identifiers are 128 random bits written as a type prefix and 26 characters
// of lower-case, unpadded base32: "ses_" for sessions, "ad_" for
// advertisements, "env_" for envelopes. Each kind has its own Go type so one
// cannot be passed where another is expected, and parsing accepts only the
// canonical spelling, so an ID has exactly one textual form.
const (
	sessionIDPrefix       = "ses_"
	advertisementIDPrefix = "ad_"
	envelopeIDPrefix      = "env_"

	idBytes   = 16
	idEncoded = 26
)

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

type rawID [idBytes]byte

func newRawID(rand io.Reader, what string) (rawID, error) {
	var r rawID
	if rand == nil {
		return r, fmt.Errorf("%w: %s: no random source", ErrInvalid, what)
	}
	if _, err := io.ReadFull(rand, r[:]); err != nil {
		return rawID{}, fmt.Errorf("workgroups: %s: reading random bytes: %w", what, err)
	}
	if r == (rawID{}) {
		// The all-zero ID is the zero value; a source that yields it is broken.
		return rawID{}, fmt.Errorf("%w: %s: random source returned all zero bytes", ErrInvalid, what)
	}
	return r, nil
}

func parseRawID(prefix, what, s string) (rawID, error) {
	body, ok := strings.CutPrefix(s, prefix)
	if !ok || len(body) != idEncoded {
		return rawID{}, fmt.Errorf("%w: %s %q: want %q followed by %d base32 characters", ErrInvalid, what, clip(s), prefix, idEncoded)
	}
	var r rawID
	n, err := idEncoding.Decode(r[:], []byte(body))
	if err != nil || n != idBytes || idEncoding.EncodeToString(r[:]) != body {
		return rawID{}, fmt.Errorf("%w: %s %q: not canonical base32", ErrInvalid, what, clip(s))
	}
	if r == (rawID{}) {
		return rawID{}, fmt.Errorf("%w: %s %q: all zero", ErrInvalid, what, clip(s))
	}
	return r, nil
}

func (r rawID) format(prefix string) string {
	if r == (rawID{}) {
		return ""
	}
	return prefix + idEncoding.EncodeToString(r[:])
}

// SessionID identifies a session. The zero value is "no session".
type SessionID struct{ raw rawID }

// NewSessionID returns a fresh ID read from rand (crypto/rand.Reader in
// production; a seeded reader in tests).
func NewSessionID(rand io.Reader) (SessionID, error) {
	r, err := newRawID(rand, "session id")
	return SessionID{r}, err
}

// ParseSessionID parses the canonical form "ses_" + 26 base32 characters.
func ParseSessionID(s string) (SessionID, error) {
	r, err := parseRawID(sessionIDPrefix, "session id", s)
	return SessionID{r}, err
}

// String returns the canonical form, or "" for the zero value.
func (id SessionID) String() string { return id.raw.format(sessionIDPrefix) }

// IsZero reports whether id is the zero value.
func (id SessionID) IsZero() bool { return id.raw == rawID{} }

// MarshalText implements encoding.TextMarshaler.
func (id SessionID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; empty text gives the
// zero value, which validation then refuses where an ID is required.
func (id *SessionID) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*id = SessionID{}
		return nil
	}
	v, err := ParseSessionID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// AdvertisementID identifies an advertisement. The zero value is "none".
type AdvertisementID struct{ raw rawID }

// NewAdvertisementID returns a fresh ID read from rand.
func NewAdvertisementID(rand io.Reader) (AdvertisementID, error) {
	r, err := newRawID(rand, "advertisement id")
	return AdvertisementID{r}, err
}

// ParseAdvertisementID parses the canonical form "ad_" + 26 base32 characters.
func ParseAdvertisementID(s string) (AdvertisementID, error) {
	r, err := parseRawID(advertisementIDPrefix, "advertisement id", s)
	return AdvertisementID{r}, err
}

// String returns the canonical form, or "" for the zero value.
func (id AdvertisementID) String() string { return id.raw.format(advertisementIDPrefix) }

// IsZero reports whether id is the zero value.
func (id AdvertisementID) IsZero() bool { return id.raw == rawID{} }

// MarshalText implements encoding.TextMarshaler.
func (id AdvertisementID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; empty text gives the
// zero value.
func (id *AdvertisementID) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*id = AdvertisementID{}
		return nil
	}
	v, err := ParseAdvertisementID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// EnvelopeID identifies an envelope; the relay de-duplicates retries by it.
type EnvelopeID struct{ raw rawID }

// NewEnvelopeID returns a fresh ID read from rand.
func NewEnvelopeID(rand io.Reader) (EnvelopeID, error) {
	r, err := newRawID(rand, "envelope id")
	return EnvelopeID{r}, err
}

// ParseEnvelopeID parses the canonical form "env_" + 26 base32 characters.
func ParseEnvelopeID(s string) (EnvelopeID, error) {
	r, err := parseRawID(envelopeIDPrefix, "envelope id", s)
	return EnvelopeID{r}, err
}

// String returns the canonical form, or "" for the zero value.
func (id EnvelopeID) String() string { return id.raw.format(envelopeIDPrefix) }

// IsZero reports whether id is the zero value.
func (id EnvelopeID) IsZero() bool { return id.raw == rawID{} }

// MarshalText implements encoding.TextMarshaler.
func (id EnvelopeID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; empty text gives the
// zero value.
func (id *EnvelopeID) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*id = EnvelopeID{}
		return nil
	}
	v, err := ParseEnvelopeID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}
