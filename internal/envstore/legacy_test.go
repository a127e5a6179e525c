package envstore

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var withMsgID = jetstream.WithMsgID

// legacyMsg is an envelope as an earlier version of the store wrote it: on the session subject itself, with its
// id, recipient and the session count as headers.
func legacyMsg(s *Store, session, id, to string, count uint64) *nats.Msg {
	msg := nats.NewMsg(s.prefix + session)
	msg.Data = []byte("data-" + id)
	msg.Header.Set(hdrID, id)
	msg.Header.Set(hdrTo, to)
	msg.Header.Set(hdrCount, strconv.FormatUint(count, 10))
	return msg
}

// TestLegacyData writes a data directory the way the previous version of the store did (stream on
// "<prefix>.*", envelopes on the session subject, a recipient's durable cursor filtered on it), restarts the
// server and opens the store on it: the old envelopes are counted, read, de-duplicated and delivered, and new
// ones continue the session.
func TestLegacyData(t *testing.T) {
	dir := t.TempDir()
	opts := Options{DuplicateWindow: shortWindow}
	srv := startServer(t, dir)
	js := connect(t, srv)
	ctx := testContext(t)
	prefix := "umbra_envelopes."
	old, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: defaultStream, Subjects: []string{prefix + "*"}, Storage: jetstream.FileStorage,
		Discard: jetstream.DiscardNew, Duplicates: shortWindow,
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &Store{prefix: prefix} // for legacyMsg only
	legacy := map[string]uint64{}
	ids := []string{"m00", "m01", "m02", "m03", "m04", "m05"}
	var last uint64
	for i, id := range ids {
		ack, err := js.PublishMsg(ctx, legacyMsg(s, "old", id, alternate(i), uint64(i+1)),
			jetstream.WithMsgID("old/"+id), jetstream.WithExpectLastSequencePerSubject(last))
		if err != nil {
			t.Fatal(err)
		}
		legacy[id], last = ack.Sequence, ack.Sequence
	}
	// A's cursor as the previous version created it, with A's first two envelopes acknowledged.
	cons, err := old.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: receiverName("old", recipientA), FilterSubject: prefix + "old", DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1, MaxDeliver: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	for acked := 0; acked < 2; {
		jm, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if jm.Headers().Get(hdrTo) == recipientA {
			acked++
		}
		if err := jm.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	srv.Shutdown()
	waitOutWindow()

	srv = startServer(t, dir)
	t.Cleanup(srv.Shutdown)
	js = connect(t, srv)
	s = open(t, js, opts)

	if n, err := s.Count(ctx, "old"); err != nil || n != 6 {
		t.Fatalf("Count of the old session: %d, %v; want 6", n, err)
	}
	all, err := s.All(ctx, "old")
	if err != nil || len(all) != 6 {
		t.Fatalf("All of the old session: %d envelopes, %v; want 6", len(all), err)
	}
	for i, m := range all {
		if m.ID != ids[i] || m.StreamSeq != legacy[m.ID] || m.To != alternate(i) || string(m.Data) != "data-"+m.ID {
			t.Fatalf("All[%d] = %s at %d to %s, want %s at %d to %s", i, m.ID, m.StreamSeq, m.To, ids[i], legacy[ids[i]], alternate(i))
		}
	}
	if m, err := s.Get(ctx, legacy["m03"]); err != nil || m.ID != "m03" || m.Session != "old" || m.To != recipientB {
		t.Fatalf("Get of an old envelope: %+v, %v", m, err)
	}

	// Old ids are duplicates, long after the window; new ones continue the count.
	a, err := s.Append(ctx, Envelope{ID: "m02", Session: "old", To: recipientA, Data: []byte("data-m02")}, 0)
	if err != nil || !a.Duplicate || a.StreamSeq != legacy["m02"] || a.Count != 6 {
		t.Fatalf("replay of an old envelope: %+v, %v; want a duplicate of %d at count 6", a, err, legacy["m02"])
	}
	windowForgot(t, s, "old", "m02")
	appendN(t, s, "old", 6, 7, alternate, 7) // m06, for A
	if _, err := s.Append(ctx, Envelope{ID: "m07", Session: "old", To: recipientB}, 7); !errors.Is(err, ErrLimit) {
		t.Fatalf("a new envelope at the limit: %v, want ErrLimit", err)
	}
	if a, err := s.Append(ctx, Envelope{ID: "m05", Session: "old", To: recipientB}, 7); err != nil || !a.Duplicate || a.StreamSeq != legacy["m05"] {
		t.Fatalf("replay of an old envelope at the limit: %+v, %v; want a duplicate of %d", a, err, legacy["m05"])
	}
	checkSession(t, s, "old", map[string]bool{"m00": true, "m01": true, "m02": true, "m03": true, "m04": true, "m05": true, "m06": true})

	// A's cursor resumes where the previous version left it, through old envelopes into new ones.
	r, err := s.Receiver(ctx, "old", recipientA)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ack(t, r, next(t, r, "m04"))
	ack(t, r, next(t, r, "m06"))
	expectNothing(t, r)

	var followed []string
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	err = s.Follow(fctx, 0, func(m Msg) error {
		if m.Session == "old" {
			followed = append(followed, m.ID)
		}
		if len(followed) == 7 {
			cancel()
		}
		return nil
	})
	if want := "m00 m01 m02 m03 m04 m05 m06"; fmtIDs(followed) != want {
		t.Fatalf("Follow: %s (%v), want %s", fmtIDs(followed), err, want)
	}
}
