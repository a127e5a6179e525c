package mcpgw

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/mcpgw/pin"
)

// untilSignal calls change, then again every 200 ms, until ch is signalled. The client opens the stream the
// gateway pushes notifications on in the background once its session is initialised, and a notification sent
// before that stream is open has nowhere to go: the first change may be lost, none after it.
func untilSignal(t *testing.T, ch <-chan struct{}, what string, change func(i int)) {
	t.Helper()
	deadline := time.After(testDeadline)
	for i := 0; ; i++ {
		change(i)
		select {
		case <-ch:
			return
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func greetPrompt(description string) *mcp.Prompt {
	return &mcp.Prompt{Name: "greet", Description: description, Arguments: []*mcp.PromptArgument{{Name: "who", Required: true}}}
}

func greetHandler(ctx context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
	return &mcp.GetPromptResult{Messages: []*mcp.PromptMessage{{Role: "user",
		Content: &mcp.TextContent{Text: "Say hello to " + req.Params.Arguments["who"]}}}}, nil
}

func readmeResource(description string) *mcp.Resource {
	return &mcp.Resource{Name: "readme", URI: "mem://notes/readme", MIMEType: "text/plain", Description: description}
}

func readmeHandler(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
	return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, MIMEType: "text/plain", Text: "readme"}}}, nil
}

// notifications/prompts/list_changed and notifications/resources/list_changed reach the client through the
// gateway: when a backend adds a prompt or a resource, when a changed definition is quarantined (the item
// disappears), and when an administrator releases it from quarantine (it comes back, in its new version). The
// same holds for tools/list_changed on a tool's release.
func TestListChangedReachesClient(t *testing.T) {
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme})
	a := e.connect(t, alice)
	const readme = "notes+mem://notes/readme"
	if !contains(promptNames(t, a), "notes__greet") || !contains(resourceURIs(t, a), readme) {
		t.Fatalf("prompts %v, resources %v", promptNames(t, a), resourceURIs(t, a))
	}

	// A prompt added by the backend (trusted, clean: approved at once).
	var added string
	untilSignal(t, a.promptsChange, "prompts/list_changed after the backend added a prompt", func(i int) {
		added = fmt.Sprintf("extra%d", i)
		srv.AddPrompt(&mcp.Prompt{Name: added, Description: "Asks for a summary."},
			func(context.Context, *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
				return &mcp.GetPromptResult{Messages: []*mcp.PromptMessage{{Role: "user", Content: &mcp.TextContent{Text: "Summarise."}}}}, nil
			})
	})
	if got := promptNames(t, a); !contains(got, "notes__"+added) {
		t.Fatalf("prompts after the change %v, want notes__%s", got, added)
	}

	// A resource added by the backend. The stream is open by now: the first change arrives.
	drain(a.resourcesChange)
	srv.AddResource(&mcp.Resource{Name: "changelog", URI: "mem://notes/changelog", MIMEType: "text/plain"},
		func(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, Text: "v1"}}}, nil
		})
	waitSignal(t, a.resourcesChange, "resources/list_changed after the backend added a resource")
	if got := resourceURIs(t, a); !contains(got, "notes+mem://notes/changelog") {
		t.Fatalf("resources after the change %v", got)
	}

	// The backend changes the prompt's, the resource's and a tool's definitions after approval: each is
	// quarantined and disappears, and the client is told.
	drain(a.promptsChange)
	drain(a.resourcesChange)
	drain(a.toolsChange)
	srv.AddPrompt(greetPrompt("Greets someone, now warmly."), greetHandler)
	waitSignal(t, a.promptsChange, "prompts/list_changed after the prompt was quarantined")
	srv.AddResource(readmeResource("The readme, now longer."), readmeHandler)
	waitSignal(t, a.resourcesChange, "resources/list_changed after the resource was quarantined")
	mcp.AddTool(srv, &mcp.Tool{Name: "echo", Description: "Returns the text it is given, now louder."},
		func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
			return nil, echoOut{Text: strings.ToUpper(in.Text)}, nil
		})
	waitSignal(t, a.toolsChange, "tools/list_changed after the tool was quarantined")
	eventually(t, "quarantined items hidden", func() bool {
		return !contains(promptNames(t, a), "notes__greet") && !contains(resourceURIs(t, a), readme) &&
			!contains(a.toolNames(t), "notes__echo")
	})

	// An administrator releases each new version: the client is told again and sees it.
	for _, rel := range []struct {
		kind pin.Kind
		name string
		ch   chan struct{}
		back func() bool
	}{
		{pin.Prompt, "notes__greet", a.promptsChange, func() bool { return contains(promptNames(t, a), "notes__greet") }},
		{pin.Resource, readme, a.resourcesChange, func() bool { return contains(resourceURIs(t, a), readme) }},
		{pin.Tool, "notes__echo", a.toolsChange, func() bool { return contains(a.toolNames(t), "notes__echo") }},
	} {
		v := findVersion(t, e, rel.kind, rel.name)
		if v.State != pin.Quarantined {
			t.Fatalf("%s: %+v, want quarantined", rel.name, v)
		}
		drain(rel.ch)
		if code := decideVersion(t, e, adminID, "approve", v); code != http.StatusOK {
			t.Fatalf("approve %s: %d", rel.name, code)
		}
		waitSignal(t, rel.ch, "list_changed after "+rel.name+" was released")
		if !rel.back() {
			t.Fatalf("%s not listed after its list_changed", rel.name)
		}
	}
	res, err := a.cs.ListPrompts(ctxT(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res.Prompts {
		if p.Name == "notes__greet" && p.Description != "Greets someone, now warmly." {
			t.Fatalf("released prompt %+v, want the approved new version", p)
		}
	}
}

// A backend's log messages during a call reach the client that made the call, named after the backend, and not
// another client of the same shared backend.
func TestLogsReachOnlyTheCaller(t *testing.T) {
	srv, _ := newTestServer("notes")
	b, _ := inMemory("notes", srv, true)
	e := start(t, Config{Backends: []Backend{b}, Policies: allowAcme})
	a, o := e.connect(t, alice), e.connect(t, bob)
	for _, c := range []*client{a, o} {
		if err := c.cs.SetLoggingLevel(ctxT(t), &mcp.SetLoggingLevelParams{Level: "info"}); err != nil {
			t.Fatal(err)
		}
	}
	// The call's log messages travel on the call's own response stream; bob's would come on his standalone
	// stream, which must be open for the check below to mean anything: wait for a list_changed on it.
	untilSignal(t, o.toolsChange, "bob's notification stream", func(i int) {
		mcp.AddTool(srv, &mcp.Tool{Name: fmt.Sprintf("extra%d", i), Description: "Does nothing."},
			func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
				return &mcp.CallToolResult{}, nil, nil
			})
	})

	res, err := a.call(t, "notes__slow", map[string]any{"steps": 3, "delay_ms": 5})
	if err != nil || text(res) != "done" {
		t.Fatalf("slow: %v %v", res, err)
	}
	eventually(t, "alice's three log messages", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		n := 0
		for _, l := range a.logs {
			if l.Logger == "notes/slow" && strings.HasPrefix(fmt.Sprint(l.Data), "step ") {
				n++
			}
		}
		return n == 3
	})
	// Bob's session is still live: a ping answers, and by then nothing of alice's call has reached him.
	time.Sleep(200 * time.Millisecond)
	if err := o.cs.Ping(ctxT(t), nil); err != nil {
		t.Fatal(err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.logs) != 0 {
		t.Fatalf("bob received log messages of alice's call: %+v", o.logs[0])
	}
}
