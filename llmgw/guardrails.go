package llmgw

import (
	"net/http"
	"slices"

	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
)

// guardChat scans a request's messages, redacting in place; it returns an error when a finding blocks.
func (g *Gateway) guardChat(c *call, req *chat.Request) *apiError {
	if !g.reqGuard.Enabled() {
		return nil
	}
	blocked := false
	for _, t := range req.Texts() {
		// Injection is looked for in what users and tools say, not in the operator's system prompt or what
		// the model said.
		injection := t.Role == "user" || t.Role == "tool" || t.Role == "function"
		out, fs, b := g.reqGuard.Apply(t.Text, injection)
		c.addFindings("request", fs)
		blocked = blocked || b
		if out != t.Text {
			req.SetText(t, out)
		}
	}
	if blocked {
		return blockedError(c)
	}
	return nil
}

// guardTexts scans embedding inputs.
func (g *Gateway) guardTexts(c *call, texts []string) ([]string, *apiError) {
	if !g.reqGuard.Enabled() || len(texts) == 0 {
		return texts, nil
	}
	out := make([]string, len(texts))
	blocked := false
	for i, t := range texts {
		var fs []guard.Finding
		var b bool
		out[i], fs, b = g.reqGuard.Apply(t, false)
		c.addFindings("request", fs)
		blocked = blocked || b
	}
	if blocked {
		return nil, blockedError(c)
	}
	return out, nil
}

func blockedError(c *call) *apiError {
	var kinds []string
	for _, f := range c.findings {
		if f.Mode == guard.Block && !slices.Contains(kinds, f.Detector) {
			kinds = append(kinds, f.Detector)
		}
	}
	return errorf(http.StatusBadRequest, "invalid_request_error", codeGuardrail,
		"the request was blocked by a guardrail (%v)", kinds)
}

// guardCompletion scans a whole completion's answers. A blocked answer is emptied and finishes with
// "content_filter", as OpenAI's own filter reports it.
func (g *Gateway) guardCompletion(c *call, resp chat.Object) {
	if !g.resGuard.Enabled() {
		return
	}
	choices := resp.Objs("choices")
	changed := false
	for i, ch := range choices {
		m := ch.Obj("message")
		if m == nil {
			continue
		}
		text := m.Str("content")
		out, fs, blocked := g.resGuard.Apply(text, false)
		c.addFindings("response", fs)
		switch {
		case blocked:
			m.Set("content", "")
			ch.Set("finish_reason", "content_filter")
		case out != text:
			m.Set("content", out)
		default:
			continue
		}
		ch.Set("message", m)
		choices[i], changed = ch, true
	}
	if changed {
		resp.Set("choices", choices)
	}
}

// responseStreams scans the streamed answer of each choice.
type responseStreams struct {
	scanner  *guard.Scanner
	window   int
	streams  map[int64]*guard.Stream
	reported map[int64]int // findings already added to the call
}

func (g *Gateway) newResponseStreams() *responseStreams {
	if !g.resGuard.Enabled() {
		return nil
	}
	return &responseStreams{scanner: g.resGuard, window: g.cfg.Guardrails.Window,
		streams: map[int64]*guard.Stream{}, reported: map[int64]int{}}
}

func (rs *responseStreams) get(idx int64) *guard.Stream {
	s := rs.streams[idx]
	if s == nil {
		s = rs.scanner.NewStream(rs.window)
		rs.streams[idx] = s
	}
	return s
}

// report adds findings of choice idx not yet added.
func (rs *responseStreams) report(c *call, idx int64) {
	fs := rs.streams[idx].Findings()
	c.addFindings("response", fs[rs.reported[idx]:])
	rs.reported[idx] = len(fs)
}
