package llmgw

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/llmgw/anthropic"
	"github.com/umbra-mesh/umbra/llmgw/budget"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
	"github.com/umbra-mesh/umbra/llmgw/provider"
	"github.com/umbra-mesh/umbra/llmgw/sse"
)

// firstEvent is an upstream event stream whose first event has arrived (see peeked).
type firstEvent struct {
	st   *provider.EventStream
	name string
	ev   chat.Object
}

// streamMessages serves a streamed native call: the first event is awaited on each endpoint tried (so a stream
// that fails at once moves to the next endpoint, the caller having seen nothing), then every event is readied
// by a messageStream and sent; usage is settled from message_start and message_delta.
func (g *Gateway) streamMessages(ctx context.Context, c *call, m *model, body chat.Object, beta string, out *anthropicResponder, res *budget.Reservation) {
	pk, ep, err := attempt(ctx, g, c, m, func(ctx context.Context, ep *endpoint) (*firstEvent, error) {
		st, err := ep.p.MessagesStream(ctx, body, beta)
		if err != nil {
			return nil, err
		}
		name, ev, err := st.Next()
		if err != nil {
			_ = st.Close()
			if errors.Is(err, io.EOF) {
				err = &provider.Error{Err: errors.New("stream ended before its first event")}
			}
			return nil, err
		}
		return &firstEvent{st: st, name: name, ev: ev}, nil
	})
	c.useEndpoint(ep)
	if err != nil {
		c.upstreamFailed(err)
		e := upstreamError(err)
		c.fail(KindCall, e)
		out.fail(c, e)
		return
	}
	defer pk.st.Close()
	ms := &messageStream{c: c, model: m.Name, scanner: g.resGuard, window: g.cfg.Guardrails.Window,
		blocks: map[int64]*blockStream{}}
	name, ev := pk.name, pk.ev
	aborted := false
	for !aborted {
		for _, e := range ms.event(name, ev) {
			if err := out.event(c, e); err != nil {
				c.errCode, c.message = "client_disconnected", "the caller went away during the stream"
				aborted = true
				break
			}
		}
		if aborted {
			break
		}
		name, ev, err = pk.st.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			c.upstreamFailed(err)
			e := upstreamError(err)
			c.fail(KindCall, e)
			var pe *provider.Error
			if errors.As(err, &pe) && pe.Status == http.StatusBadGateway && pe.Type != "" && out.sse != nil {
				// The endpoint's own error event: its type goes on (overloaded_error, ...), its text does not.
				b, _ := anthropic.ErrorBody(pe.Type, "the model endpoint reported "+pe.Type+" during the stream (request "+c.id+")").Encode()
				_ = out.sse.Write("error", b)
			} else {
				out.abort(c, e)
			}
			aborted = true
		}
	}
	if ms.sawUsage {
		c.setUsage(ep, ms.usage)
	} else {
		c.setUsage(ep, chat.Usage{Input: estimateMessages(body), Output: ms.outBytes/4 + 1})
	}
	if g.cfg.LogPrompts {
		c.completion = ms.completion.String()
	}
	g.settle(ctx, c, res)
}

// event writes one event of the native answer.
func (a *anthropicResponder) event(c *call, ev anthropic.Event) error {
	b, err := ev.Data.Encode()
	if err != nil {
		return err
	}
	if a.sse == nil {
		setCallHeaders(a.w, c)
		a.sse = sse.NewWriter(a.w)
	}
	return a.sse.Write(ev.Name, b)
}

// messageStream readies a native event stream for the caller: the public model name, usage for the record,
// and the guardrails. Each content block's text (text, thinking, a tool call's input JSON) is a guard.Stream
// holding back its last window until the block stops. A blocking finding closes the blocks already started,
// drops every later content event, and makes the message stop with "refusal"; the stream is read to its end
// for its usage.
type messageStream struct {
	c          *call
	model      string
	scanner    *guard.Scanner // nil: no response guardrails
	window     int
	blocks     map[int64]*blockStream
	blocked    bool
	usage      chat.Usage
	sawUsage   bool
	outBytes   int64
	completion strings.Builder
}

// blockStream is one content block of the answer.
type blockStream struct {
	started  bool // its content_block_start was sent
	stopped  bool
	st       *guard.Stream
	key      string // the delta member its text travels in: text, thinking or partial_json
	dtype    string // the delta type carrying it
	field    string
	reported int
}

func (ms *messageStream) report(field string, fs []guard.Finding) {
	ms.c.addFindings("response", field, fs)
}

// scan judges a value that arrives whole.
func (ms *messageStream) scan(v any, path []string) any {
	if ms.scanner == nil {
		return v
	}
	js := &jsonScan{s: ms.scanner, report: ms.report}
	v = js.value(v, path)
	ms.blocked = ms.blocked || js.blocked
	return v
}

// write passes a piece of block text through its stream and returns what may be sent now.
func (ms *messageStream) write(b *blockStream, piece string) string {
	if ms.scanner == nil {
		return piece
	}
	if b.st == nil {
		b.st = ms.scanner.NewStream(ms.window)
	}
	out := b.st.Write(piece)
	ms.note(b)
	return out
}

func (ms *messageStream) note(b *blockStream) {
	fs := b.st.Findings()[b.reported:]
	b.reported += len(fs)
	ms.report(b.field, fs)
	ms.blocked = ms.blocked || b.st.Blocked()
}

func (ms *messageStream) block(ev chat.Object) (int64, *blockStream) {
	idx, _ := ev.Int("index")
	b := ms.blocks[idx]
	if b == nil {
		b = &blockStream{key: "text", dtype: "text_delta", field: fieldContent}
		ms.blocks[idx] = b
	}
	return idx, b
}

func textDeltaEvent(idx int64, dtype, key, text string) anthropic.Event {
	d := chat.Object{}
	d.Set("type", dtype)
	d.Set(key, text)
	o := chat.Object{}
	o.Set("type", "content_block_delta")
	o.Set("index", idx)
	o.Set("delta", d)
	return anthropic.Event{Name: "content_block_delta", Data: o}
}

func stopEvent(idx int64) anthropic.Event {
	o := chat.Object{}
	o.Set("type", "content_block_stop")
	o.Set("index", idx)
	return anthropic.Event{Name: "content_block_stop", Data: o}
}

// closeAll stops every block already started, once a finding blocked the answer.
func (ms *messageStream) closeAll() []anthropic.Event {
	var out []anthropic.Event
	for _, idx := range slices.Sorted(maps.Keys(ms.blocks)) {
		b := ms.blocks[idx]
		if b.started && !b.stopped {
			b.stopped = true
			out = append(out, stopEvent(idx))
		}
	}
	return out
}

// event readies one upstream event; it returns the events to send (none, it, or it with others).
func (ms *messageStream) event(name string, ev chat.Object) []anthropic.Event {
	wasBlocked := ms.blocked
	out := ms.content(name, ev)
	if ms.blocked && !wasBlocked {
		return append(ms.closeAll(), out...)
	}
	return out
}

// eventMembers lists the members content judges itself for a known event type.
func eventMembers(name string) ([]string, bool) {
	switch name {
	case "message_start":
		return []string{"message"}, true
	case "content_block_start":
		return []string{"index", "content_block"}, true
	case "content_block_delta":
		return []string{"index", "delta"}, true
	case "content_block_stop":
		return []string{"index"}, true
	case "message_delta":
		return []string{"delta"}, true
	case "message_stop", "ping":
		return nil, true
	}
	return nil, false
}

func (ms *messageStream) content(name string, ev chat.Object) []anthropic.Event {
	pass := []anthropic.Event{{Name: name, Data: ev}}
	if handled, known := eventMembers(name); known && ms.scanner != nil {
		// Members a known event is not known to carry are judged whole; those it carries are judged below.
		js := &jsonScan{s: ms.scanner, report: ms.report}
		js.members(ev, append(handled, "type")...)
		ms.blocked = ms.blocked || js.blocked
	}
	switch name {
	case "message_start":
		msg := ev.Obj("message")
		if msg == nil {
			msg = chat.Object{} // an endpoint's malformed event is passed on with the public model name only
		}
		if u, ok := anthropic.UsageOf(msg.Obj("usage")); ok {
			ms.usage, ms.sawUsage = u, true
		}
		msg.Set("model", ms.model)
		if ms.scanner != nil {
			js := &jsonScan{s: ms.scanner, report: ms.report}
			js.members(msg, "model")
			ms.blocked = ms.blocked || js.blocked
		}
		ev.Set("message", msg)
		return pass
	case "content_block_start":
		if ms.blocked {
			return nil
		}
		_, b := ms.block(ev)
		cb := map[string]any{}
		if v, err := decodeJSON(ev["content_block"]); err == nil {
			if m, ok := v.(map[string]any); ok {
				cb = m
			}
		}
		switch typ := cb["type"]; {
		case typ == "text" || typ == "thinking":
			b.key, b.dtype, b.field = "text", "text_delta", fieldContent
			if typ == "thinking" {
				b.key, b.dtype = "thinking", "thinking_delta"
			}
			text, _ := cb[b.key].(string)
			delete(cb, b.key)
			put := opaque(cb)
			ms.scan(cb, []string{"content"})
			put()
			cb[b.key] = ms.write(b, text)
		case toolBlock(typ):
			b.key, b.dtype, b.field = "partial_json", "input_json_delta", fieldToolArgs
			ms.scan(cb, []string{"tool_calls"})
		case typ == "redacted_thinking":
		default:
			put := opaque(cb)
			ms.scan(cb, []string{"content"})
			put()
		}
		if ms.blocked {
			return nil
		}
		if nb, err := encodeJSON(cb); err == nil {
			ev["content_block"] = nb
		}
		b.started = true
		return pass
	case "content_block_delta":
		if ms.blocked {
			return nil
		}
		idx, b := ms.block(ev)
		d := ev.Obj("delta")
		switch dt := d.Str("type"); dt {
		case "text_delta", "thinking_delta", "input_json_delta":
			key := map[string]string{"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}[dt]
			piece := d.Str(key)
			ms.outBytes += int64(len(piece))
			if ms.c.ttft == 0 && piece != "" {
				ms.c.ttft = time.Since(ms.c.start)
			}
			b.key, b.dtype = key, dt
			if dt == "input_json_delta" {
				b.field = fieldToolArgs
			}
			text := ms.write(b, piece)
			if ms.blocked || text == "" {
				return nil
			}
			if dt == "text_delta" && ms.completion.Len() < maxLoggedPrompt {
				ms.completion.WriteString(text)
			}
			return []anthropic.Event{textDeltaEvent(idx, dt, key, text)}
		case "signature_delta":
			return pass
		default:
			v, err := decodeJSON(ev["delta"])
			if err != nil {
				return nil
			}
			v = ms.scan(v, []string{"content"})
			if ms.blocked {
				return nil
			}
			if nb, err := encodeJSON(v); err == nil {
				ev["delta"] = nb
			}
			return pass
		}
	case "content_block_stop":
		if ms.blocked {
			return nil
		}
		idx, b := ms.block(ev)
		var out []anthropic.Event
		if b.st != nil {
			rest := b.st.Flush()
			ms.note(b)
			if ms.blocked {
				return nil
			}
			if rest != "" {
				if b.dtype == "text_delta" && ms.completion.Len() < maxLoggedPrompt {
					ms.completion.WriteString(rest)
				}
				out = append(out, textDeltaEvent(idx, b.dtype, b.key, rest))
			}
		}
		b.stopped = true
		return append(out, pass...)
	case "message_delta":
		if u := ev.Obj("usage"); u != nil {
			if o, ok := u.Int("output_tokens"); ok {
				ms.usage.Output, ms.sawUsage = max(o, 0), true
			}
			if in, ok := anthropic.UsageOf(u); ok && in.Input > 0 {
				ms.usage.Input = in.Input
			}
		}
		d := ev.Obj("delta")
		if ms.scanner != nil && d != nil {
			js := &jsonScan{s: ms.scanner, report: ms.report}
			js.members(d, "stop_reason")
			ms.blocked = ms.blocked || js.blocked
		}
		if ms.blocked && d != nil {
			d.Set("stop_reason", "refusal")
			d["stop_sequence"] = json.RawMessage("null")
		}
		if d != nil {
			ev.Set("delta", d)
		}
		return pass
	case "message_stop", "ping":
		return pass
	}
	// An event type this gateway does not know: judged whole.
	if ms.scanner != nil {
		js := &jsonScan{s: ms.scanner, report: ms.report}
		js.members(ev)
		if js.blocked {
			return nil
		}
	}
	return pass
}
