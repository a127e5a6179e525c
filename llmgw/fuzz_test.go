package llmgw_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/umbra-mesh/umbra/llmgw/anthropic"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
	"github.com/umbra-mesh/umbra/llmgw/sse"
)

// The seed corpora are in testdata/fuzz/<FuzzName>.

func FuzzChatRequest(f *testing.F) {
	redact, err := guard.New(guard.Policy{PII: guard.Redact, Secrets: guard.Redact, Injection: guard.Redact})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := chat.ParseRequest(body)
		if err != nil {
			return
		}
		enc, err := r.Encode()
		if err != nil {
			t.Fatalf("a parsed request does not encode: %v", err)
		}
		again, err := chat.ParseRequest(enc)
		if err != nil {
			t.Fatalf("the encoding of a parsed request does not parse: %v\n%s", err, enc)
		}
		if again.Model != r.Model || again.Stream != r.Stream || len(again.Messages) != len(r.Messages) {
			t.Fatalf("round trip changed the request")
		}
		for _, tx := range r.Texts() {
			r.SetText(tx, tx.Text)
		}
		if enc2, _ := r.Encode(); !bytes.Equal(canonicalJSON(t, enc), canonicalJSON(t, enc2)) {
			t.Fatalf("setting texts to themselves changed the body:\n%s\n%s", enc, enc2)
		}
		if r.EstimateInputTokens() <= 0 {
			t.Fatal("estimate not positive")
		}
		// Redaction keeps the request well formed.
		for _, tx := range r.Texts() {
			out, _, _ := redact.Apply(tx.Text, tx.Role == "user")
			r.SetText(tx, out)
		}
		if enc3, err := r.Encode(); err != nil {
			t.Fatal(err)
		} else if _, err := chat.ParseRequest(enc3); err != nil {
			t.Fatalf("redacted request no longer parses: %v", err)
		}
		// Translation for an Anthropic upstream either refuses or yields a JSON object.
		if a, err := anthropic.RequestFromOpenAI(again, "claude"); err == nil {
			b, err := a.Encode()
			if err != nil || !json.Valid(b) {
				t.Fatalf("translated request does not encode: %v", err)
			}
		}
	})
}

// canonicalJSON re-encodes b with object keys sorted, to compare JSON documents by meaning.
func canonicalJSON(t *testing.T, b []byte) []byte {
	var v any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(v)
	return out
}

func FuzzMessagesRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := anthropic.RequestToOpenAI(body)
		if err != nil {
			return
		}
		if r.Model == "" || len(r.Messages) == 0 {
			t.Fatal("accepted a request without model or messages")
		}
		enc, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := chat.ParseRequest(enc); err != nil {
			t.Fatalf("translated request does not parse: %v", err)
		}
		if a, err := anthropic.RequestFromOpenAI(r, "claude"); err == nil {
			if _, err := a.Encode(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func FuzzEmbeddingsRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := chat.ParseEmbeddings(body)
		if err != nil {
			return
		}
		if texts := r.Texts(); texts != nil {
			r.SetTexts(texts)
			if again := r.Texts(); len(again) != len(texts) {
				t.Fatalf("texts %d then %d", len(texts), len(again))
			}
		}
		if r.EstimateInputTokens() <= 0 {
			t.Fatal("estimate not positive")
		}
	})
}

// FuzzAnthropicStream reads a Messages API event stream, translates it to OpenAI chunks and back.
func FuzzAnthropicStream(f *testing.F) {
	f.Fuzz(func(t *testing.T, stream []byte) {
		rd := sse.NewReader(bytes.NewReader(stream))
		to := &anthropic.StreamToOpenAI{Model: "m"}
		from := &anthropic.StreamFromOpenAI{Model: "m"}
		for range 1000 {
			ev, err := rd.Next()
			if err != nil {
				break
			}
			chunks, err := to.Event(ev.Name, ev.Data)
			if err != nil {
				continue
			}
			for _, c := range chunks {
				b, err := c.Encode()
				if err != nil || !json.Valid(b) {
					t.Fatalf("chunk does not encode: %v", err)
				}
				for _, e := range from.Chunk(c) {
					if _, err := e.Data.Encode(); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		if u := to.Usage(); u.Input < 0 || u.Output < 0 {
			t.Fatalf("negative usage %+v", u)
		}
		from.End()
	})
}

func scanners(t testing.TB) (log, redact *guard.Scanner) {
	var err error
	if log, err = guard.New(guard.Policy{PII: guard.Log, Secrets: guard.Log, Injection: guard.Log}); err != nil {
		t.Fatal(err)
	}
	if redact, err = guard.New(guard.Policy{PII: guard.Redact, Secrets: guard.Redact, Injection: guard.Redact}); err != nil {
		t.Fatal(err)
	}
	return log, redact
}

func FuzzGuardScan(f *testing.F) {
	log, redact := scanners(f)
	f.Fuzz(func(t *testing.T, text string) {
		fs := log.Scan(text, true)
		end := 0
		for _, fd := range fs {
			if fd.Start < end || fd.End <= fd.Start || fd.End > len(text) {
				t.Fatalf("findings out of order or bounds: %+v in %d bytes", fs, len(text))
			}
			end = fd.End
		}
		if out, _, blocked := log.Apply(text, true); out != text || blocked {
			t.Fatal("log mode changed the text")
		}
		out, found, _ := redact.Apply(text, true)
		if len(found) != len(fs) {
			t.Fatalf("redact found %d, log %d", len(found), len(fs))
		}
		if len(fs) == 0 && out != text {
			t.Fatal("text changed without findings")
		}
		if utf8.ValidString(text) && !utf8.ValidString(out) {
			t.Fatal("redaction broke UTF-8")
		}
	})
}

// FuzzGuardStream cuts text into pieces: the stream must pass on exactly the text in log mode, and exactly
// what redacting the whole text gives in redact mode.
func FuzzGuardStream(f *testing.F) {
	log, redact := scanners(f)
	f.Fuzz(func(t *testing.T, text string, cuts []byte) {
		var pieces []string
		rest := text
		for _, c := range cuts {
			if rest == "" {
				break
			}
			n := int(c) % (len(rest) + 1)
			pieces = append(pieces, rest[:n])
			rest = rest[n:]
		}
		pieces = append(pieces, rest)
		run := func(s *guard.Scanner) string {
			st := s.NewStream(128)
			var b strings.Builder
			for _, p := range pieces {
				b.WriteString(st.Write(p))
			}
			b.WriteString(st.Flush())
			return b.String()
		}
		if got := run(log); got != text {
			t.Fatalf("log mode stream changed %q into %q", text, got)
		}
		want, _, _ := redact.Apply(text, false)
		if got := run(redact); got != want {
			t.Fatalf("pieces %q: stream gave %q, whole text %q", pieces, got, want)
		}
	})
}
