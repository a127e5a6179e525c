package mcpgw

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzHandler sends arbitrary bodies to the gateway's MCP endpoint, outside a session and inside one: the
// JSON-RPC framing, the body limit, the SDK's decoding and the gateway's checks must never panic, hang or answer
// with something that is not JSON-RPC.
func FuzzHandler(f *testing.F) {
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(f, Config{Backends: []Backend{b}, Policies: allowAcme + `
		@id("no-x") forbid (principal, action == Umbra::Action::"call_tool", resource) when { context.arguments has x };`,
		Limits: Limits{MaxRequest: 8 << 10, CallTimeout: 100 * time.Millisecond, CallsPerMinute: -1},
		Logger: slog.New(slog.DiscardHandler)})
	session := e.connect(f, alice).cs.ID()
	h := e.g.Handler()
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"f","version":"1"}}}`,
		`{"jsonrpc":"2.0","id":2,"method":"tools/list"}`,
		`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"notes__echo","arguments":{"text":"hi"}}}`,
		`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notes__echo","arguments":{"text":"a","text":"b"}}}`,
		`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"notes__echo","arguments":[1,2]}}`,
		`{"jsonrpc":"2.0","id":"s","method":"resources/read","params":{"uri":"notes+mem://notes/items/1"}}`,
		`{"jsonrpc":"2.0","id":7,"method":"prompts/get","params":{"name":"notes__greet","arguments":{"who":"x"}}}`,
		`[{"jsonrpc":"2.0","id":8,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":8}}]`,
		`{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"notes__echo","arguments":{"x":1},"_meta":{"umbra/approval":"apr_00"}}}`,
		`{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"notes__echo","arguments":{"text":"` + strings.Repeat("y", 9000) + `"}}}`,
		`{"id":`, `null`, `[]`, `{"jsonrpc":"1.0"}`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, inSession bool) {
		req := httptest.NewRequest("POST", "/", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set(identityHdr, alice)
		if inSession {
			req.Header.Set("Mcp-Session-Id", session)
			req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
		}
		w := httptest.NewRecorder()
		done := make(chan struct{})
		go func() { defer close(done); h.ServeHTTP(w, req) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("request did not finish: %q", body)
		}
		res := w.Result()
		if res.StatusCode >= 500 {
			t.Fatalf("status %d for %q: %s", res.StatusCode, body, w.Body.String())
		}
		if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") && !json.Valid(w.Body.Bytes()) {
			t.Fatalf("invalid JSON answer for %q: %s", body, w.Body.String())
		}
		if res.StatusCode == http.StatusOK && strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
			for _, line := range strings.Split(w.Body.String(), "\n") {
				if data, ok := strings.CutPrefix(line, "data: "); ok && !json.Valid([]byte(data)) {
					t.Fatalf("invalid JSON event for %q: %s", body, data)
				}
			}
		}
	})
}

func TestRequestID(t *testing.T) {
	for body, want := range map[string]string{
		`{"jsonrpc":"2.0","id":7,"method":"x","params":{"a":"` + strings.Repeat("z", 50): "7",
		`{"id":"abc"}`:                     `"abc"`,
		`{"method":"x","params":{"id":3}}`: "",
		`[{"id":1}]`:                       "",
		`{"jsonrpc":"2.0","params":{"a":1`: "",
	} {
		if got := string(requestID([]byte(body))); got != want {
			t.Errorf("requestID(%.40q) = %q, want %q", body, got, want)
		}
	}
}
