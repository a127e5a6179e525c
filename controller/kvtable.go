package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

var (
	// errNotFound is returned by table reads of absent keys.
	errNotFound = errors.New("not found")
	// errConflict is returned by put when the record changed since the revision given.
	errConflict = errors.New("record changed meanwhile")
)

// Limits of the tables' buckets. A bucket is small state (identities, workgroups, advertisements, sessions, and
// the like); the bounds stop a runaway writer long before the disk does. At the byte limit a bucket refuses new
// writes (KV buckets discard new); nothing stored is dropped, except the revisions of a key beyond tableHistory,
// which is what a history is. JetStream reserves each bucket's MaxBytes on disk when it is created, so the
// bounds are modest: sessions, kept for good once closed, get the most room (about 40,000 sessions with their
// revisions in 256 MiB), identities the next.
const (
	tableMaxBytes     = 32 << 20 // 32 MiB
	tableMaxValueSize = 1 << 20  // 1 MiB: a record, with its history of transitions or members
	tableHistory      = 5
)

// tableBytes is the byte limit of bucket.
func tableBytes(bucket string) int64 {
	switch bucket {
	case "umbra_sessions":
		return 256 << 20
	case "umbra_identities":
		return 64 << 20
	}
	return tableMaxBytes
}

// table is one aggregate's records as JSON in a JetStream KV bucket, with optimistic concurrency on update.
type table[T any] struct {
	kv jetstream.KeyValue
}

func openTable[T any](ctx context.Context, js jetstream.JetStream, bucket string) (table[T], error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, History: tableHistory,
		Storage: jetstream.FileStorage, MaxBytes: tableBytes(bucket), MaxValueSize: tableMaxValueSize})
	if err != nil {
		return table[T]{}, fmt.Errorf("bucket %s: %w", bucket, noRoom(err, tableBytes(bucket)))
	}
	return table[T]{kv: kv}, nil
}

// streamAppears bounds how long streamOf waits for a stream just created to be known where it asks.
const streamAppears = 10 * time.Second

// streamOf opens the stream name, which the caller has just created or opened (a key-value bucket's, say): in a
// cluster a server whose view of the streams is behind the meta leader's answers "stream not found" for a
// moment, and a controller that took that for the answer exited while starting (TestControllerCluster, once in a
// clean-clone CI run).
func streamOf(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, error) {
	deadline := time.Now().Add(streamAppears)
	for {
		s, err := js.Stream(ctx, name)
		if !errors.Is(err, jetstream.ErrStreamNotFound) || time.Now().After(deadline) {
			return s, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (t table[T]) get(ctx context.Context, key string) (T, uint64, error) {
	var v T
	e, err := t.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return v, 0, errNotFound
	}
	if err != nil {
		return v, 0, err
	}
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return v, 0, fmt.Errorf("record %s: %w", key, err)
	}
	return v, e.Revision(), nil
}

// create stores v under key; jetstream.ErrKeyExists if the key exists.
func (t table[T]) create(ctx context.Context, key string, v T) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = t.kv.Create(ctx, key, b)
	return err
}

// put stores v under key if the record is still at revision rev (0: if there is none), else errConflict.
func (t table[T]) put(ctx context.Context, key string, v T, rev uint64) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if rev == 0 {
		_, err = t.kv.Create(ctx, key, b)
	} else {
		_, err = t.kv.Update(ctx, key, b, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || isWrongSequence(err) {
		return errConflict
	}
	return err
}

// update applies fn under optimistic concurrency, retrying when another writer got there first. Between tries it
// waits a random while that doubles up to 64 ms, so that writers racing for one record (eight administrators'
// requests adding members to one workgroup, say) do not keep colliding, and a read served by a replica that had
// not yet applied the last write is not repeated at once.
func (t table[T]) update(ctx context.Context, key string, fn func(*T) error) (T, error) {
	for try := range 20 {
		if try > 0 {
			select {
			case <-time.After(rand.N(time.Duration(1<<min(try, 6)) * time.Millisecond)):
			case <-ctx.Done():
				var zero T
				return zero, ctx.Err()
			}
		}
		v, rev, err := t.get(ctx, key)
		if err != nil {
			return v, err
		}
		if err := fn(&v); err != nil {
			return v, err
		}
		b, err := json.Marshal(v)
		if err != nil {
			return v, err
		}
		if _, err := t.kv.Update(ctx, key, b, rev); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) || isWrongSequence(err) {
				continue
			}
			return v, err
		}
		return v, nil
	}
	var zero T
	return zero, fmt.Errorf("record %s: too many concurrent updates", key)
}

// all returns every record in the bucket. It reads them in one pass of an ordered consumer (the last revision
// of each key, values included), not a listing of the keys followed by one read per key: with 10,000
// advertisements that was 10,000 request/replies for every discovery (docs/benchmarks.md, "Scale").
func (t table[T]) all(ctx context.Context) ([]T, error) {
	w, err := t.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() {
		w.Stop()
		// The watcher's delivery may be blocked on a full channel (writes during the pass, or an early return):
		// reading it to its close lets the subscription end.
		go func() {
			for range w.Updates() {
			}
		}()
	}()
	var out []T
	at := map[string]int{} // a key written during the pass may come twice: its latest value wins
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("listing ended early")
			}
			if e == nil { // every key's last revision has been read
				return out, nil
			}
			var v T
			if err := json.Unmarshal(e.Value(), &v); err != nil {
				return nil, fmt.Errorf("record %s: %w", e.Key(), err)
			}
			if i, ok := at[e.Key()]; ok {
				out[i] = v
				continue
			}
			at[e.Key()] = len(out)
			out = append(out, v)
		}
	}
}

// errCodeInsufficientResources is JetStream's refusal of a stream whose limits it cannot reserve.
const errCodeInsufficientResources jetstream.ErrorCode = 10047

// noRoom explains JetStream's refusal to reserve a stream's byte limit on a disk that is too full.
func noRoom(err error, bytes int64) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeInsufficientResources {
		return fmt.Errorf("JetStream cannot reserve %d MiB for it (it reserves every stream's limit up front, within 75%% of the disk space free at start): free disk space: %w", bytes>>20, err)
	}
	return err
}
