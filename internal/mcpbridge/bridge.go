// Package mcpbridge joins two MCP transports, so a client that speaks one transport reaches a server that speaks
// another: `umbra mcp connect` joins a desktop client's stdio to a gateway's streamable HTTP endpoint on the
// overlay.
//
// The bridge is transparent and concurrent: every request from the client is forwarded on its own, so a request
// that waits (a tool call held for approval) delays no other; the client's notifications/cancelled is forwarded
// and also aborts the request's own HTTP exchange; and with a streamable HTTP server the bridge opens the
// standalone SSE stream once the session is initialised, so that what the server sends unprompted
// (notifications/tools/list_changed and the like, logging messages, server requests) reaches the client.
// With [JoinDeclaring] it also declares an intent on every tools/call that does not carry one of its own.
package mcpbridge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/workgroups/authz"
)

const (
	methodInitialize  = "initialize"
	methodInitialized = "notifications/initialized"
	methodCancelled   = "notifications/cancelled"
	methodCallTool    = "tools/call"
	// metaIntent is the _meta key of a request's declared intent (mcpgw.MetaIntent).
	metaIntent = "umbra/intent"

	// maxEvent bounds one server-sent event on the standalone stream.
	maxEvent = 16 << 20
	// listenBackoffMax caps the wait before the standalone stream is opened again after it broke.
	listenBackoffMax = 30 * time.Second
)

// Join connects client (the side an MCP client talks to, e.g. stdio) and server (a transport to an MCP server)
// and forwards JSON-RPC messages both ways until either side ends or ctx is cancelled. It returns nil when the
// client side closes cleanly. log receives what the bridge cannot tell either side (nil: discarded).
//
// Requests from the client are forwarded concurrently; notifications and responses from the client are
// forwarded in the order they came. When server is a *mcp.StreamableClientTransport, the bridge also listens
// on the session's standalone SSE stream for messages the server sends unprompted.
func Join(ctx context.Context, client, server mcp.Transport, log *slog.Logger) error {
	return join(ctx, client, server, log, nil)
}

// JoinDeclaring is [Join] that declares intent in the _meta of every tools/call the client sends without an
// intent of its own (a client's own _meta["umbra/intent"] is kept as it is).
func JoinDeclaring(ctx context.Context, client, server mcp.Transport, log *slog.Logger, intent authz.Intent) error {
	if err := intent.Validate(); err != nil {
		return fmt.Errorf("mcpbridge: %w", err)
	}
	b, err := json.Marshal(intent)
	if err != nil {
		return fmt.Errorf("mcpbridge: %w", err)
	}
	return join(ctx, client, server, log, b)
}

func join(ctx context.Context, client, server mcp.Transport, log *slog.Logger, intent json.RawMessage) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cconn, err := client.Connect(ctx)
	if err != nil {
		return fmt.Errorf("mcpbridge: client side: %w", err)
	}
	defer cconn.Close()
	sconn, err := server.Connect(ctx)
	if err != nil {
		return fmt.Errorf("mcpbridge: server side: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	b := &bridge{ctx: ctx, log: log, cconn: cconn, sconn: sconn, calls: map[jsonrpc.ID]context.CancelFunc{}, intent: intent}
	if st, ok := server.(*mcp.StreamableClientTransport); ok {
		b.stream = st
	}
	errc := make(chan error, 2)
	go func() { errc <- b.fromClient() }()
	go func() { errc <- b.fromServer() }()
	err = <-errc
	cancel()
	// Closing the server side ends the session there (a DELETE for streamable HTTP), which cancels what the
	// client left running.
	sconn.Close()
	b.wg.Wait()
	return err
}

type bridge struct {
	ctx    context.Context
	log    *slog.Logger
	cconn  mcp.Connection
	sconn  mcp.Connection
	stream *mcp.StreamableClientTransport // nil unless the server side is streamable HTTP
	intent json.RawMessage                // declared on tools/call requests without one; nil: none
	wg     sync.WaitGroup                 // forwarded calls and the standalone stream

	mu       sync.Mutex
	calls    map[jsonrpc.ID]context.CancelFunc // client requests not yet answered
	initID   jsonrpc.ID
	version  string // protocol version the server chose
	listened bool
}

// fromClient reads the client's messages and forwards them.
func (b *bridge) fromClient() error {
	for {
		msg, err := b.cconn.Read(b.ctx)
		if err != nil {
			if errors.Is(err, io.EOF) || b.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("mcpbridge: reading the client: %w", err)
		}
		req, ok := msg.(*jsonrpc.Request)
		switch {
		case ok && req.IsCall() && req.Method == methodInitialize:
			// The session starts here: nothing else can be sent before the server has answered (and named the
			// session), and the client sends nothing else before it has the answer.
			b.mu.Lock()
			b.initID = req.ID
			b.mu.Unlock()
			b.forwardCall(req)
		case ok && req.IsCall():
			if req.Method == methodCallTool && b.intent != nil {
				req.Params = declareIntent(req.Params, b.intent)
			}
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.forwardCall(req)
			}()
		default:
			// Notifications and the client's answers to server requests go in order; the server accepts them at
			// once (202).
			if err := b.sconn.Write(b.ctx, msg); err != nil {
				if b.ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("mcpbridge: forwarding to the server: %w", err)
			}
			if ok && req.Method == methodCancelled {
				b.cancelled(req)
			}
			if ok && req.Method == methodInitialized {
				b.listen()
			}
		}
	}
}

// declareIntent returns params with intent under _meta["umbra/intent"], unless it has one there already, or
// is not an object (then it is forwarded as it is, for the server to refuse).
func declareIntent(params, intent json.RawMessage) json.RawMessage {
	var obj map[string]json.RawMessage
	if len(params) == 0 || string(params) == "null" {
		obj = map[string]json.RawMessage{}
	} else if json.Unmarshal(params, &obj) != nil || obj == nil {
		return params
	}
	meta := map[string]json.RawMessage{}
	if raw, ok := obj["_meta"]; ok && string(raw) != "null" {
		if json.Unmarshal(raw, &meta) != nil || meta == nil {
			return params
		}
	}
	if _, ok := meta[metaIntent]; ok {
		return params
	}
	meta[metaIntent] = intent
	var err error
	if obj["_meta"], err = json.Marshal(meta); err != nil {
		return params
	}
	out, err := json.Marshal(obj)
	if err != nil {
		return params
	}
	return out
}

// forwardCall sends one client request to the server. The answer comes back through fromServer. A request the
// server side cannot take is answered here with an error, so that the client does not wait for ever; a request
// the client cancelled is not answered (MCP: the receiver of a cancellation sends no response).
func (b *bridge) forwardCall(req *jsonrpc.Request) {
	ctx, cancel := context.WithCancel(b.ctx)
	b.mu.Lock()
	if prev, dup := b.calls[req.ID]; dup {
		prev() // the client reused an ID in flight: the first exchange cannot be told apart any more
	}
	b.calls[req.ID] = cancel
	b.mu.Unlock()
	err := b.sconn.Write(ctx, req)
	if err == nil {
		return // the exchange stays open (bound to ctx) until the answer arrives
	}
	if !b.done(req.ID) || b.ctx.Err() != nil {
		return // cancelled by the client, or the bridge is ending
	}
	b.log.Warn("mcp connect: request not forwarded", "method", req.Method, "err", err)
	b.toClient(&jsonrpc.Response{ID: req.ID, Error: &jsonrpc.Error{Code: jsonrpc.CodeInternalError,
		Message: "mcp connect: the gateway did not take the request: " + err.Error()}})
}

// done forgets a client request and ends its HTTP exchange; it reports whether the request was still pending.
func (b *bridge) done(id jsonrpc.ID) bool {
	b.mu.Lock()
	cancel, ok := b.calls[id]
	delete(b.calls, id)
	b.mu.Unlock()
	if ok {
		cancel()
	}
	return ok
}

// cancelled ends the HTTP exchange of a request the client cancelled, after the cancellation itself has been
// forwarded: a request the server had not received yet is then never received, and a server that sees its
// client go away can stop too.
func (b *bridge) cancelled(n *jsonrpc.Request) {
	var p struct {
		RequestID any `json:"requestId"`
	}
	if err := json.Unmarshal(n.Params, &p); err != nil || p.RequestID == nil {
		return
	}
	id, err := jsonrpc.MakeID(p.RequestID)
	if err != nil {
		return
	}
	b.done(id)
}

// fromServer reads the server's messages (answers and what the server sends during a request) and forwards
// them to the client.
func (b *bridge) fromServer() error {
	for {
		msg, err := b.sconn.Read(b.ctx)
		if err != nil {
			if errors.Is(err, io.EOF) || b.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("mcpbridge: reading the server: %w", err)
		}
		if resp, ok := msg.(*jsonrpc.Response); ok {
			b.answered(resp)
		}
		if err := b.toClient(msg); err != nil {
			return err
		}
	}
}

// answered notes the answer to a client request: the request is no longer pending, and the answer to
// initialize names the protocol version, which the standalone stream must state.
func (b *bridge) answered(resp *jsonrpc.Response) {
	b.mu.Lock()
	if b.initID.IsValid() && resp.ID == b.initID && resp.Error == nil {
		var r struct {
			ProtocolVersion string `json:"protocolVersion"`
		}
		if json.Unmarshal(resp.Result, &r) == nil {
			b.version = r.ProtocolVersion
		}
	}
	b.mu.Unlock()
	b.done(resp.ID)
}

func (b *bridge) toClient(msg jsonrpc.Message) error {
	if err := b.cconn.Write(b.ctx, msg); err != nil {
		if b.ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("mcpbridge: writing to the client: %w", err)
	}
	return nil
}

// listen opens the standalone SSE stream once, for a streamable HTTP server, in the background.
func (b *bridge) listen() {
	b.mu.Lock()
	start := b.stream != nil && !b.listened
	b.listened = true
	b.mu.Unlock()
	if !start {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.listenLoop()
	}()
}

// listenLoop keeps the standalone stream open: a stream the server or the network ended is opened again, after
// a backoff that grows while attempts fail. It stops when the server has no such stream (405) or no longer
// knows the session (404).
func (b *bridge) listenLoop() {
	delay := time.Second
	for {
		opened, err := b.listenOnce()
		if b.ctx.Err() != nil {
			return
		}
		var stop *stopListening
		if errors.As(err, &stop) {
			b.log.Debug("mcp connect: no standalone stream", "reason", stop.reason)
			return
		}
		if opened {
			delay = time.Second
		}
		b.log.Warn("mcp connect: server notification stream interrupted; reopening", "err", err, "in", delay)
		select {
		case <-b.ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, listenBackoffMax)
	}
}

type stopListening struct{ reason string }

func (e *stopListening) Error() string { return e.reason }

// listenOnce opens the standalone stream and forwards its messages until it ends. opened reports whether the
// server accepted the stream.
func (b *bridge) listenOnce() (opened bool, err error) {
	req, err := http.NewRequestWithContext(b.ctx, http.MethodGet, b.stream.Endpoint, nil)
	if err != nil {
		return false, &stopListening{reason: err.Error()}
	}
	req.Header.Set("Accept", "text/event-stream")
	if sid := b.sconn.SessionID(); sid != "" {
		req.Header.Set("Mcp-Session-Id", sid)
	}
	b.mu.Lock()
	version := b.version
	b.mu.Unlock()
	if version != "" {
		req.Header.Set("Mcp-Protocol-Version", version)
	}
	hc := b.stream.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusMethodNotAllowed:
		return false, &stopListening{reason: "the server offers no standalone stream (405)"}
	case resp.StatusCode == http.StatusNotFound:
		return false, &stopListening{reason: "the server no longer knows the session (404)"}
	case resp.StatusCode != http.StatusOK:
		return false, fmt.Errorf("standalone stream: %s", resp.Status)
	case !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream"):
		return false, &stopListening{reason: "standalone stream answered with " + resp.Header.Get("Content-Type")}
	}
	err = readEvents(resp.Body, func(data []byte) error {
		msg, err := jsonrpc.DecodeMessage(data)
		if err != nil {
			b.log.Warn("mcp connect: undecodable message on the server notification stream", "err", err)
			return nil
		}
		return b.toClient(msg)
	})
	if err == nil {
		err = errors.New("standalone stream ended")
	}
	return true, err
}

// readEvents reads server-sent events and calls deliver with the data of each "message" event (an event with
// no name is a message; comments and other events are skipped). It returns when r ends or deliver fails.
func readEvents(r io.Reader, deliver func([]byte) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var data bytes.Buffer
	name := ""
	for {
		line, err := readLine(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		switch {
		case len(line) == 0: // end of an event
			if data.Len() > 0 && (name == "" || name == "message") {
				if err := deliver(bytes.TrimSuffix(data.Bytes(), []byte("\n"))); err != nil {
					return err
				}
			}
			data.Reset()
			name = ""
		case line[0] == ':': // comment
		default:
			field, value, _ := bytes.Cut(line, []byte(":"))
			value = bytes.TrimPrefix(value, []byte(" "))
			switch string(field) {
			case "data":
				if data.Len()+len(value) > maxEvent {
					return fmt.Errorf("server-sent event larger than %d bytes", maxEvent)
				}
				data.Write(value)
				data.WriteByte('\n')
			case "event":
				name = string(value)
			}
		}
	}
}

// readLine reads one line without its end (LF, CRLF), refusing lines longer than maxEvent.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, isPrefix, err := br.ReadLine()
		if err != nil {
			return nil, err
		}
		line = append(line, chunk...)
		if len(line) > maxEvent {
			return nil, fmt.Errorf("server-sent event line longer than %d bytes", maxEvent)
		}
		if !isPrefix {
			return line, nil
		}
	}
}
