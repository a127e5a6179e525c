package provider

import (
	"context"
	"errors"
	"io"
	"net/http"

	"github.com/umbra-mesh/umbra/llmgw/chat"
	"github.com/umbra-mesh/umbra/llmgw/sse"
)

// errNotMessages is returned when a native Messages request is sent to an endpoint of another kind.
var errNotMessages = &Error{Status: 400, Message: "the endpoint does not speak the Messages API"}

// messagesBody is body for this endpoint: its upstream model name, stream as asked.
func (ep *Endpoint) messagesBody(body chat.Object, stream bool) ([]byte, error) {
	b := body.Clone()
	b.Set("model", ep.Model)
	delete(b, "stream")
	if stream {
		b.Set("stream", true)
	}
	return b.Encode()
}

// BetaHeader names the Messages API's opt-in features; a caller's value is passed on with its request.
const BetaHeader = "anthropic-beta"

// Messages sends a Messages API request as it is (only the model is replaced by the upstream's name) to an
// Anthropic endpoint and returns the answer as it came. beta, when not empty, is sent as BetaHeader.
func (ep *Endpoint) Messages(ctx context.Context, body chat.Object, beta string) (chat.Object, error) {
	if ep.Kind != Anthropic {
		return nil, errNotMessages
	}
	b, err := ep.messagesBody(body, false)
	if err != nil {
		return nil, &Error{Status: 400, Message: err.Error()}
	}
	resp, err := ep.doWith(ctx, http.MethodPost, "/messages", b, betaHeader(beta))
	if err != nil {
		return nil, err
	}
	return readObject(resp)
}

func betaHeader(beta string) http.Header {
	if beta == "" {
		return nil
	}
	return http.Header{http.CanonicalHeaderKey(BetaHeader): {beta}}
}

// EventStream yields the events of a streamed Messages API answer as they came. Next returns io.EOF after
// message_stop; a stream that breaks off returns an *Error with Status 0, and an error event an *Error with
// Status 502 and the upstream's type and message.
type EventStream struct {
	body io.ReadCloser
	r    *sse.Reader
	done bool
}

// MessagesStream sends a streaming Messages API request as it is to an Anthropic endpoint.
func (ep *Endpoint) MessagesStream(ctx context.Context, body chat.Object, beta string) (*EventStream, error) {
	if ep.Kind != Anthropic {
		return nil, errNotMessages
	}
	b, err := ep.messagesBody(body, true)
	if err != nil {
		return nil, &Error{Status: 400, Message: err.Error()}
	}
	resp, err := ep.doWith(ctx, http.MethodPost, "/messages", b, betaHeader(beta))
	if err != nil {
		return nil, err
	}
	return &EventStream{body: resp.Body, r: sse.NewReader(resp.Body)}, nil
}

// Next returns the next event's type and data.
func (s *EventStream) Next() (string, chat.Object, error) {
	if s.done {
		return "", nil, io.EOF
	}
	ev, err := s.r.Next()
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return "", nil, broken(err)
	}
	o, err := chat.ParseObject(ev.Data)
	if err != nil {
		return "", nil, &Error{Status: 502, Message: "upstream sent an event that is not a JSON object"}
	}
	typ := o.Str("type")
	if typ == "" {
		typ = ev.Name
	}
	switch typ {
	case "error":
		e := o.Obj("error")
		return "", nil, &Error{Status: 502, Type: e.Str("type"), Message: e.Str("message")}
	case "message_stop":
		s.done = true
	}
	return typ, o, nil
}

// Close ends the stream.
func (s *EventStream) Close() error { return s.body.Close() }
