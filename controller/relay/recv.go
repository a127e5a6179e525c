package relay

import (
	"bufio"
	"context"
	"errors"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/workgroups"
)

// recv delivers the session's envelopes addressed to the recipient, one at a time: each is acknowledged to the
// store only once the recipient has confirmed it, so an envelope is redelivered until it is confirmed.
func (r *Relay) recv(ctx context.Context, conn net.Conn, br *bufio.Reader, recipient spiffeid.ID, raw string) error {
	sid, err := workgroups.ParseSessionID(raw)
	if err != nil {
		return writeJSONLine(conn, api.RelayAck{Code: api.CodeNotFound, Error: "no such session"})
	}
	sess, err := r.cfg.Sessions.Get(ctx, sid.String())
	switch {
	case err != nil && !errors.Is(err, ErrNoSession):
		// Not an answer about the session: the recipient should try again, not give it up.
		r.log.Error("reading a session for delivery failed", "session", sid.String(), "err", err)
		return writeJSONLine(conn, api.RelayAck{Code: api.CodeInternal, Error: "internal error; try again"})
	case err != nil || sess.Consumer != recipient && sess.Provider != recipient:
		return writeJSONLine(conn, api.RelayAck{Code: api.CodeNotFound, Error: "no such session"})
	}
	if err := writeJSONLine(conn, api.RelayAck{OK: true}); err != nil {
		return err
	}
	cur, err := r.cfg.Envelopes.Receiver(ctx, sid.String(), recipient.String())
	if err != nil {
		// Nothing can be delivered in this session until this works again: say so where operators look.
		r.log.Error("opening a delivery cursor failed", "session", sid.String(), "recipient", recipient.String(), "err", err)
		return err
	}
	defer cur.Close()
	cctx, cancel := context.WithCancel(ctx)
	receipts := make(chan uint64)
	read := make(chan struct{})
	go func() {
		defer close(read)
		defer cancel()
		for {
			_ = conn.SetReadDeadline(time.Time{})
			line, err := readLine(br)
			if err != nil {
				return
			}
			var rc api.RelayReceipt
			if strict(line, &rc) != nil {
				return
			}
			select {
			case receipts <- rc.Seq:
			case <-cctx.Done():
				return
			}
		}
	}()
	// The receipt reader ends when the connection is closed; it must not outlive this call.
	defer func() {
		cancel()
		conn.Close()
		<-read
	}()
	for {
		m, err := cur.Next(cctx)
		if err != nil {
			return err
		}
		if err := r.deliver(cctx, conn, cur, m, receipts); err != nil {
			return err
		}
		r.cfg.Observer.Delivered()
	}
}

// inProgressEvery is how often a relay tells the store that the envelope it is delivering is still on its way,
// well inside the store's AckWait (5 s): the store hands it to another relay only once this one stops saying so,
// because it died (a controller of a cluster, killed) or closed the cursor.
const inProgressEvery = 1500 * time.Millisecond

// deliver waits until m's audit record is durable, writes m to the recipient and acknowledges it to the cursor
// once the recipient's receipt comes; meanwhile it keeps m in progress at the store.
func (r *Relay) deliver(ctx context.Context, conn net.Conn, cur Cursor, m envstore.Msg, receipts <-chan uint64) error {
	tick := time.NewTicker(inProgressEvery)
	defer tick.Stop()
	recorded := make(chan error, 1)
	go func() { recorded <- r.cfg.Records.Wait(ctx, m.StreamSeq) }()
	for {
		select {
		case err := <-recorded:
			// Only an envelope whose audit record is durable is delivered.
			if err != nil {
				return err
			}
			if _, err := conn.Write(m.Data); err != nil {
				return err
			}
			recorded = nil
		case <-receipts:
			if recorded != nil {
				continue // a receipt for nothing written yet (or an earlier envelope again): not this one's
			}
			return cur.Ack(m)
		case <-tick.C:
			if err := cur.InProgress(m); err != nil {
				r.log.Warn("keeping an envelope in delivery failed", "stream_seq", m.StreamSeq, "err", err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
