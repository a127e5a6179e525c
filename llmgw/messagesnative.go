package llmgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/umbra-mesh/umbra/llmgw/anthropic"
	"github.com/umbra-mesh/umbra/llmgw/budget"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
	"github.com/umbra-mesh/umbra/llmgw/provider"
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
// upstream, answer. beta is the caller's anthropic-beta header, passed on.
func (g *Gateway) messagesNative(ctx context.Context, c *call, body chat.Object, beta string, m *model, out *anthropicResponder) {
	c.requested, c.stream = body.Str("model"), body.Bool("stream")
	if err := checkMessages(body); err != nil {
		e := invalid("%v", err)
		c.fail(KindInvalid, e)
		out.fail(c, e)
		return
	}
	if e := g.permitModel(c, c.requested); e != nil {
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
		g.streamMessages(ctx, c, m, body, beta, out, res)
		return
	}
	resp, ep, err := attempt(ctx, g, c, m, func(ctx context.Context, ep *endpoint) (chat.Object, error) {
		return ep.p.Messages(ctx, body, beta)
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
