package anthropic

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/umbra-mesh/umbra/llmgw/chat"
)

// StreamToOpenAI turns a Messages API event stream into OpenAI chat-completion chunks. The last chunk it
// returns carries usage and no choices, as an OpenAI stream with stream_options.include_usage does.
type StreamToOpenAI struct {
	Model   string // the model name the chunks carry
	id      string
	created int64
	usage   chat.Usage
	tools   map[int64]int // content block index -> tool_calls index
	done    bool
}

// Usage returns the usage seen so far.
func (t *StreamToOpenAI) Usage() chat.Usage { return t.usage }

// Done reports whether message_stop was seen.
func (t *StreamToOpenAI) Done() bool { return t.done }

func (t *StreamToOpenAI) chunk(delta chat.Object, finish string) chat.Object {
	choice := chat.Object{}
	choice.Set("index", 0)
	choice.Set("delta", delta)
	if finish == "" {
		choice["finish_reason"] = json.RawMessage("null")
	} else {
		choice.Set("finish_reason", finish)
	}
	c := chat.Object{}
	c.Set("id", t.id)
	c.Set("object", "chat.completion.chunk")
	c.Set("created", t.created)
	c.Set("model", t.Model)
	c.Set("choices", []chat.Object{choice})
	return c
}

// Event translates one event; it may yield no chunk (ping, block stop) or one.
func (t *StreamToOpenAI) Event(name string, data []byte) ([]chat.Object, error) {
	o, err := chat.ParseObject(data)
	if err != nil {
		return nil, fmt.Errorf("anthropic stream: %w", err)
	}
	typ := o.Str("type")
	if typ == "" {
		typ = name
	}
	switch typ {
	case "message_start":
		m := o.Obj("message")
		t.id, t.created = "chatcmpl-"+m.Str("id"), time.Now().Unix()
		if u, ok := UsageOf(m.Obj("usage")); ok {
			t.usage = u
		}
		d := chat.Object{}
		d.Set("role", "assistant")
		d.Set("content", "")
		return []chat.Object{t.chunk(d, "")}, nil
	case "content_block_start":
		cb := o.Obj("content_block")
		idx, _ := o.Int("index")
		switch cb.Str("type") {
		case "tool_use":
			if t.tools == nil {
				t.tools = map[int64]int{} // also when a broken stream skipped message_start
			}
			n := len(t.tools)
			t.tools[idx] = n
			return []chat.Object{t.chunk(toolDelta(n, cb.Str("id"), cb.Str("name"), ""), "")}, nil
		case "text":
			if s := cb.Str("text"); s != "" {
				return []chat.Object{t.chunk(textDelta(s), "")}, nil
			}
		}
		return nil, nil
	case "content_block_delta":
		d := o.Obj("delta")
		idx, _ := o.Int("index")
		switch d.Str("type") {
		case "text_delta":
			return []chat.Object{t.chunk(textDelta(d.Str("text")), "")}, nil
		case "input_json_delta":
			n, ok := t.tools[idx]
			if !ok {
				return nil, errors.New("anthropic stream: input_json_delta for a block that is not a tool call")
			}
			return []chat.Object{t.chunk(toolDelta(n, "", "", d.Str("partial_json")), "")}, nil
		}
		return nil, nil // thinking and signature deltas have no OpenAI counterpart
	case "message_delta":
		if u := o.Obj("usage"); u != nil {
			if out, ok := u.Int("output_tokens"); ok {
				t.usage.Output = max(out, 0)
			}
			if in, ok := UsageOf(u); ok && in.Input > 0 {
				t.usage.Input = in.Input
			}
		}
		if stop := o.Obj("delta").Str("stop_reason"); stop != "" {
			return []chat.Object{t.chunk(chat.Object{}, FinishReason(stop))}, nil
		}
		return nil, nil
	case "message_stop":
		t.done = true
		c := chat.Object{}
		c.Set("id", t.id)
		c.Set("object", "chat.completion.chunk")
		c.Set("created", t.created)
		c.Set("model", t.Model)
		c.Set("choices", []chat.Object{})
		c.Set("usage", chat.UsageObject(t.usage))
		return []chat.Object{c}, nil
	case "error":
		e := o.Obj("error")
		return nil, fmt.Errorf("anthropic stream error: %s: %s", e.Str("type"), e.Str("message"))
	}
	return nil, nil
}

func textDelta(s string) chat.Object {
	d := chat.Object{}
	d.Set("content", s)
	return d
}

func toolDelta(n int, id, name, args string) chat.Object {
	fn := chat.Object{}
	if name != "" {
		fn.Set("name", name)
	}
	fn.Set("arguments", args)
	tc := chat.Object{}
	tc.Set("index", n)
	if id != "" {
		tc.Set("id", id)
		tc.Set("type", "function")
	}
	tc.Set("function", fn)
	d := chat.Object{}
	d.Set("tool_calls", []chat.Object{tc})
	return d
}

// Event is a Messages API stream event to send.
type Event struct {
	Name string
	Data chat.Object
}

func event(name string, kv ...any) Event {
	o := chat.Object{}
	o.Set("type", name)
	for i := 0; i+1 < len(kv); i += 2 {
		o.Set(kv[i].(string), kv[i+1])
	}
	return Event{Name: name, Data: o}
}

// StreamFromOpenAI turns OpenAI chat-completion chunks (first choice) into Messages API events.
type StreamFromOpenAI struct {
	Model    string
	started  bool
	open     int64 // index of the open content block, -1 for none
	openText bool
	blocks   int64
	tools    map[int64]int64 // tool_calls index -> content block index
	stop     string
	usage    chat.Usage
}

func (t *StreamFromOpenAI) start(id string) []Event {
	t.started, t.open, t.tools = true, -1, map[int64]int64{}
	msg := chat.Object{}
	msg.Set("id", messageID(id))
	msg.Set("type", "message")
	msg.Set("role", "assistant")
	msg.Set("model", t.Model)
	msg.Set("content", []chat.Object{})
	msg["stop_reason"] = json.RawMessage("null")
	msg["stop_sequence"] = json.RawMessage("null")
	msg.Set("usage", usageObject(chat.Usage{}))
	return []Event{event("message_start", "message", msg)}
}

func (t *StreamFromOpenAI) closeOpen() []Event {
	if t.open < 0 {
		return nil
	}
	ev := event("content_block_stop", "index", t.open)
	t.open, t.openText = -1, false
	return []Event{ev}
}

// Chunk translates one OpenAI chunk.
func (t *StreamFromOpenAI) Chunk(c chat.Object) []Event {
	var out []Event
	if !t.started {
		out = t.start(c.Str("id"))
	}
	if u, ok := chat.UsageOf(c); ok {
		t.usage = u
	}
	choices := c.Objs("choices")
	if len(choices) == 0 || choices[0] == nil {
		return out
	}
	d := choices[0].Obj("delta")
	if s := d.Str("content"); s != "" {
		if !t.openText {
			out = append(out, t.closeOpen()...)
			t.open, t.openText = t.blocks, true
			t.blocks++
			out = append(out, event("content_block_start", "index", t.open, "content_block", textBlock("")))
		}
		delta := chat.Object{}
		delta.Set("type", "text_delta")
		delta.Set("text", s)
		out = append(out, event("content_block_delta", "index", t.open, "delta", delta))
	}
	for _, tc := range d.Objs("tool_calls") {
		n, _ := tc.Int("index")
		fn := tc.Obj("function")
		blk, known := t.tools[n]
		if !known {
			out = append(out, t.closeOpen()...)
			blk = t.blocks
			t.blocks++
			t.tools[n], t.open = blk, blk
			b := chat.Object{}
			b.Set("type", "tool_use")
			b.Set("id", tc.Str("id"))
			b.Set("name", fn.Str("name"))
			b["input"] = json.RawMessage("{}")
			out = append(out, event("content_block_start", "index", blk, "content_block", b))
		}
		if args := fn.Str("arguments"); args != "" {
			delta := chat.Object{}
			delta.Set("type", "input_json_delta")
			delta.Set("partial_json", args)
			out = append(out, event("content_block_delta", "index", blk, "delta", delta))
		}
	}
	if f := choices[0].Str("finish_reason"); f != "" {
		t.stop = StopReason(f)
	}
	return out
}

// End closes the message after the last chunk.
func (t *StreamFromOpenAI) End() []Event {
	var out []Event
	if !t.started {
		out = t.start("")
	}
	out = append(out, t.closeOpen()...)
	stop := t.stop
	if stop == "" {
		stop = "end_turn"
	}
	delta := chat.Object{}
	delta.Set("stop_reason", stop)
	delta["stop_sequence"] = json.RawMessage("null")
	out = append(out, event("message_delta", "delta", delta, "usage", usageObject(t.usage)))
	out = append(out, event("message_stop"))
	return out
}
