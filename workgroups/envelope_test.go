package workgroups

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func equalHeaders(a, b Header) bool {
	ta, tb := a.Time, b.Time
	a.Time, b.Time = time.Time{}, time.Time{}
	return a == b && ta.Equal(tb)
}

func TestHeaderValidate(t *testing.T) {
	s := acceptedSession(t)
	for _, tc := range []struct {
		name   string
		mutate func(h *Header)
		want   error
	}{
		{"valid", func(h *Header) {}, nil},
		{"no correlation id", func(h *Header) { h.CorrelationID = "" }, nil},
		{"no id", func(h *Header) { h.ID = EnvelopeID{} }, ErrInvalid},
		{"no session", func(h *Header) { h.Session = SessionID{} }, ErrInvalid},
		{"no from", func(h *Header) { h.From = spiffeid.ID{} }, ErrInvalid},
		{"no to", func(h *Header) { h.To = spiffeid.ID{} }, ErrInvalid},
		{"no time", func(h *Header) { h.Time = time.Time{} }, ErrInvalid},
		{"bad type", func(h *Header) { h.Type = "Quote" }, ErrInvalid},
		{"pattern type", func(h *Header) { h.Type = "quote.*" }, ErrInvalid},
		{"no content type", func(h *Header) { h.ContentType = "" }, ErrInvalid},
		{"content type with newline", func(h *Header) { h.ContentType = "text/plain\r\nX: y" }, ErrInvalid},
		{"long content type", func(h *Header) { h.ContentType = strings.Repeat("a", maxContentTypeLen+1) }, ErrInvalid},
		{"upper-case sha256", func(h *Header) { h.SHA256 = strings.ToUpper(h.SHA256) }, ErrInvalid},
		{"short sha256", func(h *Header) { h.SHA256 = h.SHA256[:10] }, ErrInvalid},
		{"long correlation id", func(h *Header) { h.CorrelationID = strings.Repeat("c", maxCorrelationIDLen+1) }, ErrInvalid},
		{"correlation id with control", func(h *Header) { h.CorrelationID = "a\x00" }, ErrInvalid},
		{"traceparent", func(h *Header) { h.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" }, nil},
		{"long traceparent", func(h *Header) { h.TraceParent = strings.Repeat("t", maxTraceParentLen+1) }, ErrInvalid},
		{"traceparent with control", func(h *Header) { h.TraceParent = "00-\n" }, ErrInvalid},
		{"size over ceiling", func(h *Header) { h.Size = MaxEnvelopePayload + 1 }, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := sampleHeader(t, s, []byte("hello"))
			tc.mutate(&h)
			wantErr(t, h.Validate(), tc.want)
		})
	}
}

func TestFrameRoundTrip(t *testing.T) {
	s := acceptedSession(t)
	for _, payload := range [][]byte{nil, []byte("{}"), bytes.Repeat([]byte{0xfe}, 200<<10)} {
		h := sampleHeader(t, s, payload)
		h.Seq = 42
		var buf bytes.Buffer
		if err := EncodeFrame(&buf, h, payload); err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(buf.Bytes(), []byte("UME\x01")) {
			t.Fatalf("prefix % x", buf.Bytes()[:4])
		}
		// Two frames back to back, then a clean EOF.
		second := buf.Bytes()
		buf.Write(second)
		r := bytes.NewReader(buf.Bytes())
		for range 2 {
			got, gotPayload, err := DecodeFrame(r, FrameLimits{MaxPayloadBytes: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			if !equalHeaders(got, h) || !bytes.Equal(gotPayload, payload) {
				t.Fatalf("round trip: %+v", got)
			}
		}
		if _, _, err := DecodeFrame(r, FrameLimits{}); err != io.EOF {
			t.Fatalf("after the last frame: %v, want io.EOF", err)
		}
	}
}

// rawFrame builds a frame by hand, so tests can break any part of it.
func rawFrame(version byte, header []byte, payload []byte) []byte {
	b := append([]byte("UME"), version)
	b = binary.BigEndian.AppendUint32(b, uint32(len(header)))
	b = append(b, header...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// failReader fails the test if DecodeFrame reads past a length it should
// have refused.
type failReader struct {
	t    *testing.T
	data []byte
}

func (f *failReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		f.t.Fatal("read past the prefix of an oversized frame")
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestDecodeFrameErrors(t *testing.T) {
	s := acceptedSession(t)
	payload := []byte(`{"q":1}`)
	h := sampleHeader(t, s, payload)
	hdr, _ := json.Marshal(h)
	good := rawFrame(1, hdr, payload)

	other := h.WithPayload([]byte("other"))
	otherHdr, _ := json.Marshal(other)
	sizeOnly := h
	sizeOnly.Size++
	sizeHdr, _ := json.Marshal(sizeOnly)
	badHdr, _ := json.Marshal(func() Header { x := h; x.Type = "BAD"; return x }())
	hugeHdr, _ := json.Marshal(func() Header { x := h; x.Size = 2 << 20; return x }())

	for _, tc := range []struct {
		name  string
		frame []byte
		lim   FrameLimits
		want  error
	}{
		{"good", good, FrameLimits{}, nil},
		{"empty input", nil, FrameLimits{}, io.EOF},
		{"short prefix", good[:5], FrameLimits{}, io.ErrUnexpectedEOF},
		{"bad magic", append([]byte("XME"), good[3:]...), FrameLimits{}, ErrMalformed},
		{"version 0", rawFrame(0, hdr, payload), FrameLimits{}, ErrUnsupportedVersion},
		{"version 2", rawFrame(2, hdr, payload), FrameLimits{}, ErrUnsupportedVersion},
		{"empty header", rawFrame(1, nil, payload), FrameLimits{}, ErrMalformed},
		{"header over limit", good, FrameLimits{MaxHeaderBytes: uint32(len(hdr) - 1)}, ErrTooLarge},
		{"truncated header", good[:8+len(hdr)/2], FrameLimits{}, io.ErrUnexpectedEOF},
		{"header not JSON", rawFrame(1, []byte("not json"), payload), FrameLimits{}, ErrMalformed},
		{"header unknown field", rawFrame(1, bytes.Replace(hdr, []byte(`{`), []byte(`{"x":1,`), 1), payload), FrameLimits{}, ErrMalformed},
		{"header duplicate field", rawFrame(1, bytes.Replace(hdr, []byte(`{`), []byte(`{"type":"quote.x",`), 1), payload), FrameLimits{}, ErrMalformed},
		{"header invalid", rawFrame(1, badHdr, payload), FrameLimits{}, ErrMalformed},
		{"header size over limit", rawFrame(1, hugeHdr, payload), FrameLimits{}, ErrTooLarge},
		{"payload length over limit", good, FrameLimits{MaxPayloadBytes: uint32(len(payload) - 1)}, ErrTooLarge},
		{"payload length differs from size", rawFrame(1, sizeHdr, payload), FrameLimits{}, ErrMalformed},
		{"sha256 mismatch", rawFrame(1, otherHdr[:], []byte("othe!")), FrameLimits{}, ErrMalformed},
		{"truncated payload", good[:len(good)-2], FrameLimits{}, io.ErrUnexpectedEOF},
		{"truncated payload length", good[:8+len(hdr)+2], FrameLimits{}, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := DecodeFrame(bytes.NewReader(tc.frame), tc.lim)
			wantErr(t, err, tc.want)
			if errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrMalformed) {
				t.Fatal("truncation must also be ErrMalformed")
			}
		})
	}

	t.Run("limits checked before reading", func(t *testing.T) {
		prefix := append([]byte("UME\x01"), 0xff, 0xff, 0xff, 0xff)
		_, _, err := DecodeFrame(&failReader{t: t, data: prefix}, FrameLimits{})
		wantErr(t, err, ErrTooLarge)

		// A payload length over the limit is refused before the payload is read.
		withLen := append(rawFrame(1, hdr, nil)[:8+len(hdr)], 0xff, 0xff, 0xff, 0xff)
		_, _, err = DecodeFrame(&failReader{t: t, data: withLen}, FrameLimits{})
		wantErr(t, err, ErrTooLarge)
	})
	t.Run("reader errors are not malformed frames", func(t *testing.T) {
		boom := errors.New("connection reset")
		_, _, err := DecodeFrame(io.MultiReader(bytes.NewReader(good[:10]), errReader{boom}), FrameLimits{})
		if !errors.Is(err, boom) || errors.Is(err, ErrMalformed) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("limits are clamped", func(t *testing.T) {
		l := FrameLimits{MaxHeaderBytes: 1 << 30, MaxPayloadBytes: 1 << 30}.normalized()
		if l.MaxHeaderBytes != MaxFrameHeader || l.MaxPayloadBytes != MaxEnvelopePayload {
			t.Fatalf("%+v", l)
		}
		if d := (FrameLimits{}).normalized(); d.MaxHeaderBytes != DefaultMaxFrameHeader || d.MaxPayloadBytes != DefaultMaxFramePayload {
			t.Fatalf("%+v", d)
		}
	})
}

func TestEncodeFrameRefuses(t *testing.T) {
	s := acceptedSession(t)
	payload := []byte("abc")
	h := sampleHeader(t, s, payload)
	var buf bytes.Buffer
	wantErr(t, EncodeFrame(&buf, h, []byte("abd")), ErrMalformed) // sha256 mismatch
	wantErr(t, EncodeFrame(&buf, h, []byte("abcd")), ErrMalformed)
	bad := h
	bad.Type = ""
	wantErr(t, EncodeFrame(&buf, bad, payload), ErrInvalid)
	big := make([]byte, MaxEnvelopePayload+1)
	wantErr(t, EncodeFrame(&buf, h.WithPayload(big), big), ErrTooLarge)
	if buf.Len() != 0 {
		t.Fatal("a refused frame was written")
	}
	boom := errors.New("closed")
	if err := EncodeFrame(errWriter{boom}, h, payload); !errors.Is(err, boom) {
		t.Fatalf("writer error: %v", err)
	}
}

type errWriter struct{ err error }

func (e errWriter) Write([]byte) (int, error) { return 0, e.err }

// slowReader returns one byte per Read, as a slow network might.
type slowReader struct{ r io.Reader }

func (s slowReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return s.r.Read(p)
}

func TestDecodeFrameSlowReader(t *testing.T) {
	s := acceptedSession(t)
	payload := bytes.Repeat([]byte("x"), 70<<10) // above the allocation chunk
	h := sampleHeader(t, s, payload)
	frame, err := AppendFrame(nil, h, payload)
	if err != nil {
		t.Fatal(err)
	}
	got, gotPayload, err := DecodeFrame(slowReader{bytes.NewReader(frame)}, FrameLimits{})
	if err != nil || !equalHeaders(got, h) || !bytes.Equal(gotPayload, payload) {
		t.Fatalf("slow read: %v", err)
	}
}
