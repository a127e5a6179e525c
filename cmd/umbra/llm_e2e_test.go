package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestLLMOverOverlay: the official OpenAI Go client, through agentsdk and through `umbra llm bridge`, gets
// completions, streamed completions and embeddings from a dark model server behind the LLM gateway; identities
// see the models their policy grants; neither the model server nor the gateway listens on any socket.
func TestLLMOverOverlay(t *testing.T) {
	c := newCLI(t, 5*time.Minute)
	args, _ := devArgs(t, "data")
	c.start("umbra dev ready", args...)
	admin := "data/admin.json"
	enroll := func(org, kind, name string) string { return c.enroll(admin, org, kind, name) }
	gw := enroll("acme", "gateway", "llmgw")
	model := enroll("acme", "llm", "small")
	analyst := enroll("acme", "agent", "analyst")
	intern := enroll("acme", "agent", "intern")
	c.must("", "service", "grant", "--as", admin, "--service", "llmgw", "--bind", gw, "--dial", analyst, "--dial", intern,
		"--dial", "spiffe://umbra.local/umbra/admin/root")
	c.must("", "service", "grant", "--as", admin, "--service", "llm-local", "--bind", model, "--dial", gw)
	server := c.start("serving model", "llm", "serve", "--as", "small.json", "--service", "llm-local", "--sample", "small-1")
	config := `service: llmgw
data: llmgw-data
policies: |
  @id("analyst-all") permit (principal == Umbra::Identity::"` + analyst + `", action, resource);
  @id("intern-small") permit (principal == Umbra::Identity::"` + intern + `", action, resource == Umbra::Model::"small");
models:
  - name: small
    endpoints: [{provider: openai-compatible, overlay: llm-local, model: small-1}]
  - name: big
    endpoints: [{provider: openai-compatible, overlay: llm-local, model: small-1}]
guardrails: {pii: redact, secrets: block}
`
	if err := os.WriteFile(filepath.Join(c.dir, "llmgw.yaml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	gateway := c.start("umbra llmgw ready", "llmgw", "--as", "llmgw.json", "--config", "llmgw.yaml")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	check := func(t *testing.T, client openai.Client, who string) {
		var comp *openai.ChatCompletion
		var err error
		// The gateway reaches the dark model server through the overlay; give it a moment to connect.
		for deadline := time.Now().Add(30 * time.Second); ; {
			comp, err = client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "small",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("summarise the quarterly widget report")}})
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil || !strings.Contains(comp.Choices[0].Message.Content, "widget") {
			t.Fatalf("%s completion: %v", who, err)
		}
		stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "small",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("stream the widget report please")}})
		var b strings.Builder
		for stream.Next() {
			if ch := stream.Current(); len(ch.Choices) > 0 {
				b.WriteString(ch.Choices[0].Delta.Content)
			}
		}
		if err := stream.Err(); err != nil || !strings.Contains(b.String(), "widget") {
			t.Fatalf("%s stream: %q %v", who, b.String(), err)
		}
		emb, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "small",
			Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"widgets", "gadgets"}}})
		if err != nil || len(emb.Data) != 2 || len(emb.Data[0].Embedding) != 16 {
			t.Fatalf("%s embeddings: %v", who, err)
		}
	}

	// Through agentsdk: the HTTP client's requests travel over the overlay.
	an := connectFile(t, filepath.Join(c.dir, "analyst.json"))
	viaSDK := openai.NewClient(option.WithBaseURL("http://llmgw/v1/"), option.WithHTTPClient(an.HTTPClient()), option.WithAPIKey("unused"))
	check(t, viaSDK, "agentsdk")

	// Through the loopback bridge, as a non-Go program would.
	port := strconv.Itoa(freePort(t))
	c.start("llm bridge on", "llm", "bridge", "--as", "intern.json", "--listen", "127.0.0.1:"+port)
	viaBridge := openai.NewClient(option.WithBaseURL("http://127.0.0.1:"+port+"/v1/"), option.WithAPIKey("unused"))
	check(t, viaBridge, "bridge")

	// Models per identity; a forbidden model is refused.
	models := func(client openai.Client) []string {
		page, err := client.Models.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range page.Data {
			ids = append(ids, m.ID)
		}
		slices.Sort(ids)
		return ids
	}
	if got := models(viaSDK); !slices.Equal(got, []string{"big", "small"}) {
		t.Fatalf("analyst's models %v", got)
	}
	if got := models(viaBridge); !slices.Equal(got, []string{"small"}) {
		t.Fatalf("intern's models %v", got)
	}
	_, err := viaBridge.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "big",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 403 {
		t.Fatalf("forbidden model: %v", err)
	}
	// A secret in the prompt is blocked before it leaves the gateway.
	_, err = viaSDK.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "small",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("my key is sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD")}})
	if !errors.As(err, &apiErr) || apiErr.StatusCode/100 != 4 {
		t.Fatalf("secret not blocked: %v", err)
	}

	for _, pid := range []int{server.cmd.Process.Pid, gateway.cmd.Process.Pid} {
		if n := listeningSockets(t, pid); n != 0 {
			t.Fatalf("process %d owns %d listening sockets", pid, n)
		}
	}
	export := c.must("", "audit", "export", "--as", admin)
	for _, want := range []string{`"kind":"llm.call"`, `"kind":"llm.denied"`} {
		if !strings.Contains(export, want) {
			t.Fatalf("audit export lacks %s", want)
		}
	}
	if out := c.must("", "llm", "usage", "--as", admin); !strings.Contains(out, "analyst") {
		t.Fatalf("usage: %s", out)
	}
}
