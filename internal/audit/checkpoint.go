package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// KindCheckpoint is the kind of a signed checkpoint record. Its Data is a Checkpoint.
const KindCheckpoint = "audit.checkpoint"

// checkpointDomain opens every signed checkpoint message, so that a checkpoint signature cannot be taken for a
// signature over anything else, nor for another version of this format.
const checkpointDomain = "umbra-audit-checkpoint/v1"

// Errors of anchored verification, besides the chain's own ErrBroken.
var (
	// ErrCheckpoint reports a checkpoint record that does not verify: malformed, signed with another key, a
	// bad signature, or a covered record whose hash is not the one signed.
	ErrCheckpoint = errors.New("audit: checkpoint does not verify")
	// ErrAnchor reports that the chain no longer holds a record a verifier kept from an earlier verification:
	// it was truncated, rolled back to an older copy or rewritten.
	ErrAnchor = errors.New("audit: kept checkpoint not in the chain")
	// ErrUnanchored reports a chain with no checkpoint where one was required.
	ErrUnanchored = errors.New("audit: no checkpoint in the chain")
)

// Checkpoint is the data of an audit.checkpoint record: the controller's signed statement that the record at
// Seq has hash Hash. Sig is an Ed25519 signature over CheckpointMessage(Seq, Hash, Time, KeyID).
type Checkpoint struct {
	Seq   uint64    `json:"seq"`
	Hash  string    `json:"hash"`
	Time  time.Time `json:"time"`   // the controller's clock when it signed, UTC, microseconds
	KeyID string    `json:"key_id"` // KeyID of the signing key
	Sig   []byte    `json:"sig"`    // base64 in JSON
}

// CheckpointMessage is the byte string a checkpoint signature covers, one field a line with no trailing
// newline:
//
//	umbra-audit-checkpoint/v1
//	<seq, decimal>
//	<hash, 64 lower-case hex digits>
//	<time, RFC 3339 in UTC with up to 9 fractional digits, as time.RFC3339Nano formats it>
//	<key id>
func CheckpointMessage(seq uint64, hash string, t time.Time, keyID string) []byte {
	return []byte(strings.Join([]string{checkpointDomain, strconv.FormatUint(seq, 10), hash,
		t.UTC().Format(time.RFC3339Nano), keyID}, "\n"))
}

// KeyID names a checkpoint key: the first 16 hex digits of the SHA-256 of the raw 32-byte public key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// SignCheckpoint signs the statement that the record at seq has hash h, made at t.
func SignCheckpoint(key ed25519.PrivateKey, seq uint64, h string, t time.Time) Checkpoint {
	id := KeyID(key.Public().(ed25519.PublicKey))
	t = t.UTC().Truncate(time.Microsecond)
	return Checkpoint{Seq: seq, Hash: h, Time: t, KeyID: id, Sig: ed25519.Sign(key, CheckpointMessage(seq, h, t, id))}
}

// Verify checks c's signature with pub.
func (c Checkpoint) Verify(pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: public key is %d bytes, want %d", ErrCheckpoint, len(pub), ed25519.PublicKeySize)
	}
	if id := KeyID(pub); c.KeyID != id {
		return fmt.Errorf("%w: signed with key %q, not with the given key %s", ErrCheckpoint, clip(c.KeyID), id)
	}
	if !isHash(c.Hash) {
		return fmt.Errorf("%w: hash is not a hex SHA-256", ErrCheckpoint)
	}
	if !ed25519.Verify(pub, CheckpointMessage(c.Seq, c.Hash, c.Time, c.KeyID), c.Sig) {
		return fmt.Errorf("%w: bad signature over seq %d", ErrCheckpoint, c.Seq)
	}
	return nil
}

// ParseCheckpoint reads the checkpoint a record of KindCheckpoint carries.
func ParseCheckpoint(r Record) (Checkpoint, error) {
	if r.Kind != KindCheckpoint {
		return Checkpoint{}, fmt.Errorf("%w: record %d is a %q record", ErrCheckpoint, r.Seq, clip(r.Kind))
	}
	var c Checkpoint
	dec := json.NewDecoder(bytes.NewReader(r.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: record %d: %v", ErrCheckpoint, r.Seq, err)
	}
	return c, nil
}

// PublicKeyPEM encodes a checkpoint public key as a PEM "PUBLIC KEY" block (PKIX, as openssl writes it).
func PublicKeyPEM(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("audit: encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePublicKeyPEM reads the first PEM "PUBLIC KEY" block of b, which must hold an Ed25519 key.
func ParsePublicKeyPEM(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("audit: no PEM \"PUBLIC KEY\" block; give the key `umbra audit key` prints")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("audit: public key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("audit: public key is a %T, want Ed25519", k)
	}
	return pub, nil
}

// Anchor is a record a verifier kept from an earlier verification, usually the last checkpoint it verified:
// the chain must still hold a record at Seq with hash Hash. Its text form is "SEQ:HASH".
type Anchor struct {
	Seq  uint64
	Hash string
}

// ParseAnchor reads "SEQ:HASH" as String writes it.
func ParseAnchor(s string) (Anchor, error) {
	seq, h, ok := strings.Cut(s, ":")
	n, err := strconv.ParseUint(seq, 10, 64)
	if !ok || err != nil || n == 0 || !isHash(h) {
		return Anchor{}, fmt.Errorf("audit: anchor %q: want SEQ:HASH, a sequence above 0 and 64 lower-case hex digits, as the last verification printed", clip(s))
	}
	return Anchor{Seq: n, Hash: h}, nil
}

func (a Anchor) String() string { return strconv.FormatUint(a.Seq, 10) + ":" + a.Hash }

// AnchorOptions says what VerifyAnchored requires beyond an intact chain.
type AnchorOptions struct {
	// After lists records kept from earlier verifications that the chain must still hold.
	After []Anchor
	// RequireCheckpoint fails a chain that holds no checkpoint at all. Without it such a chain verifies and
	// the report says it is unanchored.
	RequireCheckpoint bool
}

// AnchorReport summarises an anchored verification.
type AnchorReport struct {
	Report
	Checkpoints int
	// Last is the last checkpoint verified (zero when there is none), and LastAt the sequence of the record
	// that carries it. Records after Last.Seq are covered by no signature: keep Last, as an Anchor, for the
	// next verification.
	Last   Checkpoint
	LastAt uint64
}

// Unanchored is how many records of the chain no verified checkpoint covers.
func (r AnchorReport) Unanchored() uint64 { return r.LastSeq - r.Last.Seq }

// VerifyAnchored checks a complete exported chain offline: VerifyRecords, then every checkpoint record's
// signature with pub and that the record at each checkpoint's Seq has the hash signed, then that the chain
// holds every anchor of opts. Errors wrap ErrBroken, ErrCheckpoint, ErrAnchor or ErrUnanchored.
func VerifyAnchored(rs []Record, pub ed25519.PublicKey, opts AnchorOptions) (AnchorReport, error) {
	if err := VerifyRecords(rs); err != nil {
		return AnchorReport{}, err
	}
	// VerifyRecords proved rs[i].Seq == first+i.
	var first uint64
	if len(rs) > 0 {
		first = rs[0].Seq
	}
	a := newAnchorCheck(pub, opts, func(seq uint64) (string, error) { return rs[seq-first].Hash, nil })
	for _, r := range rs {
		if err := a.add(r); err != nil {
			return AnchorReport{}, err
		}
	}
	return a.finish()
}

// anchorCheck follows a verified chain record by record and checks its checkpoints and anchors.
type anchorCheck struct {
	pub    ed25519.PublicKey
	opts   AnchorOptions
	hashAt func(seq uint64) (string, error) // the hash of an earlier record of the chain
	rep    AnchorReport
	// base and baseHash are the archived head a chain that starts after record 1 links to.
	base     uint64
	baseHash string
}

func newAnchorCheck(pub ed25519.PublicKey, opts AnchorOptions, hashAt func(uint64) (string, error)) *anchorCheck {
	return &anchorCheck{pub: pub, opts: opts, hashAt: hashAt}
}

// add takes the next record of the chain, already known to be intact and linked.
func (a *anchorCheck) add(r Record) error {
	if a.rep.Records == 0 && r.Seq > 1 {
		a.base, a.baseHash = r.Seq-1, r.Prev
		a.rep.LastSeq, a.rep.LastHash = a.base, a.baseHash
	}
	prevSeq, prevHash := a.rep.LastSeq, a.rep.LastHash
	a.rep.Records++
	a.rep.LastSeq, a.rep.LastHash = r.Seq, r.Hash
	for _, k := range a.opts.After {
		if k.Seq == r.Seq && k.Hash != r.Hash {
			return fmt.Errorf("%w: record %d has hash %.16s..., the kept checkpoint says %.16s...: the chain was rewritten or rolled back",
				ErrAnchor, r.Seq, r.Hash, k.Hash)
		}
	}
	if r.Kind != KindCheckpoint {
		return nil
	}
	c, err := ParseCheckpoint(r)
	if err != nil {
		return err
	}
	if err := c.Verify(a.pub); err != nil {
		return fmt.Errorf("record %d: %w", r.Seq, err)
	}
	if c.Seq == 0 || c.Seq >= r.Seq {
		return fmt.Errorf("%w: record %d covers seq %d, which does not come before it", ErrCheckpoint, r.Seq, c.Seq)
	}
	h := prevHash
	switch {
	case c.Seq == prevSeq:
	case c.Seq == a.base:
		h = a.baseHash
	case c.Seq < a.base:
		// It covers an archived record: its signature is checked, the record is the archive's to check.
		h = c.Hash
	default:
		if h, err = a.hashAt(c.Seq); err != nil {
			return err
		}
	}
	if h != c.Hash {
		return fmt.Errorf("%w: record %d signs hash %.16s... for seq %d, which has %.16s...", ErrCheckpoint, r.Seq, c.Hash, c.Seq, h)
	}
	a.rep.Checkpoints++
	a.rep.Last, a.rep.LastAt = c, r.Seq
	return nil
}

func (a *anchorCheck) finish() (AnchorReport, error) {
	for _, k := range a.opts.After {
		switch {
		case k.Seq == a.base && k.Hash != a.baseHash:
			return AnchorReport{}, fmt.Errorf("%w: the trail starts after record %d with hash %.16s..., the kept checkpoint says %.16s...: the chain was rewritten or rolled back",
				ErrAnchor, a.base, a.baseHash, k.Hash)
		case k.Seq < a.base:
			return AnchorReport{}, fmt.Errorf("%w: the kept checkpoint %d is in the archived part of the trail (records up to %d): verify the archive export and this one together (--file OLD --file NEW)",
				ErrAnchor, k.Seq, a.base)
		}
	}
	for _, k := range a.opts.After {
		if k.Seq > a.rep.LastSeq {
			return AnchorReport{}, fmt.Errorf("%w: the chain ends at seq %d, before the kept checkpoint %d: it was truncated or rolled back",
				ErrAnchor, a.rep.LastSeq, k.Seq)
		}
	}
	if a.opts.RequireCheckpoint && a.rep.Checkpoints == 0 {
		return AnchorReport{}, fmt.Errorf("%w: %d records and no signed checkpoint; export from the controller, which signs one", ErrUnanchored, a.rep.Records)
	}
	return a.rep, nil
}

// VerifyAnchored is Verify with the checks of the package-level VerifyAnchored: every checkpoint in the stream
// verifies with pub and the stream still holds every anchor of opts.
func (l *Log) VerifyAnchored(ctx context.Context, pub ed25519.PublicKey, opts AnchorOptions) (AnchorReport, error) {
	var c chain
	a := newAnchorCheck(pub, opts, func(seq uint64) (string, error) { return l.hashAt(ctx, seq) })
	last, err := l.walk(ctx, "", func(seq uint64, subject string, data []byte) error {
		if err := c.expect(seq); err != nil {
			return err
		}
		r, err := l.check(seq, subject, data)
		if err != nil {
			return err
		}
		if err := c.link(r); err != nil {
			return err
		}
		return a.add(r)
	})
	if err == nil && last > c.seq {
		err = missing(c.seq+1, last)
	}
	if err == nil {
		err = c.finish()
	}
	if err != nil {
		return AnchorReport{}, err
	}
	return a.finish()
}

// hashAt reads the hash of the stored record seq.
func (l *Log) hashAt(ctx context.Context, seq uint64) (string, error) {
	msg, err := l.stream.GetMsg(ctx, seq)
	if err != nil {
		return "", fmt.Errorf("audit: load record %d: %w", seq, err)
	}
	r, err := l.check(msg.Sequence, msg.Subject, msg.Data)
	if err != nil {
		return "", err
	}
	return r.Hash, nil
}

// AppendCheckpoint signs the chain's head with key and appends the checkpoint as the record right after it,
// with actor as its Actor. It returns false, and appends nothing, when the chain is empty or its last record
// is already a checkpoint: nothing new to cover.
func (l *Log) AppendCheckpoint(ctx context.Context, actor string, key ed25519.PrivateKey) (Record, bool, error) {
	r, ok, _, err := l.appendWith(ctx, "", func(prevSeq uint64, prevHash, prevKind string) (Record, bool, error) {
		if prevSeq == 0 || prevKind == KindCheckpoint {
			return Record{}, false, nil
		}
		c := SignCheckpoint(key, prevSeq, prevHash, time.Now())
		data, err := json.Marshal(c)
		if err != nil {
			return Record{}, false, fmt.Errorf("audit: encode checkpoint: %w", err)
		}
		return Record{Time: c.Time, Kind: KindCheckpoint, Actor: actor, Data: data}, true, nil
	})
	return r, ok, err
}
