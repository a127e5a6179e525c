package chat

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		ok         bool
	}{
		{"minimal", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, true},
		{"parts and null content", `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}}]},{"role":"assistant","content":null,"tool_calls":[]}]}`, true},
		{"stream null", `{"model":"m","stream":null,"messages":[{"role":"user","content":"hi"}]}`, true},
		{"not an object", `[1]`, false},
		{"null", `null`, false},
		{"trailing data", `{"model":"m","messages":[{"role":"user","content":"hi"}]} {}`, false},
		{"no model", `{"messages":[{"role":"user","content":"hi"}]}`, false},
		{"model not a string", `{"model":7,"messages":[{"role":"user","content":"hi"}]}`, false},
		{"empty messages", `{"model":"m","messages":[]}`, false},
		{"message without role", `{"model":"m","messages":[{"content":"hi"}]}`, false},
		{"content a number", `{"model":"m","messages":[{"role":"user","content":5}]}`, false},
		{"part without type", `{"model":"m","messages":[{"role":"user","content":[{"text":"a"}]}]}`, false},
		{"stream a string", `{"model":"m","stream":"yes","messages":[{"role":"user","content":"hi"}]}`, false},
		{"stream_options not an object", `{"model":"m","stream_options":1,"messages":[{"role":"user","content":"hi"}]}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRequest([]byte(tc.body))
			if (err == nil) != tc.ok {
				t.Errorf("err = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestRequestKeepsUnknownMembers(t *testing.T) {
	body := `{"model":"m","x_vendor":{"deep":[1,2,{"k":"v"}]},"seed":7,"messages":[{"role":"user","content":"hi","x_msg":true}]}`
	r, err := ParseRequest([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	r.Model = "upstream"
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	var got, want map[string]any
	_ = json.Unmarshal(b, &got)
	_ = json.Unmarshal([]byte(strings.Replace(body, `"model":"m"`, `"model":"upstream"`, 1)), &want)
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if string(gb) != string(wb) {
		t.Errorf("got %s\nwant %s", gb, wb)
	}
}

func TestTextsAndSetText(t *testing.T) {
	r, err := ParseRequest([]byte(`{"model":"m","messages":[
		{"role":"system","content":"sys"},
		{"role":"user","content":[{"type":"text","text":"a","x":1},{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"b"}]},
		{"role":"assistant","content":null},
		{"role":"user","content":"last"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	texts := r.Texts()
	var got []string
	for _, tx := range texts {
		got = append(got, tx.Role+":"+tx.Text)
	}
	if strings.Join(got, ",") != "system:sys,user:a,user:b,user:last" {
		t.Fatalf("texts %v", got)
	}
	r.SetText(texts[2], "B")
	r.SetText(texts[3], "LAST")
	parts := r.Messages[1].Objs("content")
	if parts[2].Str("text") != "B" || string(parts[0]["x"]) != "1" || parts[1].Obj("image_url").Str("url") != "u" {
		t.Errorf("parts after SetText %s", r.Messages[1]["content"])
	}
	if r.LastUserText() != "LAST" || !r.HasImages() || r.HasTools() {
		t.Errorf("last user %q images %v tools %v", r.LastUserText(), r.HasImages(), r.HasTools())
	}
	if r.PromptText() != "sys\na\nB\nLAST" {
		t.Errorf("prompt %q", r.PromptText())
	}
}

func TestStreamOptionsAndLimits(t *testing.T) {
	r, _ := ParseRequest([]byte(`{"model":"m","max_tokens":50,"stream_options":{"other":1},"messages":[{"role":"user","content":"hi"}]}`))
	if r.IncludeUsage() {
		t.Error("include_usage reported without being set")
	}
	r.ForceIncludeUsage()
	so := r.Body.Obj("stream_options")
	if !r.IncludeUsage() || string(so["other"]) != "1" {
		t.Errorf("stream_options %s", r.Body["stream_options"])
	}
	if n, ok := r.MaxOutputTokens(); !ok || n != 50 {
		t.Errorf("max tokens %d %v", n, ok)
	}
	r.Body.Set("max_completion_tokens", 70)
	if n, _ := r.MaxOutputTokens(); n != 70 {
		t.Errorf("max_completion_tokens not preferred: %d", n)
	}
	short := r.EstimateInputTokens()
	r.Messages[0].Set("content", strings.Repeat("word ", 300))
	if long := r.EstimateInputTokens(); long < short+400 || long < 1500/4 {
		t.Errorf("estimates %d then %d for 1500 bytes", short, long)
	}
}

func TestParseEmbeddings(t *testing.T) {
	for body, n := range map[string]int{
		`{"model":"e","input":"one"}`:         1,
		`{"model":"e","input":["a","b"]}`:     2,
		`{"model":"e","input":[1,2,3]}`:       0,
		`{"model":"e","input":[[1,2],[3]]}`:   0,
		`{"model":"e","input":{"x":1}}`:       -1,
		`{"model":"e"}`:                       -1,
		`{"model":"","input":"x"}`:            -1,
		`{"model":"e","input":"x","dims":64}`: 1,
	} {
		r, err := ParseEmbeddings([]byte(body))
		if n < 0 {
			if err == nil {
				t.Errorf("%s accepted", body)
			}
			continue
		}
		if err != nil || len(r.Texts()) != n || r.EstimateInputTokens() <= 0 {
			t.Errorf("%s: %v, %d texts", body, err, len(r.Texts()))
		}
	}
	r, _ := ParseEmbeddings([]byte(`{"model":"e","input":"secret"}`))
	r.SetTexts([]string{"[REDACTED]"})
	if r.Body.Str("input") != "[REDACTED]" {
		t.Errorf("input %s", r.Body["input"])
	}
}

func TestUsageOf(t *testing.T) {
	o, _ := ParseObject([]byte(`{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}`))
	if u, ok := UsageOf(o); !ok || u != (Usage{3, 4}) || u.Total() != 7 {
		t.Errorf("usage %+v %v", u, ok)
	}
	o, _ = ParseObject([]byte(`{"usage":null}`))
	if _, ok := UsageOf(o); ok {
		t.Error("null usage read")
	}
	o, _ = ParseObject([]byte(`{"usage":{"prompt_tokens":-5}}`))
	if u, _ := UsageOf(o); u.Input != 0 {
		t.Error("negative tokens accepted")
	}
}
