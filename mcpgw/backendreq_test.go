package mcpgw

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/internal/audit"
)

// asker is a backend whose tools ask the client: a sampling request and an elicitation, answered into the
// tool's result. "wait" blocks until released, to keep a call in flight.
func asker(release <-chan struct{}) *mcp.Server {
	srv := mcp.NewServer(&mcp.Implementation{Name: "asker", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "summarise", Description: "Summarises with the caller's model."},
		func(ctx context.Context, req *mcp.CallToolRequest, in struct{}) (*mcp.CallToolResult, any, error) {
			res, err := req.Session.CreateMessage(ctx, &mcp.CreateMessageParams{MaxTokens: 20,
				Messages: []*mcp.SamplingMessage{{Role: "user", Content: &mcp.TextContent{Text: "summarise"}}}})
			if err != nil {
				return nil, nil, err
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "model said: " + res.Content.(*mcp.TextContent).Text}}}, nil, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "confirm", Description: "Asks the caller to confirm."},
		func(ctx context.Context, req *mcp.CallToolRequest, in struct{}) (*mcp.CallToolResult, any, error) {
			res, err := req.Session.Elicit(ctx, &mcp.ElicitParams{Message: "Proceed?",
				RequestedSchema: map[string]any{"type": "object", "properties": map[string]any{"ok": map[string]any{"type": "boolean"}}}})
			if err != nil {
				return nil, nil, err
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "answer: " + res.Action}}}, nil, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "wait", Description: "Waits until released."},
		func(ctx context.Context, req *mcp.CallToolRequest, in struct{}) (*mcp.CallToolResult, any, error) {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "released"}}}, nil, nil
		})
	return srv
}

// answering connects as id with a client that answers sampling and elicitation (or declares neither), and
// counts the requests it gets.
func (e *env) answering(t *testing.T, id, answer string, capable bool, asked *atomic.Int32) *mcp.ClientSession {
	t.Helper()
	opts := &mcp.ClientOptions{}
	if capable {
		opts.CreateMessageHandler = func(context.Context, *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
			asked.Add(1)
			return &mcp.CreateMessageResult{Role: "assistant", Model: "m", Content: &mcp.TextContent{Text: answer}}, nil
		}
		opts.ElicitationHandler = func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			asked.Add(1)
			return &mcp.ElicitResult{Action: answer}, nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "answering", Version: "1"}, opts).Connect(ctx,
		&mcp.StreamableClientTransport{Endpoint: e.url, HTTPClient: httpClient(id), MaxRetries: -1}, nil)
	if err != nil {
		t.Fatalf("connect as %s: %v", id, err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

func callText(t *testing.T, cs *mcp.ClientSession, name string) (string, error) {
	t.Helper()
	res, err := cs.CallTool(ctxT(t), &mcp.CallToolParams{Name: name, Arguments: map[string]any{}})
	if err != nil {
		return "", err
	}
	return text(res), nil
}

// A backend's sampling and elicitation requests reach the caller whose call caused them and no other; a
// caller whose client did not declare the capability, and a request that cannot be attributed to one caller,
// are refused.
func TestSamplingAndElicitationForwarded(t *testing.T) {
	release := make(chan struct{})
	b, _ := inMemory("asker", asker(release), true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme})
	var aliceAsked, bobAsked, plainAsked atomic.Int32
	a := e.answering(t, alice, "accept", true, &aliceAsked)
	bb := e.answering(t, bob, "decline", true, &bobAsked)
	eventually(t, "asker tools listed", func() bool {
		res, err := a.ListTools(ctxT(t), nil)
		return err == nil && len(res.Tools) == 3
	})

	if got, err := callText(t, a, "asker__summarise"); err != nil || got != "model said: accept" {
		t.Fatalf("alice's sampling: %q %v", got, err)
	}
	if got, err := callText(t, bb, "asker__confirm"); err != nil || got != "answer: decline" {
		t.Fatalf("bob's elicitation: %q %v", got, err)
	}
	if aliceAsked.Load() != 1 || bobAsked.Load() != 1 {
		t.Fatalf("requests reached alice %d times and bob %d times, want once each", aliceAsked.Load(), bobAsked.Load())
	}
	e.rec.find(t, "forwarded sampling record", func(r audit.Record) bool {
		return r.Kind == KindBackendRequest && r.Actor == alice && r.Decision == audit.DecisionAllow && dataOf(r)["method"] == "sampling/createMessage"
	})

	// A client without the capabilities: refused, and nobody else is asked instead.
	plain := e.answering(t, alice, "", false, &plainAsked)
	if got, err := callText(t, plain, "asker__summarise"); err != nil || !strings.Contains(got, "did not declare the sampling capability") {
		t.Fatalf("sampling for a client without the capability: %q %v", got, err)
	}
	if got, err := callText(t, plain, "asker__confirm"); err != nil || !strings.Contains(got, "did not declare the elicitation capability") {
		t.Fatalf("elicitation for a client without the capability: %q %v", got, err)
	}
	if aliceAsked.Load() != 1 || bobAsked.Load() != 1 {
		t.Fatalf("a refused request reached another session: alice %d, bob %d", aliceAsked.Load(), bobAsked.Load())
	}

	// Bob's call is in flight on the shared backend session when alice's call asks: the request cannot be
	// attributed, so neither is asked.
	waiting := make(chan error, 1)
	go func() { _, err := callText(t, bb, "asker__wait"); waiting <- err }()
	eventually(t, "bob's call in flight", func() bool {
		bk := e.g.backs[0]
		bk.mu.Lock()
		defer bk.mu.Unlock()
		return len(bk.flights) == 1
	})
	got, err := callText(t, a, "asker__summarise")
	if err != nil || !strings.Contains(got, "several callers") {
		t.Fatalf("sampling with two callers in flight: %q %v", got, err)
	}
	close(release)
	select {
	case err := <-waiting:
		if err != nil {
			t.Fatalf("bob's waiting call: %v", err)
		}
	case <-time.After(testDeadline):
		t.Fatal("bob's call did not end")
	}
	if aliceAsked.Load() != 1 || bobAsked.Load() != 1 {
		t.Fatalf("an unattributable request was forwarded: alice %d, bob %d", aliceAsked.Load(), bobAsked.Load())
	}
	e.rec.find(t, "refused sampling record", func(r audit.Record) bool {
		return r.Kind == KindBackendRequest && r.Decision == audit.DecisionDeny && strings.Contains(r.Reason, "several callers")
	})
}

// On a backend spawned per client, each caller's session is its own: concurrent callers each get their own
// requests.
func TestSamplingPerClientSpawn(t *testing.T) {
	b, _ := inMemory("asker", asker(make(chan struct{})), true)
	b.Spawn = SpawnPerClient
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme})
	var aliceAsked, bobAsked atomic.Int32
	a := e.answering(t, alice, "from alice", true, &aliceAsked)
	bb := e.answering(t, bob, "from bob", true, &bobAsked)
	eventually(t, "asker tools listed", func() bool {
		res, err := a.ListTools(ctxT(t), nil)
		return err == nil && len(res.Tools) == 3
	})
	type answer struct {
		got string
		err error
	}
	results := make(chan answer, 2)
	for _, cs := range []*mcp.ClientSession{a, bb} {
		go func() {
			got, err := callText(t, cs, "asker__summarise")
			results <- answer{got, err}
		}()
	}
	seen := map[string]bool{}
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Fatalf("call: %v", r.err)
		}
		seen[r.got] = true
	}
	if !seen["model said: from alice"] || !seen["model said: from bob"] || aliceAsked.Load() != 1 || bobAsked.Load() != 1 {
		t.Fatalf("answers %v, alice asked %d, bob asked %d", seen, aliceAsked.Load(), bobAsked.Load())
	}
}
