package jsbatch

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/natsd"
)

// TestPublish stores a batch whole, then has a batch refused by one message's expected sequence: nothing of it
// is stored, and its messages can be published again on their own once stripped.
func TestPublish(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := natsd.Start(natsd.Config{StoreDir: t.TempDir(), SyncAlways: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := srv.Connect("jsbatch")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "B", Subjects: []string{"b.>"}, AllowAtomicPublish: true})
	if err != nil {
		t.Fatal(err)
	}
	batch := func(subjects ...string) []*nats.Msg {
		var out []*nats.Msg
		for _, s := range subjects {
			out = append(out, &nats.Msg{Subject: s, Data: []byte(s)})
		}
		return out
	}
	last, err := Publish(ctx, nc, "B", batch("b.1", "b.2", "b.3"))
	if err != nil || last != 3 {
		t.Fatalf("a batch of 3: last %d, %v", last, err)
	}
	refused := batch("b.4", "b.5")
	refused[1].Header = nats.Header{}
	refused[1].Header.Set(jetstream.ExpectedLastSubjSeqHeader, "99")
	_, err = Publish(ctx, nc, "B", refused)
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("a batch with a wrong expected sequence: %v, want the server's refusal", err)
	}
	info, err := stream.Info(ctx)
	if err != nil || info.State.Msgs != 3 {
		t.Fatalf("after the refused batch the stream holds %d messages (%v), want 3", info.State.Msgs, err)
	}
	Strip(refused[0])
	if ack, err := js.PublishMsg(ctx, refused[0]); err != nil || ack.Sequence != 4 {
		t.Fatalf("a stripped message published alone: %+v, %v", ack, err)
	}
	if _, err := Publish(ctx, nc, "B", nil); err == nil {
		t.Fatal("an empty batch was sent")
	}
}
