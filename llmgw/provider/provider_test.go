package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/umbra-mesh/umbra/llmgw/chat"
)

func TestRetryable(t *testing.T) {
	for err, want := range map[error]bool{
		&Error{Err: errors.New("refused")}:       true,
		&Error{Status: 429}:                      true,
		&Error{Status: 500}:                      true,
		&Error{Status: 529}:                      true,
		&Error{Status: 408}:                      true,
		&Error{Status: 400}:                      false,
		&Error{Status: 401}:                      false,
		&Error{Status: 404}:                      false,
		context.Canceled:                         false,
		fmt.Errorf("x: %w", &Error{Status: 503}): true,
		errors.New("other"):                      false,
	} {
		if Retryable(err) != want {
			t.Errorf("Retryable(%v) = %v", err, !want)
		}
	}
}

func serve(t *testing.T, h http.HandlerFunc) *Endpoint {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &Endpoint{Kind: Compatible, BaseURL: srv.URL + "/v1", Model: "m"}
}

func TestErrorBodies(t *testing.T) {
	for _, tc := range []struct {
		body, retryAfter string
		typ, msg         string
	}{
		{`{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}`, "3", "requests", "slow down"},
		{`{"type":"error","error":{"type":"overloaded_error","message":"busy"}}`, "", "overloaded_error", "busy"},
		{`<html>bad gateway</html>`, "", "", ""},
	} {
		ep := serve(t, func(w http.ResponseWriter, r *http.Request) {
			if tc.retryAfter != "" {
				w.Header().Set("Retry-After", tc.retryAfter)
			}
			w.WriteHeader(429)
			fmt.Fprint(w, tc.body)
		})
		r, _ := chat.ParseRequest([]byte(`{"model":"x","messages":[{"role":"user","content":"hi"}]}`))
		_, err := ep.Chat(context.Background(), r)
		var pe *Error
		if !errors.As(err, &pe) || pe.Status != 429 || pe.Type != tc.typ || pe.Message != tc.msg {
			t.Errorf("%s: %#v", tc.body, err)
		}
		if tc.retryAfter == "3" && pe.RetryAfter.Seconds() != 3 {
			t.Errorf("retry after %v", pe.RetryAfter)
		}
	}
}

func TestOpenAIStreamEnds(t *testing.T) {
	r, _ := chat.ParseRequest([]byte(`{"model":"x","messages":[{"role":"user","content":"hi"}]}`))
	for _, tc := range []struct {
		name, body string
		ok         bool
	}{
		{"done", "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n", true},
		{"finished without done", "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n", true},
		{"cut off", "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n", false},
		{"error event", "data: {\"error\":{\"message\":\"overloaded\"}}\n\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := serve(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				fmt.Fprint(w, tc.body)
			})
			st, err := ep.ChatStream(context.Background(), r)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			for {
				_, err = st.Next()
				if err != nil {
					break
				}
			}
			if errors.Is(err, io.EOF) != tc.ok {
				t.Errorf("ended with %v", err)
			}
			if !tc.ok && !Retryable(err) && tc.name == "cut off" {
				t.Errorf("a cut-off stream is not marked as a network failure: %v", err)
			}
		})
	}
}
