package mcpbridge

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/workgroups/authz"
)

func TestDeclareIntent(t *testing.T) {
	intent := json.RawMessage(`{"purpose":"triage","category":"support"}`)
	for _, tc := range []struct {
		name, params, want string
	}{
		{"no meta", `{"name":"t","arguments":{}}`, `{"_meta":{"umbra/intent":{"purpose":"triage","category":"support"}},"arguments":{},"name":"t"}`},
		{"other meta kept", `{"name":"t","_meta":{"progressToken":7}}`, `{"_meta":{"progressToken":7,"umbra/intent":{"purpose":"triage","category":"support"}},"name":"t"}`},
		{"client's own intent kept", `{"name":"t","_meta":{"umbra/intent":{"purpose":"mine"}}}`, `{"name":"t","_meta":{"umbra/intent":{"purpose":"mine"}}}`},
		{"null meta", `{"name":"t","_meta":null}`, `{"_meta":{"umbra/intent":{"purpose":"triage","category":"support"}},"name":"t"}`},
		{"not an object", `[1]`, `[1]`},
		{"meta not an object", `{"name":"t","_meta":3}`, `{"name":"t","_meta":3}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(declareIntent(json.RawMessage(tc.params), intent)); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

// A real client through JoinDeclaring to a real streamable HTTP server: a call without an intent arrives with the
// bridge's, a call with its own keeps it.
func TestJoinDeclaringIntent(t *testing.T) {
	srv := mcp.NewServer(&mcp.Implementation{Name: "meta", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "why", Description: "returns the declared intent"},
		func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
			b, _ := json.Marshal(req.Params.Meta[metaIntent])
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: string(b)}}}, nil, nil
		})
	hs := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	defer hs.Close()
	c2bR, c2bW := io.Pipe()
	b2cR, b2cW := io.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- JoinDeclaring(ctx, &mcp.IOTransport{Reader: c2bR, Writer: b2cW}, &mcp.StreamableClientTransport{Endpoint: hs.URL}, nil,
			authz.Intent{Purpose: "triage", Category: "support"})
	}()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).Connect(ctx, &mcp.IOTransport{Reader: b2cR, Writer: c2bW}, nil)
	if err != nil {
		t.Fatal(err)
	}
	why := func(meta mcp.Meta) string {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "why", Meta: meta})
		if err != nil || res.IsError || len(res.Content) != 1 {
			t.Fatalf("call: %+v %v", res, err)
		}
		return res.Content[0].(*mcp.TextContent).Text
	}
	if got := why(nil); got != `{"category":"support","purpose":"triage"}` {
		t.Fatalf("declared by the bridge: %s", got)
	}
	if got := why(mcp.Meta{metaIntent: map[string]any{"purpose": "mine"}}); got != `{"purpose":"mine"}` {
		t.Fatalf("the client's own: %s", got)
	}
	cs.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("join: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("bridge did not end when the client closed")
	}
	// A malformed intent is refused before anything is joined.
	if err := JoinDeclaring(ctx, &mcp.IOTransport{Reader: io.NopCloser(strings.NewReader("")), Writer: b2cW}, &mcp.StreamableClientTransport{Endpoint: hs.URL}, nil,
		authz.Intent{Purpose: "a\nb"}); !errors.Is(err, authz.ErrInvalidIntent) {
		t.Fatalf("malformed intent: %v", err)
	}
}
