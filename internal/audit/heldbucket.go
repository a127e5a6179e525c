package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// HeldBucket keeps held records (Held) in a JetStream key-value bucket, so that they outlive the process: one key
// per record, named by the time it was held, so that keys sort in the order records were held.
type HeldBucket struct{ kv jetstream.KeyValue }

// errHeldTaken says a held record changed in the bucket since it was read: another writer sharing the bucket
// took it.
var errHeldTaken = errors.New("audit: held record taken by another writer")

// OpenHeldBucket opens (creating it if need be) the key-value bucket name in js, on file storage.
func OpenHeldBucket(ctx context.Context, js jetstream.JetStream, name string) (*HeldBucket, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, History: 1, Storage: jetstream.FileStorage,
		Description: "audit records held until the audit trail can be reached"})
	if err != nil {
		return nil, fmt.Errorf("audit: held records bucket %s: %w", name, err)
	}
	return &HeldBucket{kv: kv}, nil
}

// load returns the records in the bucket, oldest first. Those it cannot read are named in the error.
func (b *HeldBucket) load(ctx context.Context) ([]HeldRecord, error) {
	if b == nil {
		return nil, nil
	}
	// Markers of records removed by an earlier run are dropped first, so that they do not pile up.
	if err := b.kv.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(-1)); err != nil {
		return nil, fmt.Errorf("audit: held records: %w", err)
	}
	lister, err := b.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit: held records: %w", err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	if err := ctx.Err(); err != nil { // the lister stops early, without a word, when ctx ends
		return nil, fmt.Errorf("audit: held records: %w", err)
	}
	slices.Sort(keys)
	var rs []HeldRecord
	var errs []error
	for _, k := range keys {
		ent, err := b.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("held record %s: %w", k, err))
			continue
		}
		var e HeldRecord
		if err := json.Unmarshal(ent.Value(), &e); err != nil || !ValidSessionID(e.ID) {
			errs = append(errs, fmt.Errorf("held record %s is not one: %v (left in bucket %s)", k, err, b.kv.Bucket()))
			continue
		}
		e.key, e.rev = k, ent.Revision()
		rs = append(rs, e)
	}
	if err := errors.Join(errs...); err != nil {
		return rs, fmt.Errorf("audit: %w", err)
	}
	return rs, nil
}

// put writes e: a new key for a record not in the bucket yet, else an update of the revision e was read at.
func (b *HeldBucket) put(ctx context.Context, e *HeldRecord) error {
	if b == nil {
		return nil
	}
	v, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("audit: held record: %w", err)
	}
	if e.key == "" {
		key := fmt.Sprintf("%016x-%s", time.Now().UnixNano(), e.ID)
		rev, err := b.kv.Create(ctx, key, v)
		if err != nil {
			return fmt.Errorf("audit: hold record: %w", err)
		}
		e.key, e.rev = key, rev
		return nil
	}
	rev, err := b.kv.Update(ctx, e.key, v, e.rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return errHeldTaken
	}
	if err != nil {
		return fmt.Errorf("audit: held record %s: %w", e.key, err)
	}
	e.rev = rev
	return nil
}

// remove deletes e, unless another writer changed it since.
func (b *HeldBucket) remove(ctx context.Context, e *HeldRecord) error {
	if b == nil || e.key == "" {
		return nil
	}
	err := b.kv.Purge(ctx, e.key, jetstream.LastRevision(e.rev))
	if err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return fmt.Errorf("audit: held record %s stored but left in the bucket (it would be sent again as a repeat): %w", e.key, err)
	}
	return nil
}

// compact drops the markers removed records left.
func (b *HeldBucket) compact(ctx context.Context) error {
	if b == nil {
		return nil
	}
	if err := b.kv.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(-1)); err != nil {
		return fmt.Errorf("audit: held records: %w", err)
	}
	return nil
}
