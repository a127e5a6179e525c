package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/umbra-mesh/umbra/llmgw/anthropic"
	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/sse"
)

// Stream yields OpenAI chat-completion chunks. Next returns io.EOF after the last one; a stream that breaks
// off returns an *Error with Status 0.
type Stream interface {
	Next() (chat.Object, error)
	Close() error
}

func anthropicBody(r *chat.Request, model string) ([]byte, error) {
	a, err := anthropic.RequestFromOpenAI(r, model)
	if err != nil {
		return nil, &Error{Status: 400, Message: err.Error()}
	}
	return a.Encode()
}

func anthropicResponse(o chat.Object, model string) (chat.Object, chat.Usage) {
	return anthropic.ResponseToOpenAI(o, model)
}

// ChatStream starts a streaming chat completion. The upstream is asked to report usage at the end.
func (ep *Endpoint) ChatStream(ctx context.Context, r *chat.Request) (Stream, error) {
	rr := *r
	rr.Body = r.Body.Clone()
	rr.Model, rr.Stream = ep.Model, true
	rr.Body.Set("stream", true)
	if ep.Kind == Anthropic {
		body, err := anthropicBody(&rr, ep.Model)
		if err != nil {
			return nil, err
		}
		resp, err := ep.do(ctx, http.MethodPost, "/messages", body)
		if err != nil {
			return nil, err
		}
		return &anthropicStream{body: resp.Body, r: sse.NewReader(resp.Body),
			t: &anthropic.StreamToOpenAI{Model: ep.Model}}, nil
	}
	rr.ForceIncludeUsage()
	body, err := rr.Encode()
	if err != nil {
		return nil, fmt.Errorf("provider: %w", err)
	}
	resp, err := ep.do(ctx, http.MethodPost, "/chat/completions", body)
	if err != nil {
		return nil, err
	}
	return &openaiStream{body: resp.Body, r: sse.NewReader(resp.Body)}, nil
}

func broken(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &Error{Err: fmt.Errorf("stream broke off: %w", err)}
}

type openaiStream struct {
	body     io.ReadCloser
	r        *sse.Reader
	finished bool // a finish_reason was seen
	done     bool
}

func (s *openaiStream) Next() (chat.Object, error) {
	if s.done {
		return nil, io.EOF
	}
	ev, err := s.r.Next()
	if errors.Is(err, io.EOF) && s.finished {
		s.done = true
		return nil, io.EOF // some servers end without [DONE]
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, broken(err)
	}
	if string(ev.Data) == "[DONE]" {
		s.done = true
		return nil, io.EOF
	}
	o, err := chat.ParseObject(ev.Data)
	if err != nil {
		return nil, &Error{Status: 502, Message: "upstream sent a chunk that is not a JSON object"}
	}
	if e := o.Obj("error"); e != nil {
		return nil, &Error{Status: 502, Type: e.Str("type"), Code: e.Str("code"), Message: e.Str("message")}
	}
	for _, c := range o.Objs("choices") {
		if c != nil && c.Str("finish_reason") != "" {
			s.finished = true
		}
	}
	return o, nil
}

func (s *openaiStream) Close() error { return s.body.Close() }

type anthropicStream struct {
	body  io.ReadCloser
	r     *sse.Reader
	t     *anthropic.StreamToOpenAI
	queue []chat.Object
}

func (s *anthropicStream) Next() (chat.Object, error) {
	for len(s.queue) == 0 {
		if s.t.Done() {
			return nil, io.EOF
		}
		ev, err := s.r.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, broken(err)
		}
		chunks, err := s.t.Event(ev.Name, ev.Data)
		if err != nil {
			return nil, &Error{Status: 502, Message: err.Error()}
		}
		s.queue = chunks
	}
	c := s.queue[0]
	s.queue = s.queue[1:]
	return c, nil
}

func (s *anthropicStream) Close() error { return s.body.Close() }
