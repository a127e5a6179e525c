// Package kv keeps the gateway's JSON records (tool pins, call approvals) in a key-value bucket: a JetStream KV
// bucket when the gateway has one, so that several gateway replicas share them and they survive restarts, or
// memory in tests and single-process use. Updates are compare-and-set, so concurrent writers never lose one
// another's changes.
package kv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotFound is returned for absent keys.
var ErrNotFound = errors.New("kv: not found")

// errConflict reports a lost compare-and-set race.
var errConflict = errors.New("kv: conflict")

// Bucket is the part of a key-value store the gateway needs.
type Bucket interface {
	// Get returns the value and revision of key, or ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, uint64, error)
	// Set stores value under key if its revision is still rev (0: the key must not exist).
	Set(ctx context.Context, key string, value []byte, rev uint64) error
	// Keys lists every key.
	Keys(ctx context.Context) ([]string, error)
	// Delete removes key; removing an absent key is not an error.
	Delete(ctx context.Context, key string) error
}

// Memory returns an empty bucket held in memory.
func Memory() Bucket { return &memory{m: make(map[string]memEntry)} }

type memEntry struct {
	val []byte
	rev uint64
}

type memory struct {
	mu  sync.Mutex
	m   map[string]memEntry
	rev uint64
}

func (b *memory) Get(_ context.Context, key string) ([]byte, uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.m[key]
	if !ok {
		return nil, 0, ErrNotFound
	}
	return slices.Clone(e.val), e.rev, nil
}

func (b *memory) Set(_ context.Context, key string, value []byte, rev uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m[key].rev != rev {
		return errConflict
	}
	b.rev++
	b.m[key] = memEntry{slices.Clone(value), b.rev}
	return nil
}

func (b *memory) Delete(_ context.Context, key string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.m, key)
	return nil
}

func (b *memory) Keys(context.Context) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keys := make([]string, 0, len(b.m))
	for k := range b.m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, nil
}

// JetStream opens (creating if needed) the KV bucket name.
func JetStream(ctx context.Context, js jetstream.JetStream, name string) (Bucket, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, History: 5, Storage: jetstream.FileStorage})
	if err != nil {
		return nil, fmt.Errorf("kv: bucket %s: %w", name, err)
	}
	return jsBucket{kv}, nil
}

type jsBucket struct{ kv jetstream.KeyValue }

func (b jsBucket) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	e, err := b.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, err
	}
	return e.Value(), e.Revision(), nil
}

func (b jsBucket) Set(ctx context.Context, key string, value []byte, rev uint64) error {
	var err error
	if rev == 0 {
		_, err = b.kv.Create(ctx, key, value)
	} else {
		_, err = b.kv.Update(ctx, key, value, rev)
	}
	var apiErr *jetstream.APIError
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return errConflict
	}
	return err
}

func (b jsBucket) Delete(ctx context.Context, key string) error {
	err := b.kv.Delete(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	return err
}

func (b jsBucket) Keys(ctx context.Context) ([]string, error) {
	keys, err := b.kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	return keys, err
}

// Table stores values of one type as JSON in a bucket.
type Table[T any] struct{ B Bucket }

// Get returns the value under key, or ErrNotFound.
func (t Table[T]) Get(ctx context.Context, key string) (T, error) {
	v, _, err := t.get(ctx, key)
	return v, err
}

func (t Table[T]) get(ctx context.Context, key string) (T, uint64, error) {
	var v T
	b, rev, err := t.B.Get(ctx, key)
	if err != nil {
		return v, 0, err
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, 0, fmt.Errorf("kv: record %s: %w", key, err)
	}
	return v, rev, nil
}

// Update applies fn to the value under key (the zero value and exists=false if absent) and stores the result,
// retrying when another writer changed the key in between. An error from fn aborts without storing.
func (t Table[T]) Update(ctx context.Context, key string, fn func(v *T, exists bool) error) (T, error) {
	for range 32 {
		v, rev, err := t.get(ctx, key)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return v, err
		}
		if err := fn(&v, rev != 0); err != nil {
			return v, err
		}
		b, err := json.Marshal(v)
		if err != nil {
			return v, fmt.Errorf("kv: encode %s: %w", key, err)
		}
		err = t.B.Set(ctx, key, b, rev)
		if errors.Is(err, errConflict) {
			continue
		}
		return v, err
	}
	var zero T
	return zero, fmt.Errorf("kv: record %s: too many concurrent updates", key)
}

// Delete removes the value under key.
func (t Table[T]) Delete(ctx context.Context, key string) error { return t.B.Delete(ctx, key) }

// All returns every value in the bucket, in key order.
func (t Table[T]) All(ctx context.Context) ([]T, error) {
	keys, err := t.B.Keys(ctx)
	if err != nil {
		return nil, err
	}
	slices.Sort(keys)
	out := make([]T, 0, len(keys))
	for _, k := range keys {
		v, _, err := t.get(ctx, k)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
