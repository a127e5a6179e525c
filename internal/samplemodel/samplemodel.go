// Package samplemodel is a small deterministic model server that speaks the OpenAI API (chat completions,
// streamed and not, embeddings, models). The demo runs it as a private model on the overlay so that everything
// works offline; tests use it as a real upstream. Its answers are derived from the prompt, never random.
package samplemodel

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"
)

// Handler serves the API under /v1 for one model name.
func Handler(model string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"object": "list", "data": []any{map[string]any{"id": model, "object": "model", "owned_by": "umbra-sample"}}})
	})
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) { chat(w, r, model) })
	mux.HandleFunc("POST /v1/embeddings", func(w http.ResponseWriter, r *http.Request) { embeddings(w, r, model) })
	return mux
}

type chatRequest struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
}

func text(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(raw, &parts) == nil {
		var b strings.Builder
		for _, p := range parts {
			b.WriteString(p.Text)
		}
		return b.String()
	}
	return ""
}

func tokens(s string) int { return max(1, len(strings.Fields(s))) }

// Answer is the sample model's deterministic reply to a prompt.
func Answer(prompt string) string {
	words := strings.Fields(prompt)
	if len(words) > 12 {
		words = words[:12]
	}
	return fmt.Sprintf("Summary (%d words in): %s.", len(strings.Fields(prompt)), strings.Join(words, " "))
}

func chat(w http.ResponseWriter, r *http.Request, model string) {
	var req chatRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<20)).Decode(&req); err != nil || len(req.Messages) == 0 {
		w.WriteHeader(http.StatusBadRequest)
		writeJSON(w, map[string]any{"error": map[string]any{"message": "messages are required", "type": "invalid_request_error"}})
		return
	}
	prompt := text(req.Messages[len(req.Messages)-1].Content)
	var all strings.Builder
	for _, m := range req.Messages {
		all.WriteString(text(m.Content) + " ")
	}
	answer := Answer(prompt)
	usage := map[string]int{"prompt_tokens": tokens(all.String()), "completion_tokens": tokens(answer)}
	usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
	id := fmt.Sprintf("chatcmpl-%x", sha256.Sum256([]byte(all.String())))[:24]
	created := time.Now().Unix()
	if !req.Stream {
		writeJSON(w, map[string]any{"id": id, "object": "chat.completion", "created": created, "model": model,
			"choices": []any{map[string]any{"index": 0, "finish_reason": "stop", "message": map[string]any{"role": "assistant", "content": answer}}},
			"usage":   usage})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	flusher, _ := w.(http.Flusher)
	send := func(v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(w, "data: %s\n\n", b)
		if flusher != nil {
			flusher.Flush()
		}
	}
	chunk := func(delta map[string]any, finish any) map[string]any {
		return map[string]any{"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}}
	}
	send(chunk(map[string]any{"role": "assistant", "content": ""}, nil))
	for i, word := range strings.SplitAfter(answer, " ") {
		_ = i
		send(chunk(map[string]any{"content": word}, nil))
	}
	send(chunk(map[string]any{}, "stop"))
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		send(map[string]any{"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": []any{}, "usage": usage})
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	if flusher != nil {
		flusher.Flush()
	}
}

func embeddings(w http.ResponseWriter, r *http.Request, model string) {
	var req struct {
		Input json.RawMessage `json:"input"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<20)).Decode(&req); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		writeJSON(w, map[string]any{"error": map[string]any{"message": "input is required", "type": "invalid_request_error"}})
		return
	}
	var inputs []string
	var one string
	if json.Unmarshal(req.Input, &one) == nil {
		inputs = []string{one}
	} else if err := json.Unmarshal(req.Input, &inputs); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		writeJSON(w, map[string]any{"error": map[string]any{"message": "input must be a string or strings", "type": "invalid_request_error"}})
		return
	}
	data := make([]any, len(inputs))
	n := 0
	for i, in := range inputs {
		data[i] = map[string]any{"object": "embedding", "index": i, "embedding": Embed(in)}
		n += tokens(in)
	}
	writeJSON(w, map[string]any{"object": "list", "model": model, "data": data, "usage": map[string]int{"prompt_tokens": n, "total_tokens": n}})
}

// Embed maps text to a deterministic unit vector of 16 dimensions (a hash of its words, so texts sharing words
// are close).
func Embed(s string) []float64 {
	v := make([]float64, 16)
	for _, word := range strings.Fields(strings.ToLower(s)) {
		sum := sha256.Sum256([]byte(word))
		for i := range v {
			v[i] += float64(int16(binary.BigEndian.Uint16(sum[2*i:]))) / 32768
		}
	}
	var norm float64
	for _, x := range v {
		norm += x * x
	}
	if norm = math.Sqrt(norm); norm > 0 {
		for i := range v {
			v[i] /= norm
		}
	}
	return v
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// WithDelay serves h after holding each request for d: an upstream of fixed latency, for benchmarks. A request
// whose client goes away meanwhile is not served. d <= 0 returns h.
func WithDelay(h http.Handler, d time.Duration) http.Handler {
	if d <= 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			h.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	})
}
