package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/internal/audit"
)

// A client lists and calls tools of a stdio backend and of a streamable HTTP backend through the gateway, and
// uses resources, templates, prompts, progress, logging and cancellation.
func TestProtocolThroughGateway(t *testing.T) {
	remote, remoteEv := newTestServer("remote")
	e := start(t, Config{
		Backends: []Backend{stdioBackend("local", true), httpBackend(t, "remote", remote, true)},
		Policies: allowAcme,
	})
	c := e.connect(t, alice)
	ctx := ctxT(t)

	if got := c.cs.InitializeResult().ServerInfo.Name; got != "umbra-mcpgw" {
		t.Errorf("server name %q", got)
	}

	t.Run("tools keep their definitions", func(t *testing.T) {
		res, err := c.cs.ListTools(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]*mcp.Tool{}
		for _, tool := range res.Tools {
			byName[tool.Name] = tool
		}
		for _, backend := range []string{"local", "remote"} {
			echo := byName[backend+"__echo"]
			if echo == nil {
				t.Fatalf("%s__echo missing from %v", backend, c.toolNames(t))
			}
			if echo.Title != "Echo" || echo.Description != "Returns the text it is given." ||
				echo.Annotations == nil || !echo.Annotations.ReadOnlyHint || echo.OutputSchema == nil {
				t.Errorf("%s__echo lost parts of its definition: %+v", backend, echo)
			}
			schema, _ := json.Marshal(echo.InputSchema)
			if !strings.Contains(string(schema), `"text"`) {
				t.Errorf("input schema lost: %s", schema)
			}
		}
	})

	t.Run("calls reach both backends", func(t *testing.T) {
		for _, backend := range []string{"local", "remote"} {
			res, err := c.call(t, backend+"__echo", map[string]any{"text": "hi"})
			if err != nil {
				t.Fatal(err)
			}
			out, _ := json.Marshal(res.StructuredContent)
			if res.IsError || !strings.Contains(string(out), `"server":"`+backend+`"`) {
				t.Fatalf("%s: %+v %s", backend, res, out)
			}
		}
		call := e.rec.find(t, "call record", func(r audit.Record) bool {
			d := dataOf(r)
			return r.Kind == KindCall && d["tool"] == "local__echo" && d["args_digest"] != nil && d["args"] == nil
		})
		e.rec.find(t, "outcome record", func(r audit.Record) bool {
			d := dataOf(r)
			return r.Kind == KindOutcome && d["ref"] == dataOf(call)["ref"] && d["status"] == statusOK && d["result_bytes"] != nil
		})
	})

	t.Run("tool errors are results", func(t *testing.T) {
		res, err := c.call(t, "remote__fail", map[string]any{})
		if err != nil {
			t.Fatal(err)
		}
		if !res.IsError || !strings.Contains(text(res), "disk is full") {
			t.Fatalf("want isError result, got %+v", res)
		}
		_, err = c.call(t, "remote__nope", map[string]any{})
		if err == nil || !strings.Contains(err.Error(), `unknown tool "remote__nope"`) {
			t.Fatalf("unknown tool: %v", err)
		}
	})

	t.Run("resources and templates", func(t *testing.T) {
		res, err := c.cs.ListResources(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		var uris []string
		for _, r := range res.Resources {
			uris = append(uris, r.URI)
		}
		if !contains(uris, "local+mem://local/readme") || !contains(uris, "remote+mem://remote/readme") {
			t.Fatalf("resources %v", uris)
		}
		read, err := c.cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "local+mem://local/readme"})
		if err != nil {
			t.Fatal(err)
		}
		if len(read.Contents) != 1 || read.Contents[0].Text != "readme of local" || read.Contents[0].URI != "local+mem://local/readme" {
			t.Fatalf("read %+v", read.Contents[0])
		}
		tmpls, err := c.cs.ListResourceTemplates(ctx, nil)
		if err != nil || len(tmpls.ResourceTemplates) != 2 {
			t.Fatalf("templates %v, %v", tmpls, err)
		}
		item, err := c.cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "remote+mem://remote/items/42"})
		if err != nil {
			t.Fatal(err)
		}
		if item.Contents[0].Text != "item 42" {
			t.Fatalf("template read %+v", item.Contents[0])
		}
		if _, err := c.cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "remote+mem://local/readme"}); err == nil {
			t.Fatal("read another backend's URI under the wrong prefix")
		}
	})

	t.Run("prompts", func(t *testing.T) {
		res, err := c.cs.ListPrompts(ctx, nil)
		if err != nil || len(res.Prompts) != 2 {
			t.Fatalf("prompts %v, %v", res, err)
		}
		got, err := c.cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "local__greet", Arguments: map[string]string{"who": "Ada"}})
		if err != nil {
			t.Fatal(err)
		}
		if tc, ok := got.Messages[0].Content.(*mcp.TextContent); !ok || tc.Text != "Say hello to Ada from local" {
			t.Fatalf("prompt %+v", got.Messages[0].Content)
		}
	})

	t.Run("progress and logging", func(t *testing.T) {
		if err := c.cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "info"}); err != nil {
			t.Fatal(err)
		}
		params := &mcp.CallToolParams{Name: "remote__slow", Arguments: map[string]any{"steps": 3, "delay_ms": 5}}
		params.SetProgressToken("tok-1")
		res, err := c.cs.CallTool(ctx, params)
		if err != nil || text(res) != "done" {
			t.Fatalf("slow: %v %v", res, err)
		}
		eventually(t, "three progress notifications with the client's token", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			n := 0
			for _, p := range c.progress {
				if p.ProgressToken == "tok-1" {
					n++
				}
			}
			return n == 3
		})
		eventually(t, "log messages from the backend", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			for _, l := range c.logs {
				if l.Logger == "remote/slow" && l.Data == "step 1" {
					return true
				}
			}
			return false
		})
	})

	t.Run("cancellation reaches the backend", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		params := &mcp.CallToolParams{Name: "remote__slow", Arguments: map[string]any{"steps": 1, "delay_ms": 60000}}
		errc := make(chan error, 1)
		go func() {
			_, err := c.cs.CallTool(cctx, params)
			errc <- err
		}()
		time.Sleep(200 * time.Millisecond)
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled call: %v", err)
		}
		select {
		case <-remoteEv.cancelled:
		case <-time.After(testDeadline):
			t.Fatal("the backend never saw the cancellation")
		}
	})
}
