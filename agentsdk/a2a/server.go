package a2a

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
)

// ServerConfig configures a Server. The zero value is usable.
type ServerConfig struct {
	// Logger receives failures to answer a call; nil discards them.
	Logger *slog.Logger
	// Hold is how long a streamed event waits to learn whether it is the stream's last, so that the last event is
	// the call's ".result" envelope and a stream costs no envelope beyond its events. An event that waits longer
	// goes as an ".event" envelope, and a stream whose last event went so ends with an empty ".result". Default
	// 50ms.
	Hold time.Duration
	// CallTimeout bounds each call, streams included. Default 10 minutes.
	CallTimeout time.Duration
	// MaxConcurrent bounds the calls a Server answers at once; past it, Handle waits for one to finish (and the
	// session's next envelopes wait with it). Default 16.
	MaxConcurrent int
}

// Server answers A2A calls that arrive as envelopes, by handing each JSON-RPC request to an A2A endpoint and
// sending its answer back as envelopes correlated to the request. Mount its Handle with agentsdk.Agent.Serve.
type Server struct {
	rt       http.RoundTripper
	endpoint string
	cfg      ServerConfig
	slots    chan struct{}
}

// NewServer returns a Server that hands every call to h, an A2A JSON-RPC endpoint in this process such as
// a2asrv.NewJSONRPCHandler(a2asrv.NewHandler(executor)). No socket is opened.
func NewServer(h http.Handler, cfg ServerConfig) *Server {
	return newServer(handlerTransport{h}, "http://a2a.invalid/", cfg)
}

// NewServerURL returns a Server that posts every call to the A2A JSON-RPC endpoint at endpoint (an agent written
// in another language, on a loopback address) with client (nil: a client of its own).
func NewServerURL(endpoint string, client *http.Client, cfg ServerConfig) (*Server, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("a2a: endpoint %q: want an http:// or https:// URL of an A2A JSON-RPC server", endpoint)
	}
	rt := http.RoundTripper(&http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second})
	if client != nil && client.Transport != nil {
		rt = client.Transport
	}
	return newServer(rt, u.String(), cfg), nil
}

func newServer(rt http.RoundTripper, endpoint string, cfg ServerConfig) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Hold <= 0 {
		cfg.Hold = 50 * time.Millisecond
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 10 * time.Minute
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 16
	}
	return &Server{rt: rt, endpoint: endpoint, cfg: cfg, slots: make(chan struct{}, cfg.MaxConcurrent)}
}

// Handle is an agentsdk.Handler: it answers an envelope whose type is an A2A method (see MessageType) in the
// background and returns at once with no reply of its own, so that calls of one session run concurrently (a
// tasks/cancel while a message/stream runs). The answers are sent on s with the request's ID as correlation ID.
// An envelope of any other type is an error (Serve logs it).
func (srv *Server) Handle(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) (string, []byte, error) {
	method, ok := Method(in.Header.Type)
	if !ok {
		return "", nil, fmt.Errorf("a2a: envelope %s has type %q, which carries no A2A method", in.Header.ID, in.Header.Type)
	}
	select {
	case srv.slots <- struct{}{}:
	case <-ctx.Done():
		return "", nil, ctx.Err()
	}
	corr := in.Header.ID.String()
	go func() {
		defer func() { <-srv.slots }()
		reply := func(ctx context.Context, typ string, payload []byte) error {
			_, err := s.Send(ctx, typ, payload, agentsdk.WithCorrelationID(corr))
			return err
		}
		if err := srv.answer(ctx, in.Header.Type, method, in.Payload, reply); err != nil {
			srv.cfg.Logger.Warn("answering an A2A call failed", "session", s.ID().String(), "envelope", corr,
				"method", method, "err", err)
		}
	}()
	return "", nil, nil
}

// replyFunc sends one answer envelope of type typ.
type replyFunc func(ctx context.Context, typ string, payload []byte) error

// answer hands the JSON-RPC request body (of envelope type msgType, carrying method) to the endpoint and sends
// its answer with reply.
func (srv *Server) answer(ctx context.Context, msgType, method string, body []byte, reply replyFunc) error {
	ctx, cancel := context.WithTimeout(ctx, srv.cfg.CallTimeout)
	defer cancel()
	result, event := msgType+ResultSuffix, msgType+EventSuffix
	req, err := parseRequest(body)
	if err != nil {
		return reply(ctx, result, errorResponse(nil, codeParseError, "parse error", err.Error(), nil))
	}
	if req.Method != method {
		// The contract judged the envelope's type: the endpoint runs that method or none.
		detail := fmt.Sprintf("the JSON-RPC method %q is not the envelope's method %q", req.Method, method)
		return reply(ctx, result, errorResponse(req.ID, codeInvalidRequest, "invalid request", detail, nil))
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.endpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	if streaming(method) {
		hreq.Header.Set("Accept", "text/event-stream")
	}
	resp, err := srv.rt.RoundTrip(hreq)
	if err != nil {
		detail := "the agent's A2A endpoint did not answer: " + err.Error()
		return errors.Join(err, reply(ctx, result, errorResponse(req.ID, codeInternalError, "internal error", detail, nil)))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		detail := "the agent's A2A endpoint answered " + resp.Status
		return reply(ctx, result, errorResponse(req.ID, codeInternalError, "internal error", detail, nil))
	}
	if ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); ct == "text/event-stream" {
		return srv.stream(ctx, resp.Body, req.ID, result, event, reply)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	switch {
	case err != nil:
		b = errorResponse(req.ID, codeInternalError, "internal error", "reading the agent's answer failed: "+err.Error(), nil)
	case len(b) > maxBody:
		b = errorResponse(req.ID, codeInternalError, "internal error", "the agent's answer is longer than 4 MiB", nil)
	}
	return reply(ctx, result, bytes.TrimSpace(b))
}

// stream sends each server-sent event of body as an envelope of type event, except the last, which goes as
// result when it follows within Hold (else an empty result ends the stream).
func (srv *Server) stream(ctx context.Context, body io.Reader, id []byte, result, event string, reply replyFunc) error {
	events := make(chan []byte)
	done := make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		done <- readEvents(body, func(data []byte) error {
			select {
			case events <- data:
				return nil
			case <-stop:
				return errors.New("stopped")
			}
		})
	}()
	var held []byte
	hold := time.NewTimer(time.Hour)
	hold.Stop()
	defer hold.Stop()
	for {
		select {
		case data := <-events:
			if held != nil {
				if err := reply(ctx, event, held); err != nil {
					return err
				}
			}
			held = data
			hold.Reset(srv.cfg.Hold)
		case <-hold.C:
			if held != nil {
				if err := reply(ctx, event, held); err != nil {
					return err
				}
				held = nil
			}
		case err := <-done:
			if err != nil && held == nil {
				detail := "the agent's event stream broke: " + err.Error()
				held = errorResponse(id, codeInternalError, "internal error", detail, nil)
			}
			if held == nil {
				held = []byte{}
			}
			return reply(ctx, result, held)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
