package mcpgw

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// A caller subscribes to a resource through the gateway; the backend's update reaches it under the exposed
// URI, and not a caller who may not read the resource (whose subscription is refused as for an unknown
// resource). The last unsubscription reaches the backend.
func TestResourceSubscription(t *testing.T) {
	subs, unsubs := make(chan string, 4), make(chan string, 4)
	srv := mcp.NewServer(&mcp.Implementation{Name: "feed", Version: "1"}, &mcp.ServerOptions{
		SubscribeHandler:   func(_ context.Context, req *mcp.SubscribeRequest) error { subs <- req.Params.URI; return nil },
		UnsubscribeHandler: func(_ context.Context, req *mcp.UnsubscribeRequest) error { unsubs <- req.Params.URI; return nil },
	})
	srv.AddResource(&mcp.Resource{Name: "status", URI: "mem://feed/status", MIMEType: "text/plain"},
		func(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, Text: "green"}}}, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "echo", Description: "Returns the text it is given."},
		func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
			return nil, echoOut{Text: in.Text}, nil
		})
	b, _ := inMemory("feed", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: `
permit (principal == Umbra::Identity::"` + alice + `", action, resource);
permit (principal == Umbra::Identity::"` + bob + `", action in [Umbra::Action::"list_tool", Umbra::Action::"call_tool"], resource);`})

	updates := map[string]chan string{alice: make(chan string, 4), bob: make(chan string, 4)}
	sessions := map[string]*mcp.ClientSession{}
	for _, id := range []string{alice, bob} {
		ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
		cs, err := mcp.NewClient(&mcp.Implementation{Name: "subscriber", Version: "1"}, &mcp.ClientOptions{
			ResourceUpdatedHandler: func(_ context.Context, req *mcp.ResourceUpdatedNotificationRequest) { updates[id] <- req.Params.URI },
		}).Connect(ctx, &mcp.StreamableClientTransport{Endpoint: e.url, HTTPClient: httpClient(id), MaxRetries: -1}, nil)
		cancel()
		if err != nil {
			t.Fatalf("connect as %s: %v", id, err)
		}
		t.Cleanup(func() { cs.Close() })
		sessions[id] = cs
	}
	const uri = "feed+mem://feed/status"
	if caps := sessions[alice].InitializeResult().Capabilities; caps.Resources == nil || !caps.Resources.Subscribe {
		t.Fatalf("the gateway does not advertise subscriptions: %+v", caps.Resources)
	}
	if err := sessions[alice].Subscribe(ctxT(t), &mcp.SubscribeParams{URI: uri}); err != nil {
		t.Fatalf("alice subscribes: %v", err)
	}
	select {
	case got := <-subs:
		if got != "mem://feed/status" {
			t.Fatalf("the backend got a subscription to %q, want its own URI", got)
		}
	case <-time.After(testDeadline):
		t.Fatal("the subscription did not reach the backend")
	}
	if err := sessions[bob].Subscribe(ctxT(t), &mcp.SubscribeParams{URI: uri}); err == nil || !strings.Contains(strings.ToLower(err.Error()), "not found") {
		t.Fatalf("bob, who may not read the resource, subscribed: %v", err)
	}

	if err := srv.ResourceUpdated(ctxT(t), &mcp.ResourceUpdatedNotificationParams{URI: "mem://feed/status"}); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-updates[alice]:
		if got != uri {
			t.Fatalf("alice was told of %q, want %q", got, uri)
		}
	case <-time.After(testDeadline):
		t.Fatal("the update did not reach alice")
	}
	select {
	case got := <-updates[bob]:
		t.Fatalf("bob was told of an update to %q", got)
	case <-time.After(300 * time.Millisecond):
	}

	if err := sessions[alice].Unsubscribe(ctxT(t), &mcp.UnsubscribeParams{URI: uri}); err != nil {
		t.Fatalf("alice unsubscribes: %v", err)
	}
	select {
	case got := <-unsubs:
		if got != "mem://feed/status" {
			t.Fatalf("the backend was unsubscribed from %q", got)
		}
	case <-time.After(testDeadline):
		t.Fatal("the last unsubscription did not reach the backend")
	}
}
