package envstore

import (
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
)

// How an envelope lies in the stream: its subject names its session and its id, its headers carry what the
// store and its readers need besides the encoded envelope.

// Headers written next to the encoded envelope.
const (
	hdrID         = "Umbra-Envelope-Id"
	hdrTo         = "Umbra-To"
	hdrCount      = "Umbra-Count"
	hdrMetaPrefix = "Umbra-Meta-" // followed by the Envelope.Meta key
)

const (
	maxMetaKeyLen = 32
	// maxMetaBytes bounds Envelope.Meta as the headers it becomes; with the store's own headers it stays well
	// inside headerRoom.
	maxMetaBytes = 8 << 10
)

// idToken is an envelope id as one subject token: unpadded URL-safe base64, which never contains '.', '*', '>'
// or white space, and maps distinct ids to distinct tokens.
func idToken(id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(id))
}

// sessionSubject is where an earlier version of this package stored all of a session's envelopes.
func (s *Store) sessionSubject(session string) string { return s.prefix + session }

// sessionWildcard matches the subjects of all envelopes stored in the session by this version.
func (s *Store) sessionWildcard(session string) string { return s.prefix + session + ".*" }

// envelopeSubject is the subject of the envelope with this id in the session.
func (s *Store) envelopeSubject(session, id string) string {
	return s.prefix + session + "." + idToken(id)
}

// sessionOf returns the session of a subject of the stream.
func (s *Store) sessionOf(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, s.prefix)
	if !ok {
		return "", false
	}
	session, _, _ := strings.Cut(rest, ".")
	return session, validName(session, maxSessionLen)
}

// envelope reads an envelope back from what JetStream returns.
func envelope(session string, h nats.Header, data []byte) Envelope {
	return Envelope{ID: h.Get(hdrID), Session: session, To: h.Get(hdrTo), Data: data, Meta: metaOf(h)}
}

// metaOf collects the Meta headers; nil if there are none.
func metaOf(h nats.Header) map[string]string {
	var meta map[string]string
	for k, vs := range h {
		key, ok := strings.CutPrefix(k, hdrMetaPrefix)
		if !ok || len(vs) == 0 {
			continue
		}
		if meta == nil {
			meta = make(map[string]string)
		}
		meta[key] = vs[0]
	}
	return meta
}

// validateMeta checks that meta can be stored as headers and read back unchanged.
func validateMeta(meta map[string]string) error {
	size := 0
	for k, v := range meta {
		if !validMetaKey(k) {
			if len(k) > 40 {
				k = k[:40] + "…"
			}
			return fmt.Errorf("%w: meta key %q: want 1-%d of [A-Za-z0-9-]", ErrInvalid, k, maxMetaKeyLen)
		}
		for i := 0; i < len(v); i++ {
			if v[i] < ' ' || v[i] > '~' {
				return fmt.Errorf("%w: meta %s: value has a byte 0x%02x, want printable ASCII", ErrInvalid, k, v[i])
			}
		}
		if strings.HasPrefix(v, " ") || strings.HasSuffix(v, " ") {
			// Header values lose surrounding white space on the way: the value would not come back as given.
			return fmt.Errorf("%w: meta %s: value begins or ends with a space", ErrInvalid, k)
		}
		size += len(hdrMetaPrefix) + len(k) + len(": ") + len(v) + len("\r\n")
	}
	if size > maxMetaBytes {
		return fmt.Errorf("%w: meta takes %d bytes as headers, more than %d", ErrInvalid, size, maxMetaBytes)
	}
	return nil
}

func validMetaKey(k string) bool {
	if k == "" || len(k) > maxMetaKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
