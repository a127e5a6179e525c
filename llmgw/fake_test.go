package llmgw_test

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/umbra-mesh/umbra/llmgw/chat"
)

// reply is what a fake upstream answers.
type reply struct {
	Pieces   []string   // answer text, one stream chunk per piece
	Tools    []fakeTool // tool calls
	In, Out  int64      // usage reported; zero means derived from the text
	Finish   string     // "" means stop (or tool_calls)
	NoUsage  bool       // report no usage
	DieAfter int        // stream: drop the connection after this many pieces (0: never; -1: before any chunk)
	Refusal  []string   // refusal text, one stream chunk per piece
	Logprobs bool       // log probabilities of the content, one token per piece
	AltToken string     // the first token's top alternative (default: the token itself)
}

// byteValues is text as OpenAI lists a token's bytes.
func byteValues(s string) []int {
	out := make([]int, len(s))
	for i := range len(s) {
		out[i] = int(s[i])
	}
	return out
}

// logprobsOf is the OpenAI "logprobs" member for content pieces from first on.
func (r reply) logprobsOf(pieces []string, first int) map[string]any {
	var entries []any
	for i, p := range pieces {
		alt := p
		if first+i == 0 && r.AltToken != "" {
			alt = r.AltToken
		}
		entries = append(entries, map[string]any{"token": p, "logprob": -0.25, "bytes": byteValues(p),
			"top_logprobs": []any{map[string]any{"token": alt, "logprob": -1.5, "bytes": byteValues(alt)}}})
	}
	return map[string]any{"content": entries, "refusal": nil}
}

type fakeTool struct {
	ID, Name  string
	ArgPieces []string
}

func (r reply) text() string { return strings.Join(r.Pieces, "") }

func (r reply) usage(prompt string) chat.Usage {
	u := chat.Usage{Input: r.In, Output: r.Out}
	if u.Input == 0 {
		u.Input = int64(len(prompt))/4 + 1
	}
	if u.Output == 0 {
		u.Output = int64(len(r.text()))/4 + 1
	}
	return u
}

// upstream is a fake model server speaking the real OpenAI or Anthropic wire protocol.
type upstream struct {
	t     testing.TB
	srv   *httptest.Server
	kind  string // "openai" or "anthropic"
	key   string
	Reply func(body chat.Object) reply
	Embed func(text string) []float64

	mu     sync.Mutex
	bodies []chat.Object

	chats      atomic.Int64 // chat requests received
	failNext   atomic.Int64 // fail this many chat requests ...
	failStatus atomic.Int64 // ... with this status
	health     atomic.Int64 // status of GET /models; 0 means 200
}

func newUpstream(t testing.TB, kind string) *upstream {
	u := &upstream{t: t, kind: kind, key: "sk-upstream-" + kind + "-0123456789abcdef"}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		if s := u.health.Load(); s != 0 && s != 200 {
			http.Error(w, `{"error":{"message":"unhealthy"}}`, int(s))
			return
		}
		fmt.Fprint(w, `{"object":"list","data":[{"id":"m","object":"model"}]}`)
	})
	mux.HandleFunc("POST /v1/chat/completions", u.serveOpenAI)
	mux.HandleFunc("POST /v1/embeddings", u.serveEmbeddings)
	mux.HandleFunc("POST /v1/messages", u.serveAnthropic)
	u.srv = httptest.NewServer(mux)
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) url() string { return u.srv.URL + "/v1" }

func (u *upstream) requests() []chat.Object {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]chat.Object(nil), u.bodies...)
}

func (u *upstream) last() chat.Object {
	rs := u.requests()
	if len(rs) == 0 {
		u.t.Fatal("upstream received no request")
	}
	return rs[len(rs)-1]
}

// read records the body; it answers false (having written an error) when the request must fail.
func (u *upstream) read(w http.ResponseWriter, r *http.Request) (chat.Object, bool) {
	var body chat.Object
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, `{"error":{"message":"bad json"}}`, 400)
		return nil, false
	}
	u.mu.Lock()
	u.bodies = append(u.bodies, body)
	u.mu.Unlock()
	u.chats.Add(1)
	if u.failNext.Add(-1) >= 0 {
		status := int(u.failStatus.Load())
		if status == 429 {
			w.Header().Set("Retry-After", "0")
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":{"message":"induced failure %d","type":"server_error","code":null}}`, status)
		return nil, false
	}
	u.failNext.Store(0)
	return body, true
}

func (u *upstream) reply(body chat.Object) reply {
	if u.Reply != nil {
		return u.Reply(body)
	}
	return reply{Pieces: []string{"Hello", " from ", u.kind, "."}}
}

func promptOf(body chat.Object) string {
	b, _ := json.Marshal(body["messages"])
	return string(b)
}

func writeSSE(w http.ResponseWriter, name string, v any) {
	b, _ := json.Marshal(v)
	if name != "" {
		fmt.Fprintf(w, "event: %s\n", name)
	}
	fmt.Fprintf(w, "data: %s\n\n", b)
	w.(http.Flusher).Flush()
}

// die drops the connection in the middle of a response.
func die(w http.ResponseWriter) {
	w.(http.Flusher).Flush()
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		conn.Close()
	}
}

func (u *upstream) serveOpenAI(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+u.key {
		http.Error(w, `{"error":{"message":"bad key"}}`, 401)
		return
	}
	body, ok := u.read(w, r)
	if !ok {
		return
	}
	rep := u.reply(body)
	usage := rep.usage(promptOf(body))
	finish := rep.Finish
	if finish == "" {
		finish = "stop"
		if len(rep.Tools) > 0 {
			finish = "tool_calls"
		}
	}
	model := body.Str("model")
	if !body.Bool("stream") {
		msg := map[string]any{"role": "assistant", "content": rep.text()}
		if len(rep.Refusal) > 0 {
			msg["refusal"] = strings.Join(rep.Refusal, "")
		}
		var logprobs any
		if rep.Logprobs {
			logprobs = rep.logprobsOf(rep.Pieces, 0)
		}
		if len(rep.Tools) > 0 {
			var calls []any
			for _, tc := range rep.Tools {
				calls = append(calls, map[string]any{"id": tc.ID, "type": "function",
					"function": map[string]any{"name": tc.Name, "arguments": strings.Join(tc.ArgPieces, "")}})
			}
			msg["tool_calls"] = calls
		}
		out := map[string]any{"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": model,
			"choices":            []any{map[string]any{"index": 0, "message": msg, "finish_reason": finish, "logprobs": logprobs}},
			"system_fingerprint": "fp_test"}
		if !rep.NoUsage {
			out["usage"] = map[string]any{"prompt_tokens": usage.Input, "completion_tokens": usage.Output,
				"total_tokens": usage.Total()}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	if rep.DieAfter < 0 {
		die(w)
		return
	}
	chunk := func(delta map[string]any, finish any) map[string]any {
		return map[string]any{"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
			"model": model, "choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}}
	}
	writeSSE(w, "", chunk(map[string]any{"role": "assistant", "content": ""}, nil))
	for i, p := range rep.Pieces {
		if rep.DieAfter > 0 && i == rep.DieAfter {
			die(w)
			return
		}
		c := chunk(map[string]any{"content": p}, nil)
		if rep.Logprobs {
			c["choices"].([]any)[0].(map[string]any)["logprobs"] = rep.logprobsOf([]string{p}, i)
		}
		writeSSE(w, "", c)
	}
	for _, p := range rep.Refusal {
		writeSSE(w, "", chunk(map[string]any{"refusal": p}, nil))
	}
	for n, tc := range rep.Tools {
		writeSSE(w, "", chunk(map[string]any{"tool_calls": []any{map[string]any{"index": n, "id": tc.ID, "type": "function",
			"function": map[string]any{"name": tc.Name, "arguments": ""}}}}, nil))
		for _, a := range tc.ArgPieces {
			writeSSE(w, "", chunk(map[string]any{"tool_calls": []any{map[string]any{"index": n,
				"function": map[string]any{"arguments": a}}}}, nil))
		}
	}
	writeSSE(w, "", chunk(map[string]any{}, finish))
	if so := body.Obj("stream_options"); so != nil && so.Bool("include_usage") && !rep.NoUsage {
		writeSSE(w, "", map[string]any{"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
			"model": model, "choices": []any{}, "usage": map[string]any{"prompt_tokens": usage.Input,
				"completion_tokens": usage.Output, "total_tokens": usage.Total()}})
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
}

func (u *upstream) serveEmbeddings(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+u.key {
		http.Error(w, `{"error":{"message":"bad key"}}`, 401)
		return
	}
	body, ok := u.read(w, r)
	if !ok {
		return
	}
	var inputs []string
	var one string
	if json.Unmarshal(body["input"], &one) == nil {
		inputs = []string{one}
	} else {
		_ = json.Unmarshal(body["input"], &inputs)
	}
	embed := u.Embed
	if embed == nil {
		embed = bagOfWords
	}
	var data []any
	tokens := 0
	for i, in := range inputs {
		data = append(data, map[string]any{"object": "embedding", "index": i, "embedding": embed(in)})
		tokens += len(strings.Fields(in))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"object": "list", "data": data, "model": body.Str("model"),
		"usage": map[string]any{"prompt_tokens": tokens, "total_tokens": tokens}})
}

// bagOfWords is a deterministic embedding: words hashed into 64 buckets, normalised.
func bagOfWords(text string) []float64 {
	v := make([]float64, 64)
	for _, w := range strings.Fields(strings.ToLower(text)) {
		h := fnv.New32a()
		h.Write([]byte(strings.Trim(w, ".,?!")))
		v[h.Sum32()%64]++
	}
	var n float64
	for _, x := range v {
		n += x * x
	}
	if n > 0 {
		for i := range v {
			v[i] /= math.Sqrt(n)
		}
	}
	return v
}

func (u *upstream) serveAnthropic(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("x-api-key") != u.key || r.Header.Get("anthropic-version") == "" {
		w.WriteHeader(401)
		fmt.Fprint(w, `{"type":"error","error":{"type":"authentication_error","message":"bad key"}}`)
		return
	}
	body, ok := u.read(w, r)
	if !ok {
		return
	}
	if _, ok := body.Int("max_tokens"); !ok {
		w.WriteHeader(400)
		fmt.Fprint(w, `{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}`)
		return
	}
	rep := u.reply(body)
	usage := rep.usage(promptOf(body))
	stop := "end_turn"
	if len(rep.Tools) > 0 {
		stop = "tool_use"
	}
	if rep.Finish == "length" {
		stop = "max_tokens"
	}
	model := body.Str("model")
	if !body.Bool("stream") {
		var content []any
		if rep.text() != "" {
			content = append(content, map[string]any{"type": "text", "text": rep.text()})
		}
		for _, tc := range rep.Tools {
			var input any
			_ = json.Unmarshal([]byte(strings.Join(tc.ArgPieces, "")), &input)
			content = append(content, map[string]any{"type": "tool_use", "id": tc.ID, "name": tc.Name, "input": input})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"id": "msg_01", "type": "message", "role": "assistant",
			"model": model, "content": content, "stop_reason": stop, "stop_sequence": nil,
			"usage": map[string]any{"input_tokens": usage.Input, "output_tokens": usage.Output}})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	writeSSE(w, "message_start", map[string]any{"type": "message_start", "message": map[string]any{
		"id": "msg_01", "type": "message", "role": "assistant", "model": model, "content": []any{},
		"stop_reason": nil, "stop_sequence": nil, "usage": map[string]any{"input_tokens": usage.Input, "output_tokens": 1}}})
	writeSSE(w, "ping", map[string]any{"type": "ping"})
	idx := 0
	if len(rep.Pieces) > 0 {
		writeSSE(w, "content_block_start", map[string]any{"type": "content_block_start", "index": idx,
			"content_block": map[string]any{"type": "text", "text": ""}})
		for i, p := range rep.Pieces {
			if rep.DieAfter > 0 && i == rep.DieAfter {
				die(w)
				return
			}
			writeSSE(w, "content_block_delta", map[string]any{"type": "content_block_delta", "index": idx,
				"delta": map[string]any{"type": "text_delta", "text": p}})
		}
		writeSSE(w, "content_block_stop", map[string]any{"type": "content_block_stop", "index": idx})
		idx++
	}
	for _, tc := range rep.Tools {
		writeSSE(w, "content_block_start", map[string]any{"type": "content_block_start", "index": idx,
			"content_block": map[string]any{"type": "tool_use", "id": tc.ID, "name": tc.Name, "input": map[string]any{}}})
		for _, a := range tc.ArgPieces {
			writeSSE(w, "content_block_delta", map[string]any{"type": "content_block_delta", "index": idx,
				"delta": map[string]any{"type": "input_json_delta", "partial_json": a}})
		}
		writeSSE(w, "content_block_stop", map[string]any{"type": "content_block_stop", "index": idx})
		idx++
	}
	writeSSE(w, "message_delta", map[string]any{"type": "message_delta",
		"delta": map[string]any{"stop_reason": stop, "stop_sequence": nil}, "usage": map[string]any{"output_tokens": usage.Output}})
	writeSSE(w, "message_stop", map[string]any{"type": "message_stop"})
}
