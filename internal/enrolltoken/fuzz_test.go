package enrolltoken

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, refuses everything with
// ErrMalformed, and accepts only tokens whose payload is exactly the canonical
// encoding of the claims it returns.
func FuzzParse(f *testing.F) {
	f.Add(signRaw(testKey, mustJSON(f, testClaims())))
	f.Fuzz(func(t *testing.T, token string) {
		c, err := Parse(token)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err %v is not ErrMalformed", err)
			}
			if c != (Claims{}) {
				t.Fatalf("claims returned with an error: %+v", c)
			}
			return
		}
		if len(token) > MaxLen || !strings.HasPrefix(token, prefix) {
			t.Fatalf("accepted a token of %d bytes without the limit or prefix", len(token))
		}
		if err := c.validate(); err != nil {
			t.Fatalf("accepted invalid claims: %v", err)
		}
		if _, err := c.SPIFFE(); err != nil {
			t.Fatalf("accepted a bad sub: %v", err)
		}
		payload, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if want := prefix + b64.EncodeToString(payload) + "."; !strings.HasPrefix(token, want) {
			t.Fatalf("accepted a payload other than the canonical %s", want)
		}
	})
}

// FuzzVerify checks that Verify accepts nothing but the one token testKey
// signed. raw is verified as is; payload is spliced into that token with its
// original signature, which must verify only for the original payload.
func FuzzVerify(f *testing.F) {
	goodPayload := mustJSON(f, testClaims())
	good := signRaw(testKey, goodPayload)
	goodSig := good[strings.LastIndexByte(good, '.')+1:]
	pub := testKey.Public().(ed25519.PublicKey)

	f.Add(good, goodPayload)
	f.Add(replaceAt(good, len(prefix)+3), bytes.Replace(goodPayload, []byte("a1"), []byte("a2"), 1))

	f.Fuzz(func(t *testing.T, raw string, payload []byte) {
		c, err := Verify(raw, pub, td, t0)
		switch {
		case err == nil && raw != good:
			t.Fatalf("Verify accepted a token testKey never signed: %q", raw)
		case err == nil:
			if p, perr := Parse(raw); perr != nil || p != c {
				t.Fatalf("Parse disagrees with Verify: %+v, %v", p, perr)
			}
		case c != (Claims{}):
			t.Fatalf("claims returned with an error: %+v", c)
		}

		spliced := prefix + b64.EncodeToString(payload) + "." + goodSig
		_, err = Verify(spliced, pub, td, t0)
		if bytes.Equal(payload, goodPayload) {
			if err != nil {
				t.Fatalf("original payload refused: %v", err)
			}
			return
		}
		if err == nil {
			t.Fatalf("altered payload %q accepted under the original signature", payload)
		}
		if !errors.Is(err, ErrSignature) && !errors.Is(err, ErrMalformed) {
			t.Fatalf("altered payload refused with %v, want ErrSignature or ErrMalformed", err)
		}
	})
}
