package llmgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// A /v1/messages request for a model served only by Anthropic endpoints goes upstream as the caller wrote it
// (system blocks, cache_control, thinking, tool_choice, stop_sequences, metadata, top_k, images, documents,
// tool results, and whatever members the API adds), and its answer comes back as the endpoint sent it, whole
// or as its event stream. The gateway still decides policy, reserves the budget (lowering max_tokens to what
// the budgets grant), runs the guardrails over every string but opaque data (signatures, base64 sources) and
// writes the audit records, as for a chat completion.

// nativeModel reports whether every endpoint of m speaks the Messages API.
func nativeModel(m *model) bool {
	if m == nil || len(m.endpoints) == 0 {
		return false
	}
	for _, ep := range m.endpoints {
		if ep.p.Kind != provider.Anthropic {
			return false
		}
	}
	return true
}

// checkMessages checks what the gateway relies on in a Messages API request.
func checkMessages(body chat.Object) error {
	var raws []json.RawMessage
	if err := json.Unmarshal(body["messages"], &raws); err != nil || len(raws) == 0 {
		return errors.New(`"messages" must be a non-empty array`)
	}
	if len(raws) > chat.MaxMessages {
		return fmt.Errorf(`"messages" holds more than %d messages`, chat.MaxMessages)
	}
	for i, raw := range raws {
		var m chat.Object
		if err := json.Unmarshal(raw, &m); err != nil || m == nil {
			return fmt.Errorf("messages[%d] is not an object", i)
		}
		if m.Str("role") == "" {
			return fmt.Errorf("messages[%d].role must be a non-empty string", i)
		}
		if len(m.Objs("content")) > chat.MaxParts {
			return fmt.Errorf("messages[%d].content holds more than %d blocks", i, chat.MaxParts)
		}
	}
	if n, ok := body.Int("max_tokens"); !ok || n < 1 {
		return errors.New(`"max_tokens" must be a positive integer`)
	}
	if raw, ok := body["stream"]; ok && !body.IsNull("stream") {
		var b bool
		if json.Unmarshal(raw, &b) != nil {
			return errors.New(`"stream" must be a boolean`)
		}
	}
	return nil
}

// messagesNative serves a Messages API request on model m natively: policy, guardrails, budget, audit,
// upstream, answer.
func (g *Gateway) messagesNative(ctx context.Context, c *call, body chat.Object, m *model, out *anthropicResponder) {
	c.requested, c.stream = body.Str("model"), body.Bool("stream")
	if err := checkMessages(body); err != nil {
		e := invalid("%v", err)
		c.fail(KindInvalid, e)
		out.fail(c, e)
		return
	}
	p := c.principal
	d := g.authz.decide(p, c.requested, "chat")
	c.decision = &d
	if !d.Allow {
		e := errorf(http.StatusForbidden, "permission_error", codeNotPermitted, "identity %s may not use model %s", p.ID, c.requested)
		e.Param = "model"
		c.fail(KindDenied, e)
		out.fail(c, e)
		return
	}
	if e := g.guardMessages(c, body); e != nil {
		c.fail(KindGuardrail, e)
		out.fail(c, e)
		return
	}
	c.model = m.Name
	if g.cfg.LogPrompts {
		c.prompt = promptOfMessages(body)
	}
	res, aerr := g.reserveMessages(ctx, c, m, body)
	if aerr != nil {
		out.fail(c, aerr)
		return
	}
	defer g.settle(ctx, c, res)
	if e := g.begin(ctx, c); e != nil {
		out.fail(c, e)
		return
	}
	if c.stream {
		g.streamMessages(ctx, c, m, body, out, res)
		return
	}
	resp, ep, err := attempt(ctx, g, c, m, func(ctx context.Context, ep *endpoint) (chat.Object, error) {
		return ep.p.Messages(ctx, body)
	})
	c.useEndpoint(ep)
	if err != nil {
		c.upstreamFailed(err)
		e := upstreamError(err)
		c.fail(KindCall, e)
		out.fail(c, e)
		return
	}
	usage, ok := anthropic.UsageOf(resp.Obj("usage"))
	if !ok {
		usage = chat.Usage{Input: estimateMessages(body), Output: int64(len(messageText(resp)))/4 + 1}
	}
	c.setUsage(ep, usage)
	g.guardMessage(c, resp)
	resp.Set("model", m.Name)
	if g.cfg.LogPrompts {
		c.completion = messageText(resp)
	}
	g.settle(ctx, c, res)
	b, err := resp.Encode()
	if err != nil {
		out.fail(c, errorf(http.StatusBadGateway, "server_error", codeUpstream, "the model endpoint sent an unusable response"))
		return
	}
	setCallHeaders(out.w, c)
	writeJSON(out.w, http.StatusOK, b)
}

// promptOfMessages is what the audit record keeps of the prompt: the system prompt as a first message, then
// the messages.
func promptOfMessages(body chat.Object) json.RawMessage {
	var msgs []json.RawMessage
	if !body.IsNull("system") {
		sys, _ := json.Marshal(map[string]json.RawMessage{"role": json.RawMessage(`"system"`), "content": body["system"]})
		msgs = append(msgs, sys)
	}
	var rest []json.RawMessage
	_ = json.Unmarshal(body["messages"], &rest)
	b, _ := json.Marshal(append(msgs, rest...))
	return b
}

// messageText joins the text blocks of a Messages API answer.
func messageText(resp chat.Object) string {
	var b strings.Builder
	for _, blk := range resp.Objs("content") {
		if blk.Str("type") == "text" {
			b.WriteString(blk.Str("text"))
		}
	}
	return b.String()
}

// Tokens counted per image or base64 document when estimating: providers charge by size, which the gateway
// does not decode.
const sourceTokens = 1000

// estimateMessages guesses the prompt's size in tokens from above, like chat.Request.EstimateInputTokens:
// three bytes a token for every string, a fixed amount per base64 source.
func estimateMessages(body chat.Object) int64 {
	var n int64 = 3
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			n += int64(len(x))/3 + 1
		case map[string]any:
			if x["type"] == "base64" {
				if _, ok := x["data"].(string); ok {
					n += sourceTokens
					x = withoutKey(x, "data")
				}
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	for _, k := range []string{"system", "messages", "tools"} {
		if v, err := decodeJSON(body[k]); err == nil {
			walk(v)
		}
	}
	return n
}

func withoutKey(m map[string]any, k string) map[string]any {
	out := make(map[string]any, len(m))
	for kk, v := range m {
		if kk != k {
			out[kk] = v
		}
	}
	return out
}

// reserveMessages admits a Messages API call against its budgets, like reserveChat: its output is its
// max_tokens, lowered upstream to what the budgets grant (and a thinking budget below that, as the API
// requires).
func (g *Gateway) reserveMessages(ctx context.Context, c *call, m *model, body chat.Object) (*budget.Reservation, *apiError) {
	per, _ := body.Int("max_tokens")
	in := estimateMessages(body)
	res, e := g.reserve(ctx, c, budget.Estimate{Tokens: in, CostNanos: costNanos(in, 0, m.maxIn, 0),
		Output: per, OutputNanos: m.maxOut * 1000, MinOutput: 1})
	if e != nil {
		return nil, e
	}
	granted, bounded := res.Output()
	if !bounded || granted >= per {
		return res, nil
	}
	body.Set("max_tokens", granted)
	if th := body.Obj("thinking"); th != nil {
		if b, ok := th.Int("budget_tokens"); ok && b >= granted {
			th.Set("budget_tokens", max(granted-1, 1))
			body.Set("thinking", th)
		}
	}
	return res, nil
}

// opaque lifts out of a content block what must go back to the model unchanged and means nothing to a
// guardrail (thinking signatures, redacted thinking, base64 sources); put returns it.
func opaque(b map[string]any) (put func()) {
	var restore []func()
	hold := func(m map[string]any, k string) {
		if v, ok := m[k]; ok {
			delete(m, k)
			restore = append(restore, func() { m[k] = v })
		}
	}
	switch b["type"] {
	case "thinking":
		hold(b, "signature")
	case "redacted_thinking":
		hold(b, "data")
	}
	if src, ok := b["source"].(map[string]any); ok && src["type"] == "base64" {
		hold(src, "data")
	}
	return func() {
		for _, f := range restore {
			f()
		}
	}
}

// toolBlock reports whether a content block is a tool call the model makes.
func toolBlock(typ any) bool {
	return typ == "tool_use" || typ == "server_tool_use" || typ == "mcp_tool_use"
}

// scanBlocks scans content: a string, or an array of blocks (tool results' own content included).
func scanBlocks(js *jsonScan, v any) any {
	if s, ok := v.(string); ok {
		return js.text(s, []string{"content"})
	}
	blocks, ok := v.([]any)
	if !ok {
		return js.value(v, []string{"content"})
	}
	for i, e := range blocks {
		b, ok := e.(map[string]any)
		if !ok {
			blocks[i] = js.value(e, []string{"content"})
			continue
		}
		put := opaque(b)
		inner, hasInner := b["content"]
		if hasInner {
			delete(b, "content")
		}
		path := []string{"content"}
		if toolBlock(b["type"]) {
			path = []string{"tool_calls"} // name and input are classified as a tool call's
		}
		js.value(b, path)
		if hasInner {
			b["content"] = scanBlocks(js, inner)
		}
		put()
	}
	return blocks
}

// guardMessages scans a Messages API request, redacting in place: every string of the system prompt, of every
// message's blocks (text, tool calls and results, documents, thinking), of the tools and of every other
// member, and every member name. Prompt injection is looked for in user messages (tool results included).
func (g *Gateway) guardMessages(c *call, body chat.Object) *apiError {
	if !g.reqGuard.Enabled() {
		return nil
	}
	report := func(field string, fs []guard.Finding) { c.addFindings("request", field, fs) }
	blocked := false
	for k, raw := range body {
		if k == "model" || k == "stream" {
			continue
		}
		js := &jsonScan{s: g.reqGuard, report: report}
		if js.found(k, []string{k}) {
			delete(body, k)
			blocked = blocked || js.blocked
			continue
		}
		v, err := decodeJSON(raw)
		if err != nil {
			continue
		}
		switch k {
		case "system":
			v = scanBlocks(js, v)
		case "messages":
			msgs, _ := v.([]any)
			for i, e := range msgs {
				m, ok := e.(map[string]any)
				if !ok {
					continue
				}
				mjs := &jsonScan{s: g.reqGuard, injection: m["role"] == "user", report: report}
				content, has := m["content"]
				delete(m, "content")
				msgs[i] = mjs.value(m, nil)
				if has {
					m["content"] = scanBlocks(mjs, content)
				}
				js.changed = js.changed || mjs.changed
				js.blocked = js.blocked || mjs.blocked
			}
		default:
			v = js.value(v, []string{k})
		}
		blocked = blocked || js.blocked
		if js.changed {
			if nv, err := encodeJSON(v); err == nil {
				body[k] = nv
			}
		}
	}
	if blocked {
		return blockedError(c)
	}
	return nil
}

// guardMessage scans a whole Messages API answer. A blocking finding empties its content and makes it stop
// with "refusal"; any other finding that acts is redacted in place.
func (g *Gateway) guardMessage(c *call, resp chat.Object) {
	if !g.resGuard.Enabled() {
		return
	}
	report := func(field string, fs []guard.Finding) { c.addFindings("response", field, fs) }
	js := &jsonScan{s: g.resGuard, report: report}
	js.members(resp, "content", "model", "usage")
	blocked := js.blocked
	js.changed = false
	if v, err := decodeJSON(resp["content"]); err == nil {
		v = scanBlocks(js, v)
		if js.changed {
			if nv, err := encodeJSON(v); err == nil {
				resp["content"] = nv
			}
		}
	}
	if blocked || js.blocked {
		resp.Set("content", []any{})
		resp.Set("stop_reason", "refusal")
		resp["stop_sequence"] = json.RawMessage("null")
	}
}

// firstEvent is an upstream event stream whose first event has arrived (see peeked).
type firstEvent struct {
	st   *provider.EventStream
	name string
	ev   chat.Object
}

func (g *Gateway) streamMessages(ctx context.Context, c *call, m *model, body chat.Object, out *anthropicResponder, res *budget.Reservation) {
	pk, ep, err := attempt(ctx, g, c, m, func(ctx context.Context, ep *endpoint) (*firstEvent, error) {
		st, err := ep.p.MessagesStream(ctx, body)
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

func (ms *messageStream) content(name string, ev chat.Object) []anthropic.Event {
	pass := []anthropic.Event{{Name: name, Data: ev}}
	switch name {
	case "message_start":
		msg := ev.Obj("message")
		if u, ok := anthropic.UsageOf(msg.Obj("usage")); ok {
			ms.usage, ms.sawUsage = u, true
		}
		msg.Set("model", ms.model)
		if ms.scanner != nil {
			js := &jsonScan{s: ms.scanner, report: ms.report}
			js.members(msg, "model", "usage")
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
		js.members(ev, "type")
		if js.blocked {
			return nil
		}
	}
	return pass
}
