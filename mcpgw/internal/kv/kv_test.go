package kv

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/natsd"
)

type rec struct {
	N int `json:"n"`
}

func buckets(t *testing.T) map[string]Bucket {
	t.Helper()
	srv, err := natsd.Start(natsd.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect("kv-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := JetStream(context.Background(), js, "mcpgw_test")
	if err != nil {
		t.Fatal(err)
	}
	return map[string]Bucket{"memory": Memory(), "jetstream": b}
}

func TestTable(t *testing.T) {
	ctx := context.Background()
	for name, b := range buckets(t) {
		t.Run(name, func(t *testing.T) {
			tab := Table[rec]{b}
			if _, err := tab.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get absent = %v, want ErrNotFound", err)
			}
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := tab.Update(ctx, "a", func(r *rec, _ bool) error { r.N++; return nil }); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			got, err := tab.Get(ctx, "a")
			if err != nil || got.N != 8 {
				t.Fatalf("after 8 concurrent increments: %+v, %v", got, err)
			}
			boom := errors.New("boom")
			if _, err := tab.Update(ctx, "b", func(*rec, bool) error { return boom }); !errors.Is(err, boom) {
				t.Fatalf("Update error = %v", err)
			}
			if _, err := tab.Get(ctx, "b"); !errors.Is(err, ErrNotFound) {
				t.Fatal("a failed update stored a record")
			}
			if _, err := tab.Update(ctx, "c", func(r *rec, exists bool) error {
				if exists {
					t.Error("new key reported as existing")
				}
				r.N = 3
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			all, err := tab.All(ctx)
			if err != nil || len(all) != 2 || all[0].N != 8 || all[1].N != 3 {
				t.Fatalf("All = %+v, %v", all, err)
			}
		})
	}
}
