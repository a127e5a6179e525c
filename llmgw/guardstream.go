package llmgw

import (
	"encoding/json"
	"maps"
	"slices"

	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
)

// responseStreams guards a streamed answer. Each choice's text arrives in several channels at once: content,
// refusal, each tool call's arguments, provider extensions such as reasoning text, and the log probabilities
// of content and refusal tokens. Every channel is a guard.Stream that holds back its last window, so nothing
// of a window is sent before the window has been judged; log-probability entries are held until the text
// they spell has been judged, and dropped when a finding that redacts or blocks touches them.
type responseStreams struct {
	scanner *guard.Scanner
	window  int
	choices map[int64]*choiceGuard
}

// choiceGuard is the state of one choice.
type choiceGuard struct {
	blocked bool // the caller was told content_filter; the rest of this answer is dropped
	texts   map[string]*textStream
	order   []string // keys of texts in order of first appearance
	lps     map[string]*logprobStream
}

// textStream is one channel of text.
type textStream struct {
	st       *guard.Stream
	field    string
	reported int                                     // findings already added to the call
	place    func(delta map[string]any, text string) // puts text released at the end into a delta
}

// logprobStream holds the log-probability entries of one list ("content" or "refusal") until their text is
// judged.
type logprobStream struct {
	text    *textStream
	arrived int
	queue   []lpEntry
}

type lpEntry struct {
	v          any
	start, end int // the entry's bytes in the stream's text
	drop       bool
}

func (g *Gateway) newResponseStreams() *responseStreams {
	if !g.resGuard.Enabled() {
		return nil
	}
	return &responseStreams{scanner: g.resGuard, window: g.cfg.Guardrails.Window, choices: map[int64]*choiceGuard{}}
}

func (rs *responseStreams) choice(idx int64) *choiceGuard {
	cg := rs.choices[idx]
	if cg == nil {
		cg = &choiceGuard{texts: map[string]*textStream{}, lps: map[string]*logprobStream{}}
		rs.choices[idx] = cg
	}
	return cg
}

func (rs *responseStreams) stream(cg *choiceGuard, key, field string, place func(map[string]any, string)) *textStream {
	ts := cg.texts[key]
	if ts == nil {
		ts = &textStream{st: rs.scanner.NewStream(rs.window), field: field, place: place}
		cg.texts[key] = ts
		cg.order = append(cg.order, key)
	}
	return ts
}

// report adds the stream's new findings to the call and returns them.
func (ts *textStream) report(c *call, cg *choiceGuard) []guard.Finding {
	fs := ts.st.Findings()[ts.reported:]
	ts.reported += len(fs)
	c.addFindings("response", ts.field, fs)
	if ts.st.Blocked() {
		cg.blocked = true
	}
	return fs
}

// write passes a piece of one channel through its stream and returns what may be sent now.
func (rs *responseStreams) write(c *call, cg *choiceGuard, key, field, piece string, place func(map[string]any, string)) string {
	ts := rs.stream(cg, key, field, place)
	out := ts.st.Write(piece)
	ts.report(c, cg)
	return out
}

// scan judges a value that arrives whole (a tool call's name, a member the gateway does not stream).
func (rs *responseStreams) scan(c *call, cg *choiceGuard, v any, path []string) any {
	js := &jsonScan{s: rs.scanner, report: func(field string, fs []guard.Finding) { c.addFindings("response", field, fs) }}
	v = js.value(v, path)
	if js.blocked {
		cg.blocked = true
	}
	return v
}

// name judges a member name; it reports true when a finding acts on it and the member must go.
func (rs *responseStreams) name(c *call, cg *choiceGuard, k string, path []string) bool {
	js := &jsonScan{s: rs.scanner, report: func(field string, fs []guard.Finding) { c.addFindings("response", field, fs) }}
	drop := js.found(k, append(path, k))
	cg.blocked = cg.blocked || js.blocked
	return drop
}

func setText(key string) func(map[string]any, string) {
	return func(d map[string]any, text string) {
		s, _ := d[key].(string)
		d[key] = s + text
	}
}

// setToolArgs puts text into the arguments of tool call idx of a delta (into function_call when idx is nil).
func setToolArgs(idx any) func(map[string]any, string) {
	return func(d map[string]any, text string) {
		var fn map[string]any
		if idx == nil {
			fn, _ = d["function_call"].(map[string]any)
			if fn == nil {
				fn = map[string]any{}
				d["function_call"] = fn
			}
		} else {
			calls, _ := d["tool_calls"].([]any)
			for _, e := range calls {
				if m, ok := e.(map[string]any); ok && sameNumber(m["index"], idx) {
					fn, _ = m["function"].(map[string]any)
					if fn == nil {
						fn = map[string]any{}
						m["function"] = fn
					}
				}
			}
			if fn == nil {
				fn = map[string]any{}
				d["tool_calls"] = append(calls, map[string]any{"index": idx, "function": fn})
			}
		}
		s, _ := fn["arguments"].(string)
		fn["arguments"] = s + text
	}
}

func sameNumber(a, b any) bool {
	x, ok1 := a.(json.Number)
	y, ok2 := b.(json.Number)
	return ok1 && ok2 && x.String() == y.String()
}

// toolCall guards one entry of a delta's tool_calls (or its function_call, with idx nil).
func (rs *responseStreams) toolCall(c *call, cg *choiceGuard, e any, idx any, base string) any {
	m, ok := e.(map[string]any)
	if !ok {
		return rs.scan(c, cg, e, []string{base})
	}
	fn, _ := m["function"].(map[string]any)
	if base == "function_call" {
		fn = m
	}
	var args any
	hasArgs := false
	if fn != nil {
		args, hasArgs = fn["arguments"]
		delete(fn, "arguments")
	}
	rs.scan(c, cg, m, []string{base})
	if s, ok := args.(string); ok && fn != nil {
		key := base
		if idx != nil {
			key += "/" + idx.(json.Number).String()
		}
		fn["arguments"] = rs.write(c, cg, key+"/arguments", fieldToolArgs, s, setToolArgs(idx))
	} else if hasArgs && fn != nil {
		fn["arguments"] = rs.scan(c, cg, args, []string{base, "arguments"})
	}
	return m
}

// logprobs passes a chunk's log-probability entries of one list through its stream and returns the entries
// whose text has been judged and found clean.
func (rs *responseStreams) logprobs(c *call, cg *choiceGuard, list string, entries []any) []any {
	ls := cg.lps[list]
	if ls == nil {
		ls = &logprobStream{text: &textStream{st: rs.scanner.NewStream(rs.window), field: fieldLogprobs}}
		cg.lps[list] = ls
	}
	for _, e := range entries {
		text := entryText(e)
		js := &jsonScan{s: rs.scanner, report: func(field string, fs []guard.Finding) { c.addFindings("response", field, fs) }}
		e = js.value(e, []string{"logprobs"}) // alternatives and bytes, each on its own
		if js.blocked {
			cg.blocked = true
		}
		ls.queue = append(ls.queue, lpEntry{v: e, start: ls.arrived, end: ls.arrived + len(text), drop: js.acted})
		ls.arrived += len(text)
		ls.text.st.Write(text)
		ls.mark(ls.text.report(c, cg))
	}
	return ls.release(ls.text.st.Consumed())
}

// mark drops the held entries that findings which act touch.
func (ls *logprobStream) mark(fs []guard.Finding) {
	for _, f := range fs {
		if !f.Acts() {
			continue
		}
		for i := range ls.queue {
			e := &ls.queue[i]
			if f.Start < max(e.end, e.start+1) && f.End > e.start {
				e.drop = true
			}
		}
	}
}

// release returns the clean entries whose text lies before upTo, and forgets every entry before it.
func (ls *logprobStream) release(upTo int) []any {
	out := []any{}
	n := 0
	for _, e := range ls.queue {
		if e.end > upTo {
			break
		}
		n++
		if !e.drop {
			out = append(out, e.v)
		}
	}
	ls.queue = ls.queue[n:]
	return out
}

// flush ends every channel of a choice, putting what they still held into delta and lp.
func (rs *responseStreams) flush(c *call, cg *choiceGuard, delta, lp map[string]any) {
	for _, key := range cg.order {
		ts := cg.texts[key]
		text := ts.st.Flush()
		ts.report(c, cg)
		if text != "" {
			ts.place(delta, text)
		}
	}
	for _, list := range slices.Sorted(maps.Keys(cg.lps)) {
		ls := cg.lps[list]
		ls.text.st.Flush()
		ls.mark(ls.text.report(c, cg))
		if rel := ls.release(ls.arrived); len(rel) > 0 {
			prev, _ := lp[list].([]any)
			lp[list] = append(prev, rel...)
		}
	}
}

// guardChoice readies one choice of a chunk; it reports false when nothing of it may be sent.
func (rs *responseStreams) guardChoice(c *call, choice chat.Object) (chat.Object, bool) {
	idx, _ := choice.Int("index")
	cg := rs.choice(idx)
	if cg.blocked {
		return nil, false
	}
	delta := map[string]any{}
	if raw, ok := choice["delta"]; ok && !choice.IsNull("delta") {
		if v, err := decodeJSON(raw); err == nil {
			if m, ok := v.(map[string]any); ok {
				delta = m
			}
		}
	}
	out := map[string]any{}
	for k, v := range delta {
		if rs.name(c, cg, k, nil) {
			continue
		}
		switch k {
		case "role":
			out[k] = rs.scan(c, cg, v, []string{k})
		case "tool_calls":
			calls, ok := v.([]any)
			if !ok {
				out[k] = rs.scan(c, cg, v, []string{k})
				continue
			}
			for i, e := range calls {
				var idx any = json.Number("0")
				if m, ok := e.(map[string]any); ok {
					if n, ok := m["index"].(json.Number); ok {
						idx = n
					}
				}
				calls[i] = rs.toolCall(c, cg, e, idx, "tool_calls")
			}
			out[k] = calls
		case "function_call":
			out[k] = rs.toolCall(c, cg, v, nil, "function_call")
		default:
			if s, ok := v.(string); ok {
				field := fieldOf([]string{k})
				out[k] = rs.write(c, cg, k, field, s, setText(k))
			} else {
				out[k] = rs.scan(c, cg, v, []string{k})
			}
		}
	}
	var lp map[string]any
	if raw, ok := choice["logprobs"]; ok && !choice.IsNull("logprobs") {
		v, _ := decodeJSON(raw)
		m, _ := v.(map[string]any)
		lp = map[string]any{}
		for k, e := range m {
			if rs.name(c, cg, k, []string{"logprobs"}) {
				continue
			}
			if list, ok := e.([]any); ok && (k == "content" || k == "refusal") {
				lp[k] = rs.logprobs(c, cg, k, list)
			} else {
				lp[k] = rs.scan(c, cg, e, []string{"logprobs", k})
			}
		}
	}
	res := chat.Object{}
	for k, raw := range choice {
		res[k] = raw
	}
	js := &jsonScan{s: rs.scanner, report: func(field string, fs []guard.Finding) { c.addFindings("response", field, fs) }}
	js.members(res, "index", "delta", "logprobs", "finish_reason")
	cg.blocked = cg.blocked || js.blocked
	if choice.Str("finish_reason") != "" {
		if lp == nil {
			lp = map[string]any{}
		}
		rs.flush(c, cg, out, lp)
		if len(lp) == 0 {
			lp = nil
		}
	}
	if cg.blocked {
		blocked := chat.Object{}
		blocked.Set("index", idx)
		blocked.Set("delta", map[string]any{})
		blocked.Set("finish_reason", "content_filter")
		return blocked, true
	}
	if b, err := encodeJSON(out); err == nil {
		res["delta"] = b
	}
	if lp != nil {
		if b, err := encodeJSON(lp); err == nil {
			res["logprobs"] = b
		}
	}
	return res, true
}

// flushAll ends the choices that finished without a finish_reason: a chunk per choice with what they still
// held, shaped after like.
func (rs *responseStreams) flushAll(c *call, like chat.Object, model string) []chat.Object {
	var out []chat.Object
	for _, idx := range slices.Sorted(maps.Keys(rs.choices)) {
		cg := rs.choices[idx]
		if cg.blocked {
			continue
		}
		delta, lp := map[string]any{}, map[string]any{}
		rs.flush(c, cg, delta, lp)
		if cg.blocked {
			out = append(out, chunkFor(like, model, idx, map[string]any{}, nil, "content_filter"))
			continue
		}
		if len(delta) == 0 && len(lp) == 0 {
			continue
		}
		out = append(out, chunkFor(like, model, idx, delta, lp, ""))
	}
	return out
}

// guardOuter scans the members of a chunk around its choices; a blocking finding there is scrubbed.
func (rs *responseStreams) guardOuter(c *call, ch chat.Object) {
	js := &jsonScan{s: rs.scanner, report: func(field string, fs []guard.Finding) { c.addFindings("response", field, fs) }}
	js.members(ch, "choices", "model")
}

// chunkFor is a chunk carrying one choice's delta, shaped after like.
func chunkFor(like chat.Object, model string, idx int64, delta, lp map[string]any, finish string) chat.Object {
	choice := chat.Object{}
	choice.Set("index", idx)
	if b, err := encodeJSON(delta); err == nil {
		choice["delta"] = b
	}
	if len(lp) > 0 {
		if b, err := encodeJSON(lp); err == nil {
			choice["logprobs"] = b
		}
	}
	if finish != "" {
		choice.Set("finish_reason", finish)
	}
	ch := chat.Object{}
	ch.Set("id", like.Str("id"))
	ch.Set("object", "chat.completion.chunk")
	if created, ok := like.Int("created"); ok {
		ch.Set("created", created)
	}
	ch.Set("model", model)
	ch.Set("choices", []chat.Object{choice})
	return ch
}
