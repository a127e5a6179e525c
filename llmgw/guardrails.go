package llmgw

import (
	"encoding/json"
	"net/http"
	"slices"

	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/guard"
)

// requestSkip are request members the guardrails leave alone: the gateway reads or replaces them itself.
var requestSkip = []string{"model", "messages", "stream"}

// guardChat scans a request, redacting in place: every string of every message (content and its parts,
// tool calls' names and arguments, refusals, names) and of every other member (tools and functions with their
// descriptions and parameter schemas, response_format, ...). It returns an error when a finding blocks.
func (g *Gateway) guardChat(c *call, req *chat.Request) *apiError {
	if !g.reqGuard.Enabled() {
		return nil
	}
	report := func(field string, fs []guard.Finding) { c.addFindings("request", field, fs) }
	blocked := false
	for i, m := range req.Messages {
		// Injection is looked for in what users and tools say, not in the operator's system prompt or what
		// the model said.
		role := m.Str("role")
		js := &jsonScan{s: g.reqGuard, injection: role == "user" || role == "tool" || role == "function", report: report}
		if out, ok := js.object(m); ok {
			req.Messages[i] = out
		}
		blocked = blocked || js.blocked
	}
	rest := chat.Object{}
	for k, raw := range req.Body {
		if !slices.Contains(requestSkip, k) {
			rest[k] = raw
		}
	}
	js := &jsonScan{s: g.reqGuard, report: report}
	if out, ok := js.object(rest); ok {
		for k := range rest {
			delete(req.Body, k)
		}
		for k, raw := range out {
			req.Body[k] = raw
		}
	}
	if blocked || js.blocked {
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
		c.addFindings("request", "input", fs)
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

// guardCompletion scans a whole completion: every string of every choice (content, refusal, tool calls,
// log probabilities, provider extensions) and of the members around them. A choice with a blocking finding
// is emptied and finishes with "content_filter", as OpenAI's own filter reports it; a choice with any finding
// that redacts or blocks loses its log probabilities, whose tokens would spell the text out again. Outside the
// choices, a blocking finding is replaced by its placeholder.
func (g *Gateway) guardCompletion(c *call, resp chat.Object) {
	if !g.resGuard.Enabled() {
		return
	}
	report := func(field string, fs []guard.Finding) { c.addFindings("response", field, fs) }
	(&jsonScan{s: g.resGuard, report: report}).members(resp, "choices")
	raw, ok := resp["choices"]
	if !ok {
		return
	}
	var choices []json.RawMessage
	if json.Unmarshal(raw, &choices) != nil {
		js := &jsonScan{s: g.resGuard, report: report}
		if nv := js.scanRaw(raw, []string{"choices"}); js.changed {
			resp["choices"] = nv
		}
		return
	}
	changed := false
	for i, chRaw := range choices {
		if out, ok := g.guardChoice(chRaw, report); ok {
			choices[i], changed = out, true
		}
	}
	if changed {
		resp.Set("choices", choices)
	}
}

// guardChoice scans one choice of a completion; it reports false when nothing changed.
func (g *Gateway) guardChoice(raw json.RawMessage, report func(string, []guard.Finding)) (json.RawMessage, bool) {
	v, err := decodeJSON(raw)
	if err != nil {
		return json.RawMessage("null"), true
	}
	js := &jsonScan{s: g.resGuard, report: report}
	ch, ok := v.(map[string]any)
	if !ok {
		out := js.scanRaw(raw, nil)
		return out, js.changed
	}
	// Log probabilities spell the answer out token by token: a finding split across tokens is found in
	// their joined text.
	if lp, ok := ch["logprobs"].(map[string]any); ok {
		js.text(logprobText(lp), []string{"logprobs"})
	}
	js.value(ch, nil)
	if js.acted && ch["logprobs"] != nil {
		ch["logprobs"] = nil
		js.changed = true
	}
	if js.blocked {
		idx := ch["index"]
		ch = map[string]any{"index": idx, "message": map[string]any{"role": "assistant", "content": ""},
			"finish_reason": "content_filter", "logprobs": nil}
		js.changed = true
	}
	if !js.changed {
		return raw, false
	}
	out, err := encodeJSON(ch)
	if err != nil {
		return json.RawMessage("null"), true
	}
	return out, true
}
