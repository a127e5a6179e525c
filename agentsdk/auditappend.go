package agentsdk

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// appendTryTimeout bounds one try of AppendAudit, so that a try lost with a broken connection that never says
// so leaves time for another within api.AuditRetryWindow. appendMargin is how long before ctx's deadline
// AppendAudit gives up, so that a caller that stops waiting at that deadline still gets its answer (whether
// anything was sent).
const (
	appendTryTimeout = 4 * time.Second
	appendMargin     = 100 * time.Millisecond
)

// AppendAudit writes a record into the shared audit stream (gateway identities only). record is an audit record
// as JSON-encodable value (kind mcp.* or llm.*, actor = the caller's SPIFFE ID).
//
// The record is stored once even when an answer is lost: a try whose connection broke, that had no answer within
// a few seconds, or that the controller answered with a server error (5xx) is sent again under the same record ID
// (api.HeaderRecordID), with a growing pause, until ctx ends or api.AuditRetryWindow has passed since the first
// try; the controller answers a repeat with the record it stored first. A refusal (4xx) is returned at once. The
// error matches ErrNotSent only when no try was sent (the controller was never reached): then the record may be
// appended again later with a new call. It returns a little before ctx's deadline.
func (c *Controller) AppendAudit(ctx context.Context, record any) error {
	id, err := newRecordID()
	if err != nil {
		return fmt.Errorf("agentsdk: append audit record: %w", err)
	}
	return c.AppendAuditOnce(ctx, record, id, time.Now(), nil)
}

// AppendAuditOnce is AppendAudit under a record ID the caller keeps (1 to 64 of A-Z, a-z, 0-9, '_' and '-',
// unique to the record), first tried at first: a caller that keeps a record to send it later, across its own
// restarts, sends it again under the same ID and first time, and so gets it stored once. A try more than
// api.AuditRetryWindow after first is refused by the controller (CodeConflict, retry_too_late): the record may
// have been stored, and the controller can no longer tell. A zero first means now.
//
// sending, if not nil, is called once, with the first time the tries are sent as, when a try has a connection to
// the controller and before any of the record is written to it: there a caller that keeps records across its own
// restarts notes that this one may be stored from now on. If it fails, that try sends nothing.
func (c *Controller) AppendAuditOnce(ctx context.Context, record any, id string, first time.Time, sending func(first time.Time) error) error {
	if !validRecordID(id) {
		return fmt.Errorf("agentsdk: append audit record: record ID %q is not 1 to 64 of A-Z, a-z, 0-9, '_' and '-'", id)
	}
	body, err := json.Marshal(record)
	if err != nil {
		return fmt.Errorf("agentsdk: append audit record: %w", err)
	}
	if first.IsZero() {
		first = time.Now()
	}
	if d, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-appendMargin))
		defer cancel()
	}
	var before func() error // called before a try's first write; sending is called until it has returned nil once
	if sending != nil {
		var mu sync.Mutex
		done := false
		before = func() error {
			mu.Lock()
			defer mu.Unlock()
			if done {
				return nil
			}
			err := sending(first)
			done = err == nil
			return err
		}
	}
	pause := backoff{first: 100 * time.Millisecond, limit: time.Second}
	sent := false // whether any try may have reached the controller
	for try := 1; ; try++ {
		wrote, err := c.appendTry(ctx, body, id, try, first, before)
		if err == nil {
			return nil
		}
		sent = sent || wrote
		wait := pause.fail()
		if !retryAppend(err) || ctx.Err() != nil || time.Since(first)+wait > api.AuditRetryWindow || !sleep(ctx, wait) {
			err = ctxError(ctx, err)
			switch notSent := errors.Is(err, ErrNotSent); {
			case sent && notSent: // the last try was not sent, but an earlier one may have been stored
				err = fmt.Errorf("%v (an earlier try may have been stored)", err)
			case !sent && !notSent: // ctx ended (ctxError keeps only its own error)
				err = fmt.Errorf("%w: %w", ErrNotSent, err)
			}
			return fmt.Errorf("agentsdk: append audit record (%d tries): %w", try, err)
		}
	}
}

// FindAuditRecord asks whether the record this gateway sent under id, by a try that began at tried, was stored
// (api.PathAuditRecordFind): for a record kept across a restart whose try may have been stored and that can no
// longer be sent again (tried more than api.AuditRetryWindow ago). The answer is certain from
// api.AuditFindAfter after tried on; asked earlier, the controller answers CodeAskLater. Not found, the record
// was never stored and can be sent as a new try.
func (c *Controller) FindAuditRecord(ctx context.Context, id string, tried time.Time) (api.AuditRecordFound, error) {
	var out api.AuditRecordFound
	if !validRecordID(id) {
		return out, fmt.Errorf("agentsdk: find audit record: record ID %q is not 1 to 64 of A-Z, a-z, 0-9, '_' and '-'", id)
	}
	req := api.AuditRecordFind{ID: id, FirstUnixMS: tried.UnixMilli()}
	if err := c.post(ctx, api.PathAuditRecordFind, req, &out); err != nil {
		return out, fmt.Errorf("agentsdk: find audit record %s: %w", id, err)
	}
	return out, nil
}

// appendTry is one try of AppendAudit, the first of which began at first. sent says whether any of the request was written to a
// connection to the controller, and so may have been stored: a try of which nothing was, whatever its error says,
// was not sent (the HTTP client reports a dial cut short by the context as the context's error). A kept-alive
// connection that the controller's end of the overlay dropped is one such: the first write to it fails.
func (c *Controller) appendTry(ctx context.Context, body []byte, id string, try int, first time.Time, before func() error) (sent bool, _ error) {
	ctx, cancel := context.WithTimeout(ctx, appendTryTimeout)
	defer cancel()
	var conn atomic.Pointer[meteredConn]
	var from int64
	var got atomic.Bool
	var gate *func() error
	if before != nil {
		gate = &before
	}
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		got.Store(true)
		m, ok := info.Conn.(*meteredConn)
		if !ok {
			if gate != nil && before() != nil {
				cancel() // best effort: a connection that is not metered cannot be held back
			}
			return
		}
		from = m.written.Load()
		conn.Store(m)
		if gate != nil {
			m.gate.Store(gate)
		}
	}})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+api.ServiceName+api.PathAuditRecords, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", api.ContentTypeJSON)
	req.Header.Set(api.HeaderRecordID, id)
	req.Header.Set(api.HeaderRecordFirst, strconv.FormatInt(first.UnixMilli(), 10))
	if age := time.Since(first); try > 1 || age >= time.Millisecond {
		req.Header.Set(api.HeaderRecordAge, strconv.FormatInt(max(age.Milliseconds(), 0), 10))
	}
	err = doJSON(c.client, req, nil)
	if m := conn.Load(); m != nil {
		if gate != nil {
			m.gate.CompareAndSwap(gate, nil) // never for the connection's next request
		}
		// One request at a time uses a connection: what was written to it since it was handed over is this try's.
		return m.written.Load() > from, err
	}
	return got.Load(), err
}

// meteredConn counts the bytes written to a connection to the controller, so that a try of AppendAudit can tell
// whether any of its request left this process, and holds its first write back until gate, if set, has returned
// (AppendAuditOnce's sending).
type meteredConn struct {
	net.Conn
	written atomic.Int64
	gate    atomic.Pointer[func() error]
}

func (m *meteredConn) Write(p []byte) (int, error) {
	if g := m.gate.Swap(nil); g != nil {
		if err := (*g)(); err != nil {
			return 0, fmt.Errorf("agentsdk: append audit record: not sent: %w", err)
		}
	}
	n, err := m.Conn.Write(p)
	m.written.Add(int64(n))
	return n, err
}

// retryAppend tells whether a try of AppendAudit may be repeated: it got no answer, or a server error.
func retryAppend(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status >= 500
	}
	return true
}

// newRecordID returns a fresh record ID: 128 random bits.
func newRecordID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// validRecordID tells whether id may name a record (api.HeaderRecordID).
func validRecordID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
