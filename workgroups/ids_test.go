package workgroups

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestIDsRoundTrip(t *testing.T) {
	r := seeded(42)
	seen := map[string]bool{}
	for range 200 {
		s, err := NewSessionID(r)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := NewAdvertisementID(r)
		e, _ := NewEnvelopeID(r)
		for _, str := range []string{s.String(), a.String(), e.String()} {
			if seen[str] {
				t.Fatalf("repeated id %s", str)
			}
			seen[str] = true
		}
		if !strings.HasPrefix(s.String(), "ses_") || len(s.String()) != 4+26 {
			t.Fatalf("session id %q", s)
		}
		if got, err := ParseSessionID(s.String()); err != nil || got != s {
			t.Fatalf("ParseSessionID(%s) = %v, %v", s, got, err)
		}
		if got, err := ParseAdvertisementID(a.String()); err != nil || got != a {
			t.Fatalf("ParseAdvertisementID(%s) = %v, %v", a, got, err)
		}
		if got, err := ParseEnvelopeID(e.String()); err != nil || got != e {
			t.Fatalf("ParseEnvelopeID(%s) = %v, %v", e, got, err)
		}
	}
}

func TestParseIDErrors(t *testing.T) {
	good := mustSessionID(t, 1).String()
	body := strings.TrimPrefix(good, "ses_")
	// 26 base32 characters carry 130 bits for 128: the last character's two
	// low bits are padding. Flipping one spells the same bytes non-canonically.
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	idx := strings.IndexByte(alphabet, body[len(body)-1])
	noncanon := body[:len(body)-1] + string(alphabet[idx^1])
	for _, s := range []string{
		"",
		"ses_",
		"ses_" + body[:25],
		"ses_" + body + "a",
		"ad_" + body,
		"SES_" + body,
		"ses_" + strings.ToUpper(body),
		"ses_" + body[:25] + "1", // '1' is not in the alphabet
		"ses_" + strings.Repeat("a", 26),
		"ses_" + noncanon,
	} {
		if _, err := ParseSessionID(s); err == nil {
			t.Errorf("ParseSessionID(%q) succeeded", s)
		} else {
			wantErr(t, err, ErrInvalid)
		}
	}
	if _, err := ParseAdvertisementID(good); err == nil {
		t.Error("a session id parsed as an advertisement id")
	}
	if _, err := ParseEnvelopeID(good); err == nil {
		t.Error("a session id parsed as an envelope id")
	}
}

func TestIDText(t *testing.T) {
	type doc struct {
		S SessionID       `json:"s"`
		A AdvertisementID `json:"a"`
		E EnvelopeID      `json:"e"`
	}
	in := doc{mustSessionID(t, 1), mustAdID(t, 2), mustEnvID(t, 3)}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out doc
	if err := json.Unmarshal(b, &out); err != nil || out != in {
		t.Fatalf("round trip: %v %+v", err, out)
	}
	var zero doc
	b, _ = json.Marshal(zero)
	if string(b) != `{"s":"","a":"","e":""}` {
		t.Fatalf("zero marshals as %s", b)
	}
	if err := json.Unmarshal(b, &out); err != nil || out != zero {
		t.Fatalf("zero round trip: %v %+v", err, out)
	}
	if err := json.Unmarshal([]byte(`{"s":"ses_x"}`), &out); err == nil {
		t.Fatal("bad id unmarshalled")
	}
	if !zero.S.IsZero() || zero.S.String() != "" || in.S.IsZero() {
		t.Fatal("IsZero/String")
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestNewIDSourceErrors(t *testing.T) {
	if _, err := NewSessionID(bytes.NewReader([]byte{1, 2, 3})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short source: %v", err)
	}
	if _, err := NewSessionID(zeroReader{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("all-zero source: %v", err)
	}
	if _, err := NewEnvelopeID(nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("nil source: %v", err)
	}
}
