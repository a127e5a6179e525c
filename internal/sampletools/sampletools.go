// Package sampletools is a small MCP server with deterministic tools, a resource and a prompt, served over stdio
// by `umbra mcp sample-server`. The demo and the tests use it as a real MCP backend.
package sampletools

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

type textIn struct {
	Text string `json:"text" jsonschema:"the text to work on"`
}

type countOut struct {
	Words int `json:"words"`
	Chars int `json:"chars"`
}

type echoOut struct {
	Text string `json:"text"`
}

type lookupIn struct {
	SKU string `json:"sku" jsonschema:"a product code such as w-1"`
}

type lookupOut struct {
	SKU   string  `json:"sku"`
	Name  string  `json:"name"`
	Price float64 `json:"price"`
	Stock int     `json:"stock"`
}

var catalogue = map[string]lookupOut{
	"w-1": {SKU: "w-1", Name: "widget", Price: 4.20, Stock: 1200},
	"w-2": {SKU: "w-2", Name: "large widget", Price: 9.90, Stock: 300},
	"g-7": {SKU: "g-7", Name: "gadget", Price: 24.00, Stock: 45},
}

// NewServer returns the sample server. name distinguishes instances in tool output.
func NewServer(name string) *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: name, Version: "1.0.0"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "echo", Title: "Echo", Description: "Returns the text it is given.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true}},
		func(_ context.Context, _ *mcp.CallToolRequest, in textIn) (*mcp.CallToolResult, echoOut, error) {
			return nil, echoOut{Text: in.Text}, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "word_count", Title: "Word count", Description: "Counts the words and characters of a text.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true}},
		func(_ context.Context, _ *mcp.CallToolRequest, in textIn) (*mcp.CallToolResult, countOut, error) {
			return nil, countOut{Words: len(strings.Fields(in.Text)), Chars: len([]rune(in.Text))}, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "catalogue_lookup", Title: "Catalogue lookup", Description: "Looks a product up in the catalogue by SKU.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true}},
		func(_ context.Context, _ *mcp.CallToolRequest, in lookupIn) (*mcp.CallToolResult, lookupOut, error) {
			p, ok := catalogue[in.SKU]
			if !ok {
				return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: "no product " + in.SKU}}}, lookupOut{}, nil
			}
			return nil, p, nil
		})
	s.AddResource(&mcp.Resource{URI: "catalogue://index", Name: "catalogue", MIMEType: "text/plain", Description: "All SKUs"},
		func(_ context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			skus := make([]string, 0, len(catalogue))
			for k := range catalogue {
				skus = append(skus, k)
			}
			sort.Strings(skus)
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, MIMEType: "text/plain", Text: strings.Join(skus, "\n")}}}, nil
		})
	s.AddPrompt(&mcp.Prompt{Name: "summarise", Description: "Asks for a summary of a text", Arguments: []*mcp.PromptArgument{{Name: "text", Required: true}}},
		func(_ context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			return &mcp.GetPromptResult{Messages: []*mcp.PromptMessage{{Role: "user",
				Content: &mcp.TextContent{Text: fmt.Sprintf("Summarise in one sentence: %s", req.Params.Arguments["text"])}}}}, nil
		})
	return s
}

// ServeStdio serves the sample server on stdin/stdout until the client goes away or ctx ends. Each tool call
// takes at least delay (0: none), for benchmarks against an upstream of fixed latency.
func ServeStdio(ctx context.Context, name string, delay time.Duration) error {
	s := NewServer(name)
	Delay(s, delay)
	return s.Run(ctx, &mcp.StdioTransport{})
}

// Delay makes every tools/call that s answers wait d first (d <= 0: no change). A call cancelled meanwhile ends
// with its context's error.
func Delay(s *mcp.Server, d time.Duration) {
	if d <= 0 {
		return
	}
	s.AddReceivingMiddleware(func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			if method == "tools/call" {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return nil, ctx.Err()
				}
			}
			return next(ctx, method, req)
		}
	})
}
