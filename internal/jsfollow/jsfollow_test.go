package jsfollow_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/jsfollow"
	"github.com/umbra-mesh/umbra/internal/natsd/natsdtest"
)

// TestReader: a Reader reads from its start in order, then what is stored after; when its consumer disappears
// from under it (as with the server holding it), Next fails within a few heartbeats instead of waiting, and a
// Reader opened from where it stopped goes on with nothing skipped or repeated.
func TestReader(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	js := natsdtest.Connect(t, natsdtest.Start(t), "jsfollow")
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "FOLLOW", Subjects: []string{"follow.>"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := jsfollow.Check(ctx, js); err != nil {
		t.Fatalf("check: %v", err)
	}
	publish := func(from, to int) {
		for i := from; i <= to; i++ {
			if _, err := js.Publish(ctx, "follow.x", []byte(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(1, 5)
	rd, err := jsfollow.Open(ctx, js, stream, jsfollow.Config{StartSeq: 3, Heartbeat: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	next := func(rd *jsfollow.Reader, want int) {
		t.Helper()
		nctx, ncancel := context.WithTimeout(ctx, 5*time.Second)
		defer ncancel()
		m, err := rd.Next(nctx)
		if err != nil || string(m.Data()) != fmt.Sprint(want) {
			t.Fatalf("next: %v, %v; want %d", m, err, want)
		}
	}
	next(rd, 3)
	next(rd, 4)
	next(rd, 5)
	publish(6, 6)
	next(rd, 6)

	names := stream.ConsumerNames(ctx)
	for name := range names.Name() {
		if err := stream.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	publish(7, 7)
	began := time.Now()
	if _, err := rd.Next(ctx); err == nil {
		t.Fatal("read on after the consumer was removed")
	} else if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("Next failed after %s (%v), want within a few heartbeats of 500 ms", took, err)
	} else {
		t.Logf("the lost consumer reported after %s: %v", took.Round(time.Millisecond), err)
	}
	rd.Stop(ctx)
	again, err := jsfollow.Open(ctx, js, stream, jsfollow.Config{StartSeq: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Stop(ctx)
	next(again, 7)
	info, err := stream.Info(ctx)
	if err != nil || info.State.Consumers != 1 {
		t.Fatalf("consumers on the stream: %v (%v), want the open Reader's only", info.State.Consumers, err)
	}
}
