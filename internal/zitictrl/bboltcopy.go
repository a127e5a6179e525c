package zitictrl

import (
	"bytes"
	"fmt"
	"reflect"
	"unsafe"

	"github.com/openziti/storage/boltz"
	"github.com/openziti/ziti/controller/db"
)

// OpenZiti v1.7.2 keeps byte slices read from bbolt past the transaction that read them: a terminator's
// InstanceSecret and PeerData values (terminatorStoreImpl.FillEntity) and an eventual event's Data
// (eventualEventStoreImpl.FillEntity). Those slices point into bbolt's memory map, which is unmapped when the
// database file grows (a later read faults: the controller dies with SIGSEGV encoding a create-circuit
// response) and whose pages are reused by later transactions (a later read sees other data). Upstream fixed it
// by copying the values at load time (openziti/ziti issue 4108); no fixed release is available here, so the
// controller does the same copy around the stores' own loading code. docs/overlay-reliability.md explains the
// choice.

// detachFromBbolt makes the terminator and eventual-event stores copy the values they keep out of bbolt memory
// as they load an entity. It must run before the controller starts using its stores. It fails, rather than
// starting a controller that can crash, if the stores are not laid out as this code expects.
func detachFromBbolt(stores *db.Stores) error {
	if stores == nil {
		return fmt.Errorf("zitictrl: detach stored values: no stores")
	}
	if err := copyOnLoad(stores.Terminator, detachTerminator); err != nil {
		return fmt.Errorf("zitictrl: detach terminator values: %w", err)
	}
	if err := copyOnLoad(stores.EventualEvent, detachEventualEvent); err != nil {
		return fmt.Errorf("zitictrl: detach eventual event values: %w", err)
	}
	return nil
}

func detachTerminator(t *db.Terminator) {
	t.InstanceSecret = bytes.Clone(t.InstanceSecret)
	for k, v := range t.PeerData {
		t.PeerData[k] = bytes.Clone(v)
	}
}

func detachEventualEvent(e *db.EventualEvent) {
	e.Data = bytes.Clone(e.Data)
}

// detaching wraps a store's entity strategy: it loads as before, then detaches the retained values.
type detaching[E boltz.Entity] struct {
	boltz.EntityStrategy[E]
	detach func(E)
}

func (d detaching[E]) FillEntity(entity E, bucket *boltz.TypedBucket) {
	d.EntityStrategy.FillEntity(entity, bucket)
	d.detach(entity)
}

// copyOnLoad replaces the entity strategy of the boltz.BaseStore inside store with one that detaches. Every
// load path of a boltz store (LoadEntity, FindById, LoadById) calls that strategy's FillEntity, and nothing
// else in OpenZiti calls these two stores' FillEntity directly.
func copyOnLoad[E boltz.Entity](store any, detach func(E)) error {
	base, ok := findEmbedded(reflect.ValueOf(store), reflect.TypeFor[*boltz.BaseStore[E]](), 4)
	if !ok || base.IsNil() {
		return fmt.Errorf("no %v inside %T", reflect.TypeFor[*boltz.BaseStore[E]](), store)
	}
	field := base.Elem().FieldByName("entityStrategy")
	if !field.IsValid() || field.Type() != reflect.TypeFor[boltz.EntityStrategy[E]]() || !field.CanAddr() {
		return fmt.Errorf("%v has no entityStrategy field of the expected type", base.Type())
	}
	strategy := (*boltz.EntityStrategy[E])(unsafe.Pointer(field.UnsafeAddr()))
	if *strategy == nil {
		return fmt.Errorf("%v has no entity strategy yet", base.Type())
	}
	if _, done := (*strategy).(detaching[E]); done {
		return nil
	}
	*strategy = detaching[E]{EntityStrategy: *strategy, detach: detach}
	return nil
}

// findEmbedded looks for a value of type want among v's embedded fields, through pointers, depth levels deep.
func findEmbedded(v reflect.Value, want reflect.Type, depth int) (reflect.Value, bool) {
	for v.Kind() == reflect.Interface || (v.Kind() == reflect.Pointer && v.Type() != want) {
		if v.IsNil() {
			return reflect.Value{}, false
		}
		v = v.Elem()
	}
	if v.Type() == want {
		return v, true
	}
	if v.Kind() != reflect.Struct || depth == 0 {
		return reflect.Value{}, false
	}
	for i := range v.NumField() {
		if !v.Type().Field(i).Anonymous {
			continue
		}
		if found, ok := findEmbedded(v.Field(i), want, depth-1); ok {
			return found, true
		}
	}
	return reflect.Value{}, false
}
