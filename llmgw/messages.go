package llmgw

import (
	"net/http"
	"strings"

	"github.com/umbra-mesh/umbra/llmgw/anthropic"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/provider"
	"github.com/umbra-mesh/umbra/llmgw/sse"
)

// serveMessages is the Anthropic Messages ingress. A request for a model served only by Anthropic endpoints
// goes upstream natively (messagesNative); any other (a model with OpenAI-shaped endpoints, the routing
// model) is translated to a chat completion, served, and its answer translated back, streamed or not.
func (g *Gateway) serveMessages(w http.ResponseWriter, r *http.Request) {
	c := newCall("chat", "anthropic")
	out := &anthropicResponder{w: w}
	defer func() { g.finish(r.Context(), c) }()
	if !g.admit(r, c, out) {
		return
	}
	body, aerr := g.readBody(r)
	if aerr != nil {
		c.fail(KindInvalid, aerr)
		out.fail(c, aerr)
		return
	}
	if in, err := chat.ParseObject(body); err == nil {
		name := in.Str("model")
		routing := g.router != nil && name == g.cfg.Router.Name
		if m := g.models[name]; nativeModel(m) && !routing {
			g.messagesNative(r.Context(), c, in, strings.Join(r.Header.Values(provider.BetaHeader), ","), m, out)
			return
		}
		if g.models[name] == nil && !routing && name != "" {
			// Said before the translation, which may not know the request's blocks.
			c.requested = name
			e := errorf(http.StatusNotFound, "invalid_request_error", codeModelNotFound, "model %s does not exist", name)
			e.Param = "model"
			c.fail(KindInvalid, e)
			out.fail(c, e)
			return
		}
	}
	req, err := anthropic.RequestToOpenAI(body)
	if err != nil {
		e := invalid("%v", err)
		c.fail(KindInvalid, e)
		out.fail(c, e)
		return
	}
	out.t = &anthropic.StreamFromOpenAI{Model: req.Model}
	g.chat(r.Context(), c, req, out, true)
}

// anthropicResponder answers in the Messages API format.
type anthropicResponder struct {
	w   http.ResponseWriter
	sse *sse.Writer
	t   *anthropic.StreamFromOpenAI
}

func anthropicError(e *apiError, requestID string) []byte {
	b, _ := anthropic.ErrorBody(anthropic.ErrorType(e.Status), e.Message+" (request "+requestID+")").Encode()
	return b
}

func (a *anthropicResponder) fail(c *call, e *apiError) {
	setCallHeaders(a.w, c)
	setRetryAfter(a.w, e.RetryAfter)
	writeJSON(a.w, e.Status, anthropicError(e, c.id))
}

func (a *anthropicResponder) complete(c *call, resp chat.Object) {
	b, err := anthropic.ResponseFromOpenAI(resp, c.model).Encode()
	if err != nil {
		a.fail(c, errorf(http.StatusBadGateway, "server_error", codeUpstream, "the model endpoint sent an unusable response"))
		return
	}
	setCallHeaders(a.w, c)
	writeJSON(a.w, http.StatusOK, b)
}

func (a *anthropicResponder) write(c *call, evs []anthropic.Event) error {
	if a.sse == nil {
		setCallHeaders(a.w, c)
		a.sse = sse.NewWriter(a.w)
	}
	for _, ev := range evs {
		b, err := ev.Data.Encode()
		if err != nil {
			return err
		}
		if err := a.sse.Write(ev.Name, b); err != nil {
			return err
		}
	}
	return nil
}

func (a *anthropicResponder) chunk(c *call, ch chat.Object) error {
	a.t.Model = c.model
	return a.write(c, a.t.Chunk(ch))
}

func (a *anthropicResponder) end(c *call) { _ = a.write(c, a.t.End()) }

func (a *anthropicResponder) abort(c *call, e *apiError) {
	if a.sse == nil {
		a.fail(c, e)
		return
	}
	_ = a.sse.Write("error", anthropicError(e, c.id))
}
