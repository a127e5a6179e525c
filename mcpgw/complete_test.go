package mcpgw

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// completer serves a prompt and a resource template whose arguments it completes, and records the
// references it is asked about.
func completer(asked chan<- mcp.CompleteReference) *mcp.Server {
	srv := mcp.NewServer(&mcp.Implementation{Name: "completer", Version: "1"}, &mcp.ServerOptions{
		CompletionHandler: func(_ context.Context, req *mcp.CompleteRequest) (*mcp.CompleteResult, error) {
			asked <- *req.Params.Ref
			var vals []string
			for _, v := range []string{"Ada", "Alan", "Grace"} {
				if strings.HasPrefix(v, req.Params.Argument.Value) {
					vals = append(vals, v)
				}
			}
			return &mcp.CompleteResult{Completion: mcp.CompletionResultDetails{Values: vals, Total: len(vals)}}, nil
		},
	})
	srv.AddPrompt(&mcp.Prompt{Name: "greet", Description: "Greets someone.", Arguments: []*mcp.PromptArgument{{Name: "who", Required: true}}},
		func(ctx context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			return &mcp.GetPromptResult{Messages: []*mcp.PromptMessage{{Role: "user", Content: &mcp.TextContent{Text: "Hello " + req.Params.Arguments["who"]}}}}, nil
		})
	srv.AddResourceTemplate(&mcp.ResourceTemplate{Name: "person", URITemplate: "people://{name}"},
		func(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, Text: "a person"}}}, nil
		})
	return srv
}

// completion/complete reaches the backend with the backend's own names, for callers whose policy lets them get
// the prompt or read the resource; to others the prompt does not exist, and the backend is not asked.
func TestCompletionForwarded(t *testing.T) {
	asked := make(chan mcp.CompleteReference, 8)
	b, _ := inMemory("people", completer(asked), true)
	e := start(t, Config{Backends: []Backend{b}, Policies: `
permit (principal == Umbra::Identity::"` + alice + `", action, resource);
permit (principal == Umbra::Identity::"` + bob + `", action in [Umbra::Action::"list_resource", Umbra::Action::"read_resource"], resource);`})
	a, bb := e.connect(t, alice), e.connect(t, bob)
	eventually(t, "prompt listed", func() bool { return contains(promptNames(t, a), "people__greet") })

	res, err := a.cs.Complete(ctxT(t), &mcp.CompleteParams{Ref: &mcp.CompleteReference{Type: "ref/prompt", Name: "people__greet"},
		Argument: mcp.CompleteParamsArgument{Name: "who", Value: "A"}})
	if err != nil || !slices.Equal(res.Completion.Values, []string{"Ada", "Alan"}) {
		t.Fatalf("prompt completion: %+v %v", res, err)
	}
	if got := <-asked; got.Type != "ref/prompt" || got.Name != "greet" {
		t.Fatalf("the backend was asked about %+v, want its own prompt name", got)
	}
	res, err = bb.cs.Complete(ctxT(t), &mcp.CompleteParams{Ref: &mcp.CompleteReference{Type: "ref/resource", URI: "people+people://{name}"},
		Argument: mcp.CompleteParamsArgument{Name: "name", Value: "G"}})
	if err != nil || !slices.Equal(res.Completion.Values, []string{"Grace"}) {
		t.Fatalf("template completion: %+v %v", res, err)
	}
	if got := <-asked; got.Type != "ref/resource" || got.URI != "people://{name}" {
		t.Fatalf("the backend was asked about %+v, want its own URI template", got)
	}

	// Bob may not get the prompt: it does not exist for him, and the backend hears nothing.
	_, err = bb.cs.Complete(ctxT(t), &mcp.CompleteParams{Ref: &mcp.CompleteReference{Type: "ref/prompt", Name: "people__greet"},
		Argument: mcp.CompleteParamsArgument{Name: "who", Value: "A"}})
	if err == nil || !strings.Contains(err.Error(), `unknown prompt "people__greet"`) {
		t.Fatalf("completion of a prompt bob may not get: %v", err)
	}
	select {
	case got := <-asked:
		t.Fatalf("the backend was asked about %+v for a caller who may not see it", got)
	default:
	}
}
