package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// errNotFound is returned by table reads of absent keys.
var errNotFound = errors.New("not found")

// table is one aggregate's records as JSON in a JetStream KV bucket, with optimistic concurrency on update.
type table[T any] struct {
	kv jetstream.KeyValue
}

func openTable[T any](ctx context.Context, js jetstream.JetStream, bucket string) (table[T], error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, History: 5, Storage: jetstream.FileStorage})
	if err != nil {
		return table[T]{}, fmt.Errorf("bucket %s: %w", bucket, err)
	}
	return table[T]{kv: kv}, nil
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

// update applies fn under optimistic concurrency, retrying when another writer got there first.
func (t table[T]) update(ctx context.Context, key string, fn func(*T) error) (T, error) {
	for range 20 {
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

// all returns every record in the bucket.
func (t table[T]) all(ctx context.Context) ([]T, error) {
	lister, err := t.kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []T
	for key := range lister.Keys() {
		v, _, err := t.get(ctx, key)
		if errors.Is(err, errNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
