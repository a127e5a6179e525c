package audit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/internal/jsfollow"
)

// idleTimeout bounds the wait for the next message of a walk that knows more are stored.
const idleTimeout = 30 * time.Second

// readHeartbeat is the idle heartbeat asked of the server for every ordered read of the trail. A consumer lives on
// one server of a cluster; when that server dies, nothing says so but the missing heartbeats, and the client
// creates the consumer again (from where it was) after two are missed. The client's own default for ordered
// consumers, 5 s, left a follower (and every relay waiting on it for a record) stalled for 10 s or more.
const readHeartbeat = time.Second

// Report summarises a verified chain.
type Report struct {
	Records  int
	LastSeq  uint64
	LastHash string
}

// Verify walks the whole stream from sequence 1 and checks that sequences are contiguous, that every
// record is intact and on its subject, and that each links to the one before. It covers at least
// every record stored when it started. A broken chain gives an error wrapping ErrBroken (a
// *BreakError naming the first break); other errors mean the stream could not be read.
func (l *Log) Verify(ctx context.Context) (Report, error) {
	var c chain
	last, err := l.walk(ctx, "", func(seq uint64, subject string, data []byte) error {
		if err := c.expect(seq); err != nil {
			return err
		}
		r, err := l.check(seq, subject, data)
		if err != nil {
			return err
		}
		return c.link(r)
	})
	if err == nil && last > c.seq {
		err = missing(c.seq+1, last)
	}
	if err == nil {
		err = c.finish()
	}
	if err != nil {
		return Report{}, err
	}
	return Report{Records: c.records, LastSeq: c.seq, LastHash: c.hash}, nil
}

// Export writes the records for which filter returns true (all of them when filter is nil) to w as
// JSON lines, in stream order, and returns how many it wrote. An unfiltered export is a complete
// chain that VerifyRecords checks. Export does not verify: a damaged record stops it with an error
// wrapping ErrBroken, so that nothing is exported that the stream does not hold.
func (l *Log) Export(ctx context.Context, w io.Writer, filter func(Record) bool) (int, error) {
	bw := bufio.NewWriter(w)
	n := 0
	_, err := l.walk(ctx, "", func(seq uint64, subject string, data []byte) error {
		r, err := l.check(seq, subject, data)
		if err != nil {
			return err
		}
		if filter != nil && !filter(r) {
			return nil
		}
		if err := writeJSONLine(bw, r); err != nil {
			return err
		}
		n++
		return nil
	})
	if err != nil {
		return n, err
	}
	if err := bw.Flush(); err != nil {
		return n, fmt.Errorf("audit: export: %w", err)
	}
	return n, nil
}

// Session returns every record of session id, in order, reading only that session's subject. Each
// record is checked on its own (intact, and stored on the subject its Session names, so of this
// session); that the records are linked into the whole chain is what Verify proves. An unknown
// session gives no records and no error.
func (l *Log) Session(ctx context.Context, id string) ([]Record, error) {
	if !ValidSessionID(id) {
		return nil, fmt.Errorf("audit: session ID %q: want at most %d of [A-Za-z0-9_-]", clip(id), maxSessionLen)
	}
	var rs []Record
	_, err := l.walk(ctx, l.sessionSubject(id), func(seq uint64, subject string, data []byte) error {
		r, err := l.check(seq, subject, data)
		if err != nil {
			return err
		}
		rs = append(rs, r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return rs, nil
}

// walk calls fn for the messages on subject (the whole stream when subject is ""), in stream order,
// up to at least the last one stored when it starts. It returns the stream's last sequence at the
// start, so that callers can tell a walk that ended early from a missing tail.
func (l *Log) walk(ctx context.Context, subject string, fn func(seq uint64, subject string, data []byte) error) (uint64, error) {
	var (
		info *jetstream.StreamInfo
		err  error
	)
	if subject == "" {
		info, err = l.stream.Info(ctx)
	} else {
		info, err = l.stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	}
	if err != nil {
		return 0, fmt.Errorf("audit: stream info: %w", err)
	}
	last, count := info.State.LastSeq, info.State.Msgs
	cfg := jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverAllPolicy,
		// The consumer is dropped by the server once idle; a walk keeps it busy.
		InactiveThreshold: 15 * time.Second,
	}
	if subject != "" {
		count = info.State.Subjects[subject]
		cfg.FilterSubjects = []string{subject}
	}
	if count == 0 {
		return last, nil
	}
	cons, err := l.stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return 0, fmt.Errorf("audit: read stream: %w", err)
	}
	it, err := cons.Messages(jetstream.PullHeartbeat(readHeartbeat))
	if err != nil {
		return 0, fmt.Errorf("audit: read stream: %w", err)
	}
	defer it.Stop()
	for delivered := uint64(0); ; delivered++ {
		msg, err := next(ctx, it)
		if err != nil {
			return 0, fmt.Errorf("audit: read stream: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return 0, fmt.Errorf("audit: read stream: %w", err)
		}
		seq := meta.Sequence.Stream
		if err := fn(seq, msg.Subject(), msg.Data()); err != nil {
			return 0, err
		}
		// The whole stream ends at the last sequence seen at the start; a subject at the count seen
		// then. NumPending catches both when messages vanished meanwhile (possible only in tests).
		if meta.NumPending == 0 || (subject == "" && seq >= last) || (subject != "" && delivered+1 >= count) {
			return last, nil
		}
	}
}

func next(ctx context.Context, it jetstream.MessagesContext) (jetstream.Msg, error) {
	idle, cancel := context.WithTimeout(ctx, idleTimeout)
	defer cancel()
	msg, err := it.Next(jetstream.NextContext(idle))
	if err != nil && ctx.Err() == nil && idle.Err() != nil {
		return nil, fmt.Errorf("no message within %s: %w", idleTimeout, err)
	}
	return msg, err
}

// Scan calls fn for every record with a sequence above after, in stream order, up to the last one stored
// when it starts, and returns that last sequence. Each record is checked on its own (intact, on its subject);
// linking is Verify's job. A record that does not check stops the scan with an error wrapping ErrBroken.
func (l *Log) Scan(ctx context.Context, after uint64, fn func(Record) error) (uint64, error) {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("audit: stream info: %w", err)
	}
	last := info.State.LastSeq
	if last <= after {
		return last, nil
	}
	// A consumer of its own that fails at once when lost or not created within seconds (jsfollow): the recorder
	// scans the trail each time it starts over, and a scan waiting out a cluster's elections held every
	// acknowledgement with it. A consumer lost on the way (two missed heartbeats: its server died, or a loaded
	// machine was late) is opened again after the last record read, a few times at most.
	from := after + 1
	for opened := 1; ; opened++ {
		done, err := l.scanFrom(ctx, from, last, func(seq uint64, r Record) error {
			from = seq + 1
			return fn(r)
		})
		// The client learns of a consumer's loss by missed heartbeats, or, when the server says so in time, as
		// "consumer deleted".
		switch lost := errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, jsfollow.ErrGap) ||
			errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound); {
		case done:
			return last, nil
		case !lost || opened == scanOpens:
			return 0, err
		}
	}
}

// scanOpens is how many consumers one Scan opens at most.
const scanOpens = 3

// scanFrom is one consumer's part of a Scan: records from seq from on, until last or the stream's end (done).
func (l *Log) scanFrom(ctx context.Context, from, last uint64, fn func(uint64, Record) error) (done bool, err error) {
	rd, err := jsfollow.Open(ctx, l.js, l.stream, jsfollow.Config{StartSeq: from, Heartbeat: readHeartbeat})
	if err != nil {
		return false, fmt.Errorf("audit: read stream: %w", err)
	}
	defer rd.Stop(ctx)
	for {
		idle, cancel := context.WithTimeout(ctx, idleTimeout)
		msg, err := rd.Next(idle)
		cancel()
		if err != nil {
			return false, fmt.Errorf("audit: read stream: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return false, fmt.Errorf("audit: read stream: %w", err)
		}
		r, err := l.check(meta.Sequence.Stream, msg.Subject(), msg.Data())
		if err != nil {
			return false, err
		}
		if err := fn(meta.Sequence.Stream, r); err != nil {
			return false, err
		}
		if meta.Sequence.Stream >= last || meta.NumPending == 0 {
			return true, nil
		}
	}
}

// Stats is the state of the audit stream.
type Stats struct {
	Records  uint64 // records held
	Bytes    uint64 // bytes on disk as JetStream counts them
	FirstSeq uint64 // sequence of the first record held (after an archive, the one after the archived head)
	LastSeq  uint64
}

// Stats reads the stream's state.
func (l *Log) Stats(ctx context.Context) (Stats, error) {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return Stats{}, fmt.Errorf("audit: stream info: %w", err)
	}
	st := info.State
	return Stats{Records: st.Msgs, Bytes: st.Bytes, FirstSeq: st.FirstSeq, LastSeq: st.LastSeq}, nil
}
