// Package jsbatch publishes JetStream atomic batches: messages that the server stores together, in order and
// contiguous, or not at all.
package jsbatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers of JetStream's atomic batch publish: every message of a batch names it and its place in it, and the
// last one commits it.
const (
	hdrID     = "Nats-Batch-Id"
	hdrSeq    = "Nats-Batch-Sequence"
	hdrCommit = "Nats-Batch-Commit"
)

// AckWait bounds the wait for a batch's acknowledgement, whatever the caller's context allows (the bound the
// JetStream client puts on a single publish). A batch sent to a stream leader that dies before answering is
// never answered: without a bound its sender would wait for ever, long after the survivors elected another
// leader (4-9 s after the death).
const AckWait = 5 * time.Second

// Publish sends msgs to stream as one atomic batch (the stream must allow atomic publish) and returns the stream
// sequence of the last message; the others precede it contiguously. Headers the caller set (an expected last
// sequence on the first message, say) are kept. An error that is a *jetstream.APIError is the server's refusal of
// the whole batch: nothing of it is stored. Any other error (no acknowledgement within AckWait among them)
// leaves it unknown whether the batch was stored.
func Publish(ctx context.Context, nc *nats.Conn, stream string, msgs []*nats.Msg) (uint64, error) {
	if len(msgs) == 0 {
		return 0, errors.New("jsbatch: empty batch")
	}
	id := fmt.Sprintf("%016x%016x", rand.Uint64(), rand.Uint64())
	for i, m := range msgs {
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		m.Header.Set(hdrID, id)
		m.Header.Set(hdrSeq, strconv.Itoa(i+1))
		if i < len(msgs)-1 {
			if err := nc.PublishMsg(m); err != nil {
				return 0, err
			}
		}
	}
	last := msgs[len(msgs)-1]
	last.Header.Set(hdrCommit, "1")
	actx, cancel := context.WithTimeout(ctx, AckWait)
	defer cancel()
	resp, err := nc.RequestMsgWithContext(actx, last)
	if err != nil {
		return 0, fmt.Errorf("jsbatch: no acknowledgement of a batch of %d: %w", len(msgs), err)
	}
	var ack struct {
		Stream string              `json:"stream"`
		Seq    uint64              `json:"seq"`
		Count  int                 `json:"count"`
		Error  *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return 0, fmt.Errorf("jsbatch: acknowledgement: %w", err)
	}
	switch {
	case ack.Error != nil:
		return 0, ack.Error
	case ack.Stream != stream || ack.Count != len(msgs) || ack.Seq < uint64(len(msgs)):
		return 0, fmt.Errorf("jsbatch: acknowledgement of %d messages at %d in %q does not match a batch of %d in %q",
			ack.Count, ack.Seq, ack.Stream, len(msgs), stream)
	}
	return ack.Seq, nil
}

// Strip removes the batch headers from m, so that it can be published again on its own.
func Strip(m *nats.Msg) {
	for _, h := range []string{hdrID, hdrSeq, hdrCommit} {
		m.Header.Del(h)
	}
}
