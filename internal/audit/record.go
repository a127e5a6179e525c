package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxRecordSize bounds the canonical encoding of one record, in bytes.
const MaxRecordSize = 256 << 10

// Decisions a record may carry.
const (
	DecisionAllow = "allow"
	DecisionDeny  = "deny"
)

const (
	maxKindLen    = 64
	maxSessionLen = 128
	maxShortField = 1024 // Workgroup and PolicyVersion
)

// Record is one entry of the audit trail.
type Record struct {
	Seq           uint64          `json:"seq"`               // JetStream stream sequence; set when read, not hashed
	Time          time.Time       `json:"time"`              // UTC, microsecond precision; set by Append if zero
	Kind          string          `json:"kind"`              // e.g. "session.transition", "envelope.accepted", "policy.changed"
	Actor         string          `json:"actor"`             // SPIFFE ID of who acted
	Session       string          `json:"session,omitempty"` // session ID, [A-Za-z0-9_-]+
	Workgroup     string          `json:"workgroup,omitempty"`
	Decision      string          `json:"decision,omitempty"` // DecisionAllow, DecisionDeny or ""
	Reason        string          `json:"reason,omitempty"`
	PolicyVersion string          `json:"policy_version,omitempty"`
	Diagnostic    json.RawMessage `json:"diagnostic,omitempty"` // the policy engine's explanation
	Data          json.RawMessage `json:"data,omitempty"`       // kind-specific detail (an envelope header, a transition, ...)
	Prev          string          `json:"prev"`                 // hex SHA-256 of the previous record; "" for the first
	Hash          string          `json:"hash"`                 // hex SHA-256 of the canonical encoding of this record
}

// ErrBroken reports that the chain does not verify. The error that wraps it is a *BreakError.
var ErrBroken = errors.New("audit: chain broken")

// Problem names what is wrong at a break in the chain.
type Problem string

// The problems Verify and VerifyRecords report.
const (
	ProblemGap       Problem = "gap in sequence" // a record is missing, or records are out of order
	ProblemPrev      Problem = "prev mismatch"   // Prev is not the hash of the record before
	ProblemHash      Problem = "hash mismatch"   // the record was changed after it was written
	ProblemMalformed Problem = "malformed"       // the record does not decode or is not a valid record
)

// BreakError describes the first break in a chain.
type BreakError struct {
	Seq     uint64 // sequence of the first record found wrong (or expected there)
	Problem Problem
	Detail  string
}

func (e *BreakError) Error() string {
	return fmt.Sprintf("audit: chain broken at seq %d: %s: %s", e.Seq, e.Problem, e.Detail)
}

// Unwrap makes errors.Is(err, ErrBroken) hold.
func (e *BreakError) Unwrap() error { return ErrBroken }

// missing reports that records from to through are absent.
func missing(from, through uint64) error {
	if from == through {
		return broken(from, ProblemGap, "record %d missing", from)
	}
	return broken(from, ProblemGap, "records %d to %d missing", from, through)
}

func broken(seq uint64, p Problem, format string, args ...any) error {
	return &BreakError{Seq: seq, Problem: p, Detail: fmt.Sprintf(format, args...)}
}

// canonical is the byte string a record's hash covers: its JSON encoding with Seq and Hash zeroed.
// encoding/json writes struct fields in declaration order and compacts raw messages, so the encoding
// of a decoded record is the encoding it was decoded from.
func canonical(r Record) ([]byte, error) {
	r.Seq, r.Hash = 0, ""
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("audit: encode record: %w", err)
	}
	return b, nil
}

func hashOf(r Record) (string, error) {
	b, err := canonical(r)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// normalize prepares a record for Append: time in UTC at microsecond precision, raw JSON compacted,
// a JSON null dropped, invalid UTF-8 in free text replaced (as encoding would, but visibly in the
// returned record), so that the record re-encodes to the same bytes after a round trip. Free text
// often quotes what a peer sent; a stray byte there must not cost the record.
func normalize(r *Record, now time.Time) error {
	if r.Time.IsZero() {
		r.Time = now
	}
	r.Time = r.Time.UTC().Truncate(time.Microsecond)
	for _, s := range []*string{&r.Workgroup, &r.Reason, &r.PolicyVersion} {
		*s = strings.ToValidUTF8(*s, "\uFFFD")
	}
	var err error
	if r.Data, err = compactJSON(r.Data); err != nil {
		return fmt.Errorf("audit: data: %w", err)
	}
	if r.Diagnostic, err = compactJSON(r.Diagnostic); err != nil {
		return fmt.Errorf("audit: diagnostic: %w", err)
	}
	return nil
}

func compactJSON(raw json.RawMessage) (json.RawMessage, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, err
	}
	if buf.String() == "null" {
		return nil, nil
	}
	return buf.Bytes(), nil
}

// validate checks everything about a record except its place in the chain.
func validate(r Record) error {
	switch {
	case r.Time.IsZero():
		return errors.New("time is zero")
	case r.Kind == "":
		return errors.New("kind is empty")
	case len(r.Kind) > maxKindLen || !isToken(r.Kind, "._-", false):
		return fmt.Errorf("kind %q: want at most %d of [a-z0-9._-]", clip(r.Kind), maxKindLen)
	case r.Actor == "":
		return errors.New("actor is empty")
	case r.Session != "" && !ValidSessionID(r.Session):
		return fmt.Errorf("session %q: want at most %d of [A-Za-z0-9_-]", clip(r.Session), maxSessionLen)
	case len(r.Workgroup) > maxShortField:
		return fmt.Errorf("workgroup longer than %d bytes", maxShortField)
	case len(r.PolicyVersion) > maxShortField:
		return fmt.Errorf("policy version longer than %d bytes", maxShortField)
	case r.Decision != "" && r.Decision != DecisionAllow && r.Decision != DecisionDeny:
		return fmt.Errorf("decision %q: want %q, %q or empty", clip(r.Decision), DecisionAllow, DecisionDeny)
	case r.Prev != "" && !isHash(r.Prev):
		return errors.New("prev is not a hex SHA-256")
	case len(r.Data) > 0 && !json.Valid(r.Data):
		return errors.New("data is not valid JSON")
	case len(r.Diagnostic) > 0 && !json.Valid(r.Diagnostic):
		return errors.New("diagnostic is not valid JSON")
	}
	if _, err := spiffeid.FromString(r.Actor); err != nil {
		return fmt.Errorf("actor %q is not a SPIFFE ID: %w", clip(r.Actor), err)
	}
	for _, f := range [...]struct{ name, value string }{
		{"workgroup", r.Workgroup}, {"reason", r.Reason}, {"policy version", r.PolicyVersion},
	} {
		if !utf8.ValidString(f.value) {
			return fmt.Errorf("%s is not valid UTF-8", f.name)
		}
	}
	return nil
}

// ValidSessionID reports whether id can name a session in the audit trail: 1 to 128 of [A-Za-z0-9_-],
// which also makes it a safe NATS subject token.
func ValidSessionID(id string) bool {
	return id != "" && len(id) <= maxSessionLen && isToken(id, "_-", true)
}

func isToken(s, extra string, upper bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case upper && 'A' <= c && c <= 'Z':
		case strings.IndexByte(extra, c) >= 0:
		default:
			return false
		}
	}
	return true
}

func isHash(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// clip keeps error messages short when a field is huge or hostile.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// decode parses one encoded record and insists that it is in canonical form (the exact bytes encoding
// the decoded value gives back), so that no two byte strings decode to the same hashed record: no
// duplicate keys, no unknown fields, no alternative escapes or spacing.
func decode(b []byte) (Record, error) {
	var r Record
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("decode: %w", err)
	}
	again, err := json.Marshal(r)
	if err != nil {
		return Record{}, fmt.Errorf("re-encode: %w", err)
	}
	if !bytes.Equal(again, b) {
		return Record{}, errors.New("not in canonical encoding")
	}
	return r, nil
}

// intact checks a record on its own: valid, and its hash is the hash of its content.
func intact(r Record) error {
	if err := validate(r); err != nil {
		return broken(r.Seq, ProblemMalformed, "%v", err)
	}
	if !isHash(r.Hash) {
		return broken(r.Seq, ProblemMalformed, "hash is not a hex SHA-256")
	}
	h, err := hashOf(r)
	if err != nil {
		return broken(r.Seq, ProblemMalformed, "%v", err)
	}
	if h != r.Hash {
		return broken(r.Seq, ProblemHash, "stored %.16s..., computed %.16s...", r.Hash, h)
	}
	return nil
}

// chain follows a chain record by record: expect(seq) before looking at a record, link(r) once it is
// known to be intact, finish() at the end.
//
// A chain may start after record 1 when the records before were archived: its first record then links to
// the archived head (base, baseHash), and the chain must hold an audit.archived record naming that head.
// Without one, the missing beginning is a truncation.
type chain struct {
	records  int
	seq      uint64
	hash     string
	base     uint64
	baseHash string
	archived map[uint64]string // the heads audit.archived records name
}

func (c *chain) expect(seq uint64) error {
	if c.records == 0 && c.seq == 0 && seq > 1 {
		c.base = seq - 1 // the records before were archived, or lost: finish tells which
		c.seq = c.base
	}
	want := c.seq + 1
	switch {
	case seq > want:
		return missing(want, seq-1)
	case seq < want:
		return broken(want, ProblemGap, "got seq %d where %d was expected (out of order)", seq, want)
	}
	return nil
}

func (c *chain) link(r Record) error {
	if c.records == 0 && c.base > 0 {
		c.hash, c.baseHash = r.Prev, r.Prev
		if r.Prev == "" {
			return broken(r.Seq, ProblemPrev, "first record %d has no prev, but records before it are missing", r.Seq)
		}
	}
	if r.Prev != c.hash {
		if c.seq == 0 {
			return broken(r.Seq, ProblemPrev, "first record has prev %.16s..., want empty", r.Prev)
		}
		return broken(r.Seq, ProblemPrev, "prev %.16s... is not the hash %.16s... of seq %d", r.Prev, c.hash, c.seq)
	}
	if r.Kind == KindArchived {
		a, err := ParseArchived(r)
		if err != nil {
			return err
		}
		if c.archived == nil {
			c.archived = map[uint64]string{}
		}
		c.archived[a.Seq] = a.Hash
	}
	c.records++
	c.seq, c.hash = r.Seq, r.Hash
	return nil
}

// finish checks that a chain starting after record 1 says why: an audit.archived record names the record
// right before its first.
func (c *chain) finish() error {
	if c.base == 0 {
		return nil
	}
	if h, ok := c.archived[c.base]; !ok || h != c.baseHash {
		return broken(1, ProblemGap, "records 1 to %d missing, and no audit.archived record names record %d with the hash the first record links to: the trail was truncated, not archived",
			c.base, c.base)
	}
	return nil
}

// VerifyRecords checks a complete chain, as Export writes it without a filter: sequences 1, 2, 3, ...,
// each record intact and linked to the one before; or, after an archive, sequences from the one after the
// archived head, the first linked to it, and an audit.archived record naming it. The error, if any, wraps ErrBroken and names the
// first break. An empty list is a valid (empty) chain.
func VerifyRecords(rs []Record) error {
	var c chain
	for _, r := range rs {
		if err := c.expect(r.Seq); err != nil {
			return err
		}
		if err := intact(r); err != nil {
			return err
		}
		if err := c.link(r); err != nil {
			return err
		}
	}
	return c.finish()
}
