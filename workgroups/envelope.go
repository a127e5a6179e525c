package workgroups

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Header is the part of an envelope the network reads; the payload is opaque
// to it. The relay checks it against the session (see [CheckSend]) and that
// Size and SHA256 describe the payload (see [DecodeFrame]).
type Header struct {
	ID      EnvelopeID  `json:"id"`
	Session SessionID   `json:"session"`
	From    spiffeid.ID `json:"from"`
	To      spiffeid.ID `json:"to"`
	Type    string      `json:"type"` // a concrete message type
	// Seq is the envelope's position in the session, both directions
	// together, starting at 1. The relay assigns it; senders leave it 0.
	Seq         uint64    `json:"seq"`
	Time        time.Time `json:"time"`
	ContentType string    `json:"content_type"`
	Size        uint64    `json:"size"`   // payload bytes
	SHA256      string    `json:"sha256"` // lower-case hex of the payload's SHA-256
	// CorrelationID ties a reply to a request; free-form, optional.
	CorrelationID string `json:"correlation_id,omitempty"`
	// TraceParent is the sender's W3C trace context (a traceparent value), carried only so that tracing can
	// link the sender's, the relay's and the recipient's spans. Nothing but tracing may act on it; optional.
	TraceParent string `json:"traceparent,omitempty"`
	// Intent is the purpose the sender declares for this envelope; optional
	// unless the contract requires it. Policies see it as context.intent.
	Intent *Intent `json:"intent,omitempty"`
}

const (
	maxContentTypeLen   = 128
	maxCorrelationIDLen = 128
	maxTraceParentLen   = 128
)

// WithPayload returns h with Size and SHA256 describing payload.
func (h Header) WithPayload(payload []byte) Header {
	sum := sha256.Sum256(payload)
	h.Size = uint64(len(payload))
	h.SHA256 = hex.EncodeToString(sum[:])
	return h
}

// Validate checks every field's form. It does not look at a payload.
func (h Header) Validate() error {
	switch {
	case h.ID.IsZero():
		return fmt.Errorf("%w: header: no id", ErrInvalid)
	case h.Session.IsZero():
		return fmt.Errorf("%w: header: no session", ErrInvalid)
	case h.From.IsZero():
		return fmt.Errorf("%w: header: no from", ErrInvalid)
	case h.To.IsZero():
		return fmt.Errorf("%w: header: no to", ErrInvalid)
	case h.Time.IsZero():
		return fmt.Errorf("%w: header: no time", ErrInvalid)
	case h.Size > MaxEnvelopePayload:
		return fmt.Errorf("%w: header: size %d over %d", ErrTooLarge, h.Size, MaxEnvelopePayload)
	}
	if err := ValidateMessageType(h.Type); err != nil {
		return fmt.Errorf("header: type: %w", err)
	}
	if h.ContentType == "" || len(h.ContentType) > maxContentTypeLen || !printableASCII(h.ContentType) {
		return fmt.Errorf("%w: header: content_type: want 1-%d printable ASCII bytes", ErrInvalid, maxContentTypeLen)
	}
	if len(h.SHA256) != 2*sha256.Size || !lowerHex(h.SHA256) {
		return fmt.Errorf("%w: header: sha256: want %d lower-case hex digits", ErrInvalid, 2*sha256.Size)
	}
	if len(h.CorrelationID) > maxCorrelationIDLen || !printableASCII(h.CorrelationID) {
		return fmt.Errorf("%w: header: correlation_id: want at most %d printable ASCII bytes", ErrInvalid, maxCorrelationIDLen)
	}
	if len(h.TraceParent) > maxTraceParentLen || !printableASCII(h.TraceParent) {
		return fmt.Errorf("%w: header: traceparent: want at most %d printable ASCII bytes", ErrInvalid, maxTraceParentLen)
	}
	if h.Intent != nil {
		if err := h.Intent.Validate(); err != nil {
			return fmt.Errorf("%w: header: intent: %w", ErrInvalid, err)
		}
	}
	return nil
}

// checkPayload reports whether Size and SHA256 describe payload.
func (h Header) checkPayload(payload []byte) error {
	if h.Size != uint64(len(payload)) {
		return fmt.Errorf("%w: header size %d, payload %d bytes", ErrMalformed, h.Size, len(payload))
	}
	sum := sha256.Sum256(payload)
	var want [sha256.Size]byte
	if n, err := hex.Decode(want[:], []byte(h.SHA256)); err != nil || n != sha256.Size || want != sum {
		return fmt.Errorf("%w: payload does not match header sha256", ErrMalformed)
	}
	return nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// The frame layout, all integers big-endian:
//
//	magic   3 bytes  "UME"
//	version 1 byte   1
//	hlen    uint32   header length, 1..MaxFrameHeader
//	header  hlen     JSON Header
//	plen    uint32   payload length, equal to the header's size
//	payload plen     opaque bytes, whose SHA-256 is the header's sha256
const (
	frameMagic   = "UME"
	FrameVersion = 1

	// MaxFrameHeader is the ceiling for a frame's header; decoders may set a
	// lower limit.
	MaxFrameHeader = 64 << 10
	// DefaultMaxFrameHeader and DefaultMaxFramePayload are the limits a zero
	// FrameLimits field means.
	DefaultMaxFrameHeader  = 16 << 10
	DefaultMaxFramePayload = 1 << 20

	frameAllocChunk = 64 << 10
)

// FrameLimits bounds what DecodeFrame accepts. A zero field takes its
// default; a field above the ceiling (MaxFrameHeader, MaxEnvelopePayload) is
// lowered to it.
type FrameLimits struct {
	MaxHeaderBytes  uint32
	MaxPayloadBytes uint32
}

func (l FrameLimits) normalized() FrameLimits {
	if l.MaxHeaderBytes == 0 {
		l.MaxHeaderBytes = DefaultMaxFrameHeader
	}
	if l.MaxHeaderBytes > MaxFrameHeader {
		l.MaxHeaderBytes = MaxFrameHeader
	}
	if l.MaxPayloadBytes == 0 {
		l.MaxPayloadBytes = DefaultMaxFramePayload
	}
	if l.MaxPayloadBytes > MaxEnvelopePayload {
		l.MaxPayloadBytes = MaxEnvelopePayload
	}
	return l
}

// AppendFrame appends the frame for h and payload to dst. It validates h and
// checks that it describes payload, so a sender cannot frame what a receiver
// would refuse.
func AppendFrame(dst []byte, h Header, payload []byte) ([]byte, error) {
	if err := h.Validate(); err != nil {
		return dst, err
	}
	if len(payload) > MaxEnvelopePayload {
		return dst, fmt.Errorf("%w: payload %d bytes, limit %d", ErrTooLarge, len(payload), MaxEnvelopePayload)
	}
	if err := h.checkPayload(payload); err != nil {
		return dst, err
	}
	hdr, err := json.Marshal(h)
	if err != nil {
		return dst, fmt.Errorf("workgroups: encoding header: %w", err)
	}
	if len(hdr) > MaxFrameHeader {
		return dst, fmt.Errorf("%w: header %d bytes, limit %d", ErrTooLarge, len(hdr), MaxFrameHeader)
	}
	dst = append(dst, frameMagic...)
	dst = append(dst, FrameVersion)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(hdr)))
	dst = append(dst, hdr...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...), nil
}

// EncodeFrame writes the frame for h and payload to w in a single Write.
func EncodeFrame(w io.Writer, h Header, payload []byte) error {
	buf, err := AppendFrame(make([]byte, 0, 512+len(payload)), h, payload)
	if err != nil {
		return err
	}
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("workgroups: writing frame: %w", err)
	}
	return nil
}

// DecodeFrame reads one frame from r. Each length is checked against lim
// before anything of that length is allocated, and a large payload buffer
// grows only as bytes actually arrive. The header is strict JSON (unknown,
// duplicate or non-canonical keys are refused) and must validate; the payload
// must match its size and sha256.
//
// It returns io.EOF if r ends before the first byte of a frame, and an error
// wrapping ErrMalformed (and io.ErrUnexpectedEOF) if it ends inside one;
// ErrTooLarge and ErrUnsupportedVersion otherwise name their cause.
func DecodeFrame(r io.Reader, lim FrameLimits) (Header, []byte, error) {
	lim = lim.normalized()
	var pre [8]byte
	if n, err := io.ReadFull(r, pre[:]); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return Header{}, nil, io.EOF
		}
		return Header{}, nil, truncated("frame prefix", err)
	}
	if string(pre[:3]) != frameMagic {
		return Header{}, nil, fmt.Errorf("%w: frame: bad magic", ErrMalformed)
	}
	if pre[3] != FrameVersion {
		return Header{}, nil, fmt.Errorf("%w: %d", ErrUnsupportedVersion, pre[3])
	}
	hlen := binary.BigEndian.Uint32(pre[4:])
	if hlen == 0 {
		return Header{}, nil, fmt.Errorf("%w: frame: empty header", ErrMalformed)
	}
	if hlen > lim.MaxHeaderBytes {
		return Header{}, nil, fmt.Errorf("%w: frame header %d bytes, limit %d", ErrTooLarge, hlen, lim.MaxHeaderBytes)
	}
	hdr := make([]byte, hlen)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return Header{}, nil, truncated("frame header", err)
	}
	var h Header
	if err := decodeStrict("frame header", hdr, int(lim.MaxHeaderBytes), &h); err != nil {
		return Header{}, nil, err
	}
	if err := h.Validate(); err != nil {
		if errors.Is(err, ErrTooLarge) {
			return Header{}, nil, err
		}
		return Header{}, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if h.Size > uint64(lim.MaxPayloadBytes) {
		return Header{}, nil, fmt.Errorf("%w: payload %d bytes, limit %d", ErrTooLarge, h.Size, lim.MaxPayloadBytes)
	}
	var plenBuf [4]byte
	if _, err := io.ReadFull(r, plenBuf[:]); err != nil {
		return Header{}, nil, truncated("frame payload length", err)
	}
	plen := binary.BigEndian.Uint32(plenBuf[:])
	if plen > lim.MaxPayloadBytes {
		return Header{}, nil, fmt.Errorf("%w: payload %d bytes, limit %d", ErrTooLarge, plen, lim.MaxPayloadBytes)
	}
	if uint64(plen) != h.Size {
		return Header{}, nil, fmt.Errorf("%w: frame payload length %d, header size %d", ErrMalformed, plen, h.Size)
	}
	payload, err := readPayload(r, int(plen))
	if err != nil {
		return Header{}, nil, truncated("frame payload", err)
	}
	if err := h.checkPayload(payload); err != nil {
		return Header{}, nil, err
	}
	return h, payload, nil
}

// readPayload reads n bytes, allocating at most frameAllocChunk ahead of
// the data received, so a peer that declares a large payload and stalls
// costs little memory.
func readPayload(r io.Reader, n int) ([]byte, error) {
	if n <= frameAllocChunk {
		buf := make([]byte, n)
		_, err := io.ReadFull(r, buf)
		return buf, err
	}
	var buf bytes.Buffer
	buf.Grow(frameAllocChunk)
	got, err := io.CopyN(&buf, r, int64(n))
	if err == nil && got != int64(n) {
		err = io.ErrUnexpectedEOF
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return buf.Bytes(), err
}

// truncated reports a read error inside a frame: the stream ending early
// is a malformed frame; any other error is the reader's own.
func truncated(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s: %w", ErrMalformed, what, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("workgroups: reading %s: %w", what, err)
}
