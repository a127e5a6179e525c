package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// KindArchived is the kind of the record that allows the trail to start after a given record: its Data is an
// Archived. Records up to the archived head were exported, verified and kept elsewhere; a trail whose first
// record is not 1 verifies only if it holds an audit.archived record naming the record right before its first.
const KindArchived = "audit.archived"

// Errors of Archive.
var (
	// ErrPurgeDenied means the stream was created refusing purges (before archiving existed), and JetStream
	// cannot lift that: such a trail cannot be trimmed in place.
	ErrPurgeDenied = errors.New("audit: the trail refuses purges")
	// ErrNotCheckpointed means the record to archive through is not one the trail holds with the hash given,
	// or no checkpoint signed by the key covers it.
	ErrNotCheckpointed = errors.New("audit: not a checkpointed record of this trail")
	// ErrAlreadyArchived means the trail already starts after the record given.
	ErrAlreadyArchived = errors.New("audit: already archived")
)

// Archived is the data of an audit.archived record.
type Archived struct {
	// Seq and Hash name the archived head: the last record removed from the trail. The first record left
	// links to it.
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	// CheckpointSeq and CheckpointHash name the checkpoint record that signs the archived head, which the
	// export that holds it ends with.
	CheckpointSeq  uint64 `json:"checkpoint_seq"`
	CheckpointHash string `json:"checkpoint_hash"`
}

// ParseArchived reads the Archived an audit.archived record carries.
func ParseArchived(r Record) (Archived, error) {
	var a Archived
	dec := json.NewDecoder(bytes.NewReader(r.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil || a.Seq == 0 || !isHash(a.Hash) {
		return Archived{}, broken(r.Seq, ProblemMalformed, "audit.archived record does not name an archived head (seq and hash): %v", err)
	}
	return a, nil
}

// errFound stops a scan that found what it looked for.
var errFound = errors.New("found")

// Checkpointed returns the checkpoint record that signs, with pub, that the trail's record at a.Seq has hash
// a.Hash, after checking that the trail holds that record with that hash. Errors wrap ErrNotCheckpointed when
// it does not.
func (l *Log) Checkpointed(ctx context.Context, pub ed25519.PublicKey, a Anchor) (Record, error) {
	msg, err := l.stream.GetMsg(ctx, a.Seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Record{}, fmt.Errorf("%w: the trail holds no record %d", ErrNotCheckpointed, a.Seq)
	}
	if err != nil {
		return Record{}, fmt.Errorf("audit: load record %d: %w", a.Seq, err)
	}
	r, err := l.check(msg.Sequence, msg.Subject, msg.Data)
	if err != nil {
		return Record{}, err
	}
	if r.Hash != a.Hash {
		return Record{}, fmt.Errorf("%w: record %d has hash %.16s..., not %.16s...", ErrNotCheckpointed, a.Seq, r.Hash, a.Hash)
	}
	var found Record
	_, err = l.Scan(ctx, a.Seq, func(r Record) error {
		if r.Kind != KindCheckpoint {
			return nil
		}
		c, err := ParseCheckpoint(r)
		if err != nil || c.Seq != a.Seq || c.Hash != a.Hash || c.Verify(pub) != nil {
			return nil
		}
		found = r
		return errFound
	})
	switch {
	case errors.Is(err, errFound):
		return found, nil
	case err != nil:
		return Record{}, err
	}
	return Record{}, fmt.Errorf("%w: no checkpoint signed by key %s covers record %d; give the SEQ:HASH a verified export printed", ErrNotCheckpointed, KeyID(pub), a.Seq)
}

// Archive trims the trail through the record at through.Seq, which must hold the hash through.Hash and be
// covered by a checkpoint signed with pub (the one an export ends with): it appends an audit.archived record
// naming that record and its checkpoint, with actor as Actor, then purges every record up to and including it.
// The first record left then links to the archived head, and Verify accepts the trail starting there because
// the audit.archived record names it. A crash between the two steps leaves the record and the whole trail: run
// Archive again. It returns the audit.archived record.
func (l *Log) Archive(ctx context.Context, actor string, pub ed25519.PublicKey, through Anchor) (Record, error) {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return Record{}, fmt.Errorf("audit: stream info: %w", err)
	}
	if info.Config.DenyPurge {
		return Record{}, fmt.Errorf("%w: stream %s was created before archiving existed and JetStream cannot lift its ban on purges; export and keep the trail, and give the controller a new data directory or a larger limit", ErrPurgeDenied, l.name)
	}
	if first := info.State.FirstSeq; through.Seq < first {
		return Record{}, fmt.Errorf("%w: the trail starts at record %d, after %d", ErrAlreadyArchived, first, through.Seq)
	}
	cp, err := l.Checkpointed(ctx, pub, through)
	if err != nil {
		return Record{}, err
	}
	data, err := json.Marshal(Archived{Seq: through.Seq, Hash: through.Hash, CheckpointSeq: cp.Seq, CheckpointHash: cp.Hash})
	if err != nil {
		return Record{}, fmt.Errorf("audit: encode archived: %w", err)
	}
	rec, err := l.Append(ctx, Record{Kind: KindArchived, Actor: actor, Data: data,
		Reason: fmt.Sprintf("records up to %d archived", through.Seq)})
	if err != nil {
		return Record{}, err
	}
	if err := l.stream.Purge(ctx, jetstream.WithPurgeSequence(through.Seq+1)); err != nil {
		return rec, fmt.Errorf("audit: purge through %d (the audit.archived record %d is stored; archive again): %w", through.Seq, rec.Seq, err)
	}
	return rec, nil
}

// JoinExports joins exports of one trail taken at different times, oldest first, into one list: each must
// start at or before the record after the end of those before it (no gap), and the records they share must be
// the same. An export taken after an archive starts after the archived head; joined to the export that holds
// the head, the result is the whole chain from record 1. Pass the result to VerifyAnchored.
func JoinExports(lists ...[]Record) ([]Record, error) {
	var out []Record
	for i, rs := range lists {
		if len(rs) == 0 {
			continue
		}
		if len(out) == 0 {
			out = append(out, rs...)
			continue
		}
		first, last := out[0].Seq, out[len(out)-1].Seq
		if rs[0].Seq > last+1 {
			return nil, broken(last+1, ProblemGap, "file %d starts at record %d, the files before it end at %d", i+1, rs[0].Seq, last)
		}
		for _, r := range rs {
			switch {
			case r.Seq < first:
				return nil, broken(r.Seq, ProblemGap, "file %d holds record %d, before the first file's first record %d: give the files oldest first", i+1, r.Seq, first)
			case r.Seq <= last:
				if r.Seq-first >= uint64(len(out)) {
					return nil, broken(r.Seq, ProblemGap, "the files before file %d are not contiguous", i+1)
				}
				if have := out[r.Seq-first]; have.Hash != r.Hash || have.Seq != r.Seq {
					return nil, broken(r.Seq, ProblemHash, "file %d has record %d with hash %.16s..., an earlier file %.16s...", i+1, r.Seq, r.Hash, have.Hash)
				}
			default:
				out = append(out, r)
				last = r.Seq
			}
		}
	}
	return out, nil
}
