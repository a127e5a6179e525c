package llmgw

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/llmgw/budget"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/provider"
)

// peeked is an upstream stream whose first chunk has arrived. Waiting for it before answering lets a stream
// that fails at once (or ends before any chunk) be retried on another endpoint: the caller has seen nothing.
type peeked struct {
	st    provider.Stream
	first chat.Object
}

func (g *Gateway) streamChat(ctx context.Context, c *call, m *model, req *chat.Request, out responder, wantUsage bool, res *budget.Reservation) {
	pk, ep, err := attempt(ctx, g, c, m, func(ctx context.Context, ep *endpoint) (*peeked, error) {
		st, err := ep.p.ChatStream(ctx, req)
		if err != nil {
			return nil, err
		}
		first, err := st.Next()
		if err != nil {
			_ = st.Close()
			if errors.Is(err, io.EOF) {
				err = &provider.Error{Err: errors.New("stream ended before its first chunk")}
			}
			return nil, err
		}
		return &peeked{st: st, first: first}, nil
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

	rs := g.newResponseStreams()
	var completion strings.Builder
	var outBytes int64
	sawUsage, aborted := false, false
	ch := pk.first
	for {
		if u, ok := chat.UsageOf(ch); ok {
			c.setUsage(ep, u)
			sawUsage = true
		}
		if c.ttft == 0 && hasDelta(ch) {
			c.ttft = time.Since(c.start)
		}
		send, n := g.filterChunk(c, m.Name, ch, rs, wantUsage, &completion)
		outBytes += n
		if send != nil {
			if err := out.chunk(c, send); err != nil {
				c.errCode, c.message = "client_disconnected", "the caller went away during the stream"
				aborted = true
				break
			}
		}
		next, err := pk.st.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			c.upstreamFailed(err)
			e := upstreamError(err)
			c.fail(KindCall, e)
			out.abort(c, e)
			aborted = true
			break
		}
		ch = next
	}
	if !aborted && rs != nil {
		// Choices that ended without a finish_reason still hold text back.
		for _, fl := range rs.flushAll(c, ch, m.Name) {
			if completion.Len() < maxLoggedPrompt {
				for _, choice := range fl.Objs("choices") {
					if idx, _ := choice.Int("index"); idx == 0 {
						completion.WriteString(choice.Obj("delta").Str("content"))
					}
				}
			}
			_ = out.chunk(c, fl)
		}
	}
	if !sawUsage {
		c.setUsage(ep, chat.Usage{Input: req.EstimateInputTokens(), Output: outBytes/4 + 1})
	}
	if g.cfg.LogPrompts {
		c.completion = completion.String()
	}
	g.settle(ctx, c, res)
	if !aborted {
		out.end(c)
	}
}

func hasDelta(ch chat.Object) bool {
	for _, choice := range ch.Objs("choices") {
		d := choice.Obj("delta")
		if d.Str("content") != "" || len(d.Objs("tool_calls")) > 0 {
			return true
		}
	}
	return false
}

// filterChunk readies an upstream chunk for the caller: guardrails on each choice's text, the usage the
// gateway asked for removed unless the caller asked too, and the public model name. It returns nil when
// nothing is left to send, and the bytes of answer text the chunk carried.
func (g *Gateway) filterChunk(c *call, model string, ch chat.Object, rs *responseStreams, wantUsage bool, completion *strings.Builder) (chat.Object, int64) {
	ch = ch.Clone()
	hasUsage := !ch.IsNull("usage")
	if !wantUsage {
		delete(ch, "usage")
	}
	ch.Set("model", model)
	if rs != nil {
		rs.guardOuter(c, ch)
	}
	choices := ch.Objs("choices")
	var n int64
	kept := choices[:0]
	for _, choice := range choices {
		if choice == nil {
			continue
		}
		idx, _ := choice.Int("index")
		delta := choice.Obj("delta")
		if delta == nil {
			delta = chat.Object{} // some servers end a choice with no delta at all
		}
		content := delta.Str("content")
		n += int64(len(content))
		for _, tc := range delta.Objs("tool_calls") {
			n += int64(len(tc.Obj("function").Str("arguments")))
		}
		if rs != nil {
			var ok bool
			if choice, ok = rs.guardChoice(c, choice); !ok {
				continue
			}
			content = choice.Obj("delta").Str("content")
		}
		if idx == 0 && completion != nil && completion.Len() < maxLoggedPrompt {
			completion.WriteString(content)
		}
		kept = append(kept, choice)
	}
	if _, ok := ch["choices"]; ok {
		ch.Set("choices", kept)
	}
	if len(kept) == 0 && (!hasUsage || !wantUsage) && len(choices) > 0 {
		return nil, n // every choice in it was dropped
	}
	if len(choices) == 0 && hasUsage && !wantUsage {
		return nil, n // the usage chunk the gateway asked for
	}
	return ch, n
}
