package zitictrl

import (
	"bytes"
	"fmt"
	"path/filepath"
	"runtime/debug"
	"testing"

	"github.com/openziti/storage/boltz"
	"github.com/openziti/ziti/controller/command"
	"github.com/openziti/ziti/controller/db"
	"github.com/openziti/ziti/controller/xt"
	"github.com/openziti/ziti/controller/xt_smartrouting"
	"go.etcd.io/bbolt"
)

// openStores opens a fresh OpenZiti controller database with its stores, as the embedded controller does.
func openStores(t *testing.T) (boltz.Db, *db.Stores) {
	t.Helper()
	// Terminators of a service need its terminator strategy to be known (the controller registers it at start).
	xt.GlobalRegistry().RegisterFactory(xt_smartrouting.NewFactory())
	d, err := db.Open(filepath.Join(t.TempDir(), "ctrl.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	stores, err := db.InitStores(d, command.NoOpRateLimiter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d, stores
}

var (
	secret   = []byte("instance-secret-0123456789")
	peerData = map[uint32][]byte{1: bytes.Repeat([]byte{0xA5}, 64), 7: []byte("public-key-material")}
)

// cachedTerminator creates a terminator with peer data and an instance secret and loads it back in a read
// transaction, as the controller does before caching it.
func cachedTerminator(t *testing.T, d boltz.Db, stores *db.Stores) *db.Terminator {
	t.Helper()
	svc := &db.Service{BaseExtEntity: boltz.BaseExtEntity{Id: "svc"}, Name: "svc"}
	rtr := &db.Router{BaseExtEntity: boltz.BaseExtEntity{Id: "rtr"}, Name: "rtr"}
	term := &db.Terminator{BaseExtEntity: boltz.BaseExtEntity{Id: "term"}, Service: "svc", Router: "rtr",
		Binding: "edge", Address: "hosted:svc", InstanceSecret: secret, PeerData: peerData}
	err := d.Update(nil, func(ctx boltz.MutateContext) error {
		if err := stores.Service.Create(ctx, svc); err != nil {
			return err
		}
		if err := stores.Router.Create(ctx, rtr); err != nil {
			return err
		}
		return stores.Terminator.Create(ctx, term)
	})
	if err != nil {
		t.Fatal(err)
	}
	var loaded *db.Terminator
	err = d.View(func(tx *bbolt.Tx) error {
		loaded, err = stores.Terminator.LoadById(tx, "term")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return loaded
}

// growPastRemap writes enough to the database that bbolt remaps its file and reuses freed pages.
func growPastRemap(t *testing.T, d boltz.Db) {
	t.Helper()
	for i := range 48 {
		err := d.Update(nil, func(ctx boltz.MutateContext) error {
			b, err := ctx.Tx().CreateBucketIfNotExists([]byte("filler"))
			if err != nil {
				return err
			}
			// Overwrite earlier keys as well, so pages freed by earlier transactions are written again.
			if err := b.Put([]byte(fmt.Sprint(i%8)), bytes.Repeat([]byte{byte(i)}, 1<<20)); err != nil {
				return err
			}
			return b.Put([]byte(fmt.Sprint("grow", i)), bytes.Repeat([]byte{0x5A}, 1<<20))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// intact reads the terminator's retained values the way a create-circuit response encodes them, turning a
// memory fault into an error instead of a crash.
func intact(term *db.Terminator) (ok bool, fault error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			fault = fmt.Errorf("%v", r)
		}
	}()
	if !bytes.Equal(term.InstanceSecret, secret) {
		return false, nil
	}
	for k, want := range peerData {
		if !bytes.Equal(term.PeerData[k], want) {
			return false, nil
		}
	}
	return true, nil
}

// TestUnpatchedStoreRetainsBboltMemory reproduces the upstream fault on the unfixed code path: a terminator
// loaded by OpenZiti's own store keeps pointers into bbolt's memory map, and after the database grows those
// values fault or read other data. If this test starts failing, OpenZiti no longer has the bug and the
// detaching wrapper can go.
func TestUnpatchedStoreRetainsBboltMemory(t *testing.T) {
	d, stores := openStores(t)
	term := cachedTerminator(t, d, stores)
	if ok, fault := intact(term); !ok || fault != nil {
		t.Fatalf("freshly loaded terminator unreadable: intact=%v fault=%v", ok, fault)
	}
	growPastRemap(t, d)
	ok, fault := intact(term)
	if ok {
		t.Fatal("a terminator loaded by the unpatched store survived a database remap intact: upstream may have fixed the bug")
	}
	t.Logf("unpatched store: retained values after remap: fault=%v (no fault means the bytes changed)", fault)
}

// TestDetachedStoreSurvivesRemap is the regression test for the fix: with the stores patched, the same
// sequence leaves the cached terminator intact, and eventual events keep their data too.
func TestDetachedStoreSurvivesRemap(t *testing.T) {
	d, stores := openStores(t)
	if err := detachFromBbolt(stores); err != nil {
		t.Fatal(err)
	}
	// Patching twice is harmless (a restart path may call it again).
	if err := detachFromBbolt(stores); err != nil {
		t.Fatal(err)
	}
	if _, ok := stores.Terminator.GetEntityStrategy().(detaching[*db.Terminator]); !ok {
		t.Fatalf("terminator store strategy is %T, want the detaching wrapper", stores.Terminator.GetEntityStrategy())
	}
	if _, ok := stores.EventualEvent.GetEntityStrategy().(detaching[*db.EventualEvent]); !ok {
		t.Fatalf("eventual event store strategy is %T, want the detaching wrapper", stores.EventualEvent.GetEntityStrategy())
	}
	term := cachedTerminator(t, d, stores)
	event := &db.EventualEvent{BaseExtEntity: boltz.BaseExtEntity{Id: "ev"}, Type: "test", Data: []byte("event-data")}
	if err := d.Update(nil, func(ctx boltz.MutateContext) error { return stores.EventualEvent.Create(ctx, event) }); err != nil {
		t.Fatal(err)
	}
	var loadedEvent *db.EventualEvent
	if err := d.View(func(tx *bbolt.Tx) (err error) {
		loadedEvent, err = stores.EventualEvent.LoadById(tx, "ev")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	growPastRemap(t, d)
	if ok, fault := intact(term); !ok || fault != nil {
		t.Fatalf("patched store: cached terminator damaged by a remap: intact=%v fault=%v", ok, fault)
	}
	if string(loadedEvent.Data) != "event-data" {
		t.Fatalf("patched store: eventual event data changed to %q", loadedEvent.Data)
	}
}

func TestDetachRefusesUnexpectedLayout(t *testing.T) {
	if err := copyOnLoad(struct{ X int }{}, detachTerminator); err == nil {
		t.Fatal("patching a value with no base store succeeded")
	}
	if err := detachFromBbolt(nil); err == nil {
		t.Fatal("patching nil stores succeeded")
	}
}
