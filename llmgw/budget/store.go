package budget

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrConflict reports that a key changed since it was read.
var ErrConflict = errors.New("budget: revision conflict")

// Store keeps usage counters. Writes are compare-and-set so that several gateways can share one store.
type Store interface {
	// Get returns a key's value and revision; a missing key has a nil value and revision 0.
	Get(ctx context.Context, key string) ([]byte, uint64, error)
	// Put writes a key if its revision is still revision (0: if it does not exist yet); ErrConflict if not.
	Put(ctx context.Context, key string, value []byte, revision uint64) (uint64, error)
	// Keys lists the keys that start with prefix.
	Keys(ctx context.Context, prefix string) ([]string, error)
}

// MemoryStore is a Store in memory; its counters end with the process.
type MemoryStore struct {
	mu   sync.Mutex
	rev  uint64
	data map[string]memEntry
}

type memEntry struct {
	value []byte
	rev   uint64
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore { return &MemoryStore{data: map[string]memEntry{}} }

// Get implements Store.
func (m *MemoryStore) Get(_ context.Context, key string) ([]byte, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.data[key]
	return slices.Clone(e.value), e.rev, nil
}

// Put implements Store.
func (m *MemoryStore) Put(_ context.Context, key string, value []byte, revision uint64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data[key].rev != revision {
		return 0, ErrConflict
	}
	m.rev++
	m.data[key] = memEntry{value: slices.Clone(value), rev: m.rev}
	return m.rev, nil
}

// Keys implements Store.
func (m *MemoryStore) Keys(_ context.Context, prefix string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for k := range m.data {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out, nil
}

// KVStore is a Store in a JetStream key-value bucket, so counters survive a restart.
type KVStore struct {
	kv jetstream.KeyValue
}

var _ Store = (*KVStore)(nil)

// DefaultBucket is the bucket NewKVStore uses when given none.
const DefaultBucket = "llmgw_usage"

// NewKVStore opens (creating if needed) the bucket.
func NewKVStore(ctx context.Context, js jetstream.JetStream, bucket string) (*KVStore, error) {
	if bucket == "" {
		bucket = DefaultBucket
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "LLM gateway usage counters",
		History:     1,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("budget: open bucket %s: %w", bucket, err)
	}
	return &KVStore{kv: kv}, nil
}

// Get implements Store.
func (s *KVStore) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("budget: get %s: %w", key, err)
	}
	return e.Value(), e.Revision(), nil
}

// Put implements Store.
func (s *KVStore) Put(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	var rev uint64
	var err error
	if revision == 0 {
		rev, err = s.kv.Create(ctx, key, value)
	} else {
		rev, err = s.kv.Update(ctx, key, value, revision)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, ErrConflict
	}
	if err != nil {
		return 0, fmt.Errorf("budget: put %s: %w", key, err)
	}
	return rev, nil
}

// Keys implements Store.
func (s *KVStore) Keys(ctx context.Context, prefix string) ([]string, error) {
	lister, err := s.kv.ListKeysFiltered(ctx, prefix+">")
	if err != nil {
		return nil, fmt.Errorf("budget: list keys: %w", err)
	}
	var out []string
	for k := range lister.Keys() {
		out = append(out, k)
	}
	slices.Sort(out)
	return out, ctx.Err()
}
