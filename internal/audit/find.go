package audit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrForgotten says the trail no longer holds the records of the time asked about (they were archived), so it
// cannot tell whether one of them is there.
var ErrForgotten = errors.New("audit: the trail no longer holds records from then")

// FindOnce returns the record appended with AppendOnce under id and stored between from and to (the stream's
// times), if there is one. It reads the headers of every record stored in that span, so it suits a question
// asked rarely over a short span: whether a record whose answer was lost, longer ago than the stream remembers
// IDs (DedupWindow), was stored. A span the trail no longer holds the start of is ErrForgotten.
func (l *Log) FindOnce(ctx context.Context, id string, from, to time.Time) (Record, bool, error) {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return Record{}, false, fmt.Errorf("audit: stream info: %w", err)
	}
	switch st := info.State; {
	case st.FirstSeq > 1 && (st.Msgs == 0 || st.FirstTime.After(from)): // records from then were removed
		return Record{}, false, ErrForgotten
	case st.Msgs == 0 || st.LastTime.Before(from):
		return Record{}, false, nil
	}
	last := info.State.LastSeq
	start := from
	cons, err := l.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &start, HeadersOnly: true,
		InactiveThreshold: 15 * time.Second,
	})
	if err != nil {
		return Record{}, false, fmt.Errorf("audit: read stream: %w", err)
	}
	it, err := cons.Messages(jetstream.PullHeartbeat(readHeartbeat))
	if err != nil {
		return Record{}, false, fmt.Errorf("audit: read stream: %w", err)
	}
	defer it.Stop()
	for {
		msg, err := next(ctx, it)
		if err != nil {
			return Record{}, false, fmt.Errorf("audit: read stream: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return Record{}, false, fmt.Errorf("audit: read stream: %w", err)
		}
		if meta.Timestamp.After(to) {
			return Record{}, false, nil
		}
		if msg.Headers().Get(jetstream.MsgIDHeader) == id {
			r, err := l.storedAt(ctx, meta.Sequence.Stream)
			return r, err == nil, err
		}
		if meta.NumPending == 0 || meta.Sequence.Stream >= last {
			return Record{}, false, nil
		}
	}
}
