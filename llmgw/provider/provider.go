// Package provider calls one upstream model endpoint (OpenAI, Anthropic, or any server speaking the OpenAI
// API) and always answers in the OpenAI chat-completion format, streamed or not.
package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/llmgw/chat"
)

// Kind names the wire protocol an endpoint speaks.
type Kind string

// The kinds.
const (
	OpenAI     Kind = "openai"            // api.openai.com
	Anthropic  Kind = "anthropic"         // api.anthropic.com, the Messages API
	Compatible Kind = "openai-compatible" // vLLM, Ollama, llama.cpp, ... (the OpenAI API without its quirks)
)

// ParseKind reads a kind; "" is OpenAI.
func ParseKind(s string) (Kind, error) {
	switch Kind(s) {
	case "", OpenAI:
		return OpenAI, nil
	case Anthropic, Compatible:
		return Kind(s), nil
	}
	return "", fmt.Errorf("provider: kind %q: want openai, anthropic or openai-compatible", s)
}

// DefaultBaseURL returns the public API base of a kind ("" for Compatible, which has none).
func DefaultBaseURL(k Kind) string {
	switch k {
	case OpenAI:
		return "https://api.openai.com/v1"
	case Anthropic:
		return "https://api.anthropic.com/v1"
	}
	return ""
}

// AnthropicVersion is the Messages API version requested.
const AnthropicVersion = "2023-06-01"

// Size limits on what is read from an upstream.
const (
	maxResponseBytes = 32 << 20
	maxErrorBytes    = 64 << 10
)

// Endpoint is one upstream model. Its fields are read-only once in use.
type Endpoint struct {
	Kind    Kind
	BaseURL string // up to and including the version, e.g. https://api.openai.com/v1
	APIKey  string
	Model   string // the model name upstream
	Client  *http.Client
}

// Error is an upstream failure.
type Error struct {
	Status     int    // HTTP status; 0 when there was no response or it broke off
	Type, Code string // from the upstream's error body, when it had one
	Message    string // the upstream's own message; may be empty
	RetryAfter time.Duration
	Err        error // the cause, for network errors
}

func (e *Error) Error() string {
	switch {
	case e.Status == 0 && e.Err != nil:
		return "provider: " + e.Err.Error()
	case e.Message != "":
		return fmt.Sprintf("provider: upstream status %d: %s", e.Status, e.Message)
	}
	return fmt.Sprintf("provider: upstream status %d", e.Status)
}

func (e *Error) Unwrap() error { return e.Err }

// Retryable reports whether another attempt (on this or another endpoint) may succeed: network errors,
// broken streams, 408, 409, 429 and 5xx. A cancelled context is never retryable.
func Retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Status == 0 || e.Status == 408 || e.Status == 409 || e.Status == 429 || e.Status >= 500
}

func (ep *Endpoint) client() *http.Client {
	if ep.Client != nil {
		return ep.Client
	}
	return http.DefaultClient
}

func (ep *Endpoint) url(path string) string {
	base := ep.BaseURL
	if base == "" {
		base = DefaultBaseURL(ep.Kind)
	}
	return strings.TrimSuffix(base, "/") + path
}

// do sends a request and returns the response if it is 2xx; anything else becomes an *Error.
func (ep *Endpoint) do(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	return ep.doWith(ctx, method, path, body, nil)
}

// doWith is do with extra headers, set before the endpoint's own.
func (ep *Endpoint) doWith(ctx context.Context, method, path string, body []byte, extra http.Header) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, ep.url(path), rd)
	if err != nil {
		return nil, fmt.Errorf("provider: %w", err)
	}
	for k, vs := range extra {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json, text/event-stream")
	switch ep.Kind {
	case Anthropic:
		req.Header.Set("anthropic-version", AnthropicVersion)
		if ep.APIKey != "" {
			req.Header.Set("x-api-key", ep.APIKey)
		}
	default:
		if ep.APIKey != "" {
			req.Header.Set("Authorization", "Bearer "+ep.APIKey)
		}
	}
	resp, err := ep.client().Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &Error{Err: err}
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, errorFrom(resp)
}

// errorFrom reads an OpenAI ({"error":{...}}) or Anthropic ({"type":"error","error":{...}}) error body.
func errorFrom(resp *http.Response) *Error {
	e := &Error{Status: resp.StatusCode}
	if s := resp.Header.Get("Retry-After"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 {
			e.RetryAfter = time.Duration(n) * time.Second
		} else if t, err := http.ParseTime(s); err == nil {
			e.RetryAfter = max(time.Until(t), 0)
		}
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
	if o, err := chat.ParseObject(b); err == nil {
		if eo := o.Obj("error"); eo != nil {
			e.Type, e.Message = eo.Str("type"), eo.Str("message")
			e.Code = eo.Str("code")
		}
	}
	return e
}

func readObject(resp *http.Response) (chat.Object, error) {
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, &Error{Status: 0, Err: fmt.Errorf("reading response: %w", err)}
	}
	if len(b) > maxResponseBytes {
		return nil, &Error{Status: resp.StatusCode, Message: "response too large"}
	}
	o, err := chat.ParseObject(b)
	if err != nil {
		return nil, &Error{Status: 502, Message: "upstream sent a body that is not a JSON object"}
	}
	return o, nil
}

// Chat sends a non-streaming chat completion and returns it in the OpenAI format.
func (ep *Endpoint) Chat(ctx context.Context, r *chat.Request) (chat.Object, error) {
	rr := *r
	rr.Body = r.Body.Clone()
	rr.Model, rr.Stream = ep.Model, false
	delete(rr.Body, "stream")
	delete(rr.Body, "stream_options")
	if ep.Kind == Anthropic {
		body, err := anthropicBody(&rr, ep.Model)
		if err != nil {
			return nil, err
		}
		resp, err := ep.do(ctx, http.MethodPost, "/messages", body)
		if err != nil {
			return nil, err
		}
		o, err := readObject(resp)
		if err != nil {
			return nil, err
		}
		out, _ := anthropicResponse(o, ep.Model)
		return out, nil
	}
	body, err := rr.Encode()
	if err != nil {
		return nil, fmt.Errorf("provider: %w", err)
	}
	resp, err := ep.do(ctx, http.MethodPost, "/chat/completions", body)
	if err != nil {
		return nil, err
	}
	return readObject(resp)
}

// Embeddings sends an embeddings request. Anthropic endpoints have none.
func (ep *Endpoint) Embeddings(ctx context.Context, r *chat.EmbeddingsRequest) (chat.Object, error) {
	if ep.Kind == Anthropic {
		return nil, &Error{Status: 400, Message: "Anthropic endpoints have no embeddings"}
	}
	body := r.Body.Clone()
	body.Set("model", ep.Model)
	b, err := body.Encode()
	if err != nil {
		return nil, fmt.Errorf("provider: %w", err)
	}
	resp, err := ep.do(ctx, http.MethodPost, "/embeddings", b)
	if err != nil {
		return nil, err
	}
	return readObject(resp)
}

// Check probes the endpoint by listing its models; any 2xx answer is healthy.
func (ep *Endpoint) Check(ctx context.Context) error {
	resp, err := ep.do(ctx, http.MethodGet, "/models", nil)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBytes))
	return resp.Body.Close()
}
