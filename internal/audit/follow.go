package audit

import (
	"context"
	"fmt"
	"time"

	"github.com/umbra-mesh/umbra/internal/jsfollow"
)

// Follow calls fn for every record after sequence after, in stream order, as the records are stored, until ctx
// ends (it then returns ctx's error) or fn or the reading fails (also as soon as the consumer it reads through is
// lost or cannot be created, as while a cluster elects its leaders: follow again from the last record). With after
// 0 and since set, it starts at the first record stored at or after since instead; with both zero, at the
// beginning. Each record is checked on
// its own, as Scan checks it; a record that does not check stops the follow with an error wrapping ErrBroken.
func (l *Log) Follow(ctx context.Context, after uint64, since time.Time, fn func(Record) error) error {
	// A consumer of its own, given up at once when lost: the client's ordered consumers mend a lost one in silence,
	// waiting 10 s for each creation during a cluster's elections, while every relay waiting for a record this
	// follower should read waits too. Callers follow again at once.
	cfg := jsfollow.Config{Heartbeat: readHeartbeat}
	switch {
	case after > 0:
		cfg.StartSeq = after + 1
	case !since.IsZero():
		cfg.StartTime = &since
	}
	rd, err := jsfollow.Open(ctx, l.js, l.stream, cfg)
	if err != nil {
		return fmt.Errorf("audit: follow stream: %w", err)
	}
	defer rd.Stop(ctx)
	for {
		msg, err := rd.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("audit: follow stream: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("audit: follow stream: %w", err)
		}
		r, err := l.check(meta.Sequence.Stream, msg.Subject(), msg.Data())
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
}
