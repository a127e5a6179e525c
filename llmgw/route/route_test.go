package route

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
)

func all(string) bool { return true }

func TestRules(t *testing.T) {
	r, err := New(Config{Rules: []Rule{
		{Name: "tools", Model: "agent", Tools: true},
		{Name: "long", Model: "big", MinChars: 100},
		{Name: "sql", Model: "coder", Pattern: `(?i)\bselect\b.+\bfrom\b`, MaxChars: 99},
		{Name: "any", Model: "small"},
	}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in    Input
		model string
		why   string
	}{
		{Input{Tools: true}, "agent", "declares tools"},
		{Input{Prompt: strings.Repeat("x", 150)}, "big", "prompt length 150 >= 100"},
		{Input{Prompt: "SELECT a FROM b", LastUser: "SELECT a FROM b"}, "coder", "matches /"},
		{Input{Prompt: "hello"}, "small", "no conditions"},
	} {
		d, err := r.Decide(context.Background(), tc.in, all)
		if err != nil || d.Model != tc.model || d.Layer != LayerRule || !strings.Contains(d.Reason, tc.why) {
			t.Errorf("%+v: %+v %v", tc.in, d, err)
		}
	}
	if _, err := New(Config{Rules: []Rule{{Name: "bad", Model: "m", Pattern: "("}}}, nil, nil); err == nil {
		t.Error("a bad pattern accepted")
	}
	if _, err := New(Config{Routes: []Route{{Name: "a", Model: "m"}, {Name: "A", Model: "n"}}}, nil, nil); err == nil {
		t.Error("a route given twice accepted")
	}
}

func TestCascade(t *testing.T) {
	var embedCalls, texts atomic.Int64
	embed := func(_ context.Context, in []string) ([][]float64, error) {
		embedCalls.Add(1)
		texts.Add(int64(len(in)))
		out := make([][]float64, len(in))
		for i, s := range in {
			switch {
			case strings.Contains(s, "math"):
				out[i] = []float64{1, 0}
			case strings.Contains(s, "art"):
				out[i] = []float64{0, 1}
			default:
				out[i] = []float64{0.5, -0.5}
			}
		}
		return out, nil
	}
	classify := func(_ context.Context, system, user string) (string, error) {
		if !strings.Contains(system, "- history: the past") {
			return "", errors.New("labels missing")
		}
		if strings.Contains(user, "rome") {
			return " History. ", nil
		}
		return "no idea", nil
	}
	r, err := New(Config{
		Routes: []Route{
			{Name: "maths", Model: "m-math", Examples: []string{"math homework", "more math"}},
			{Name: "arts", Model: "m-art", Examples: []string{"art history"}},
			{Name: "history", Model: "m-hist", Description: "the past"},
		},
		Default: "m-default",
	}, embed, classify)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d, err := r.Decide(ctx, Input{LastUser: "help with math"}, all)
	if err != nil || d.Layer != LayerEmbedding || d.Model != "m-math" || d.Score < 0.99 {
		t.Errorf("embedding: %+v %v", d, err)
	}
	if texts.Load() != 4 {
		t.Errorf("embedded %d texts, want the query and three examples", texts.Load())
	}
	d, err = r.Decide(ctx, Input{LastUser: "fall of rome"}, all)
	if err != nil || d.Layer != LayerClassifier || d.Model != "m-hist" || len(d.Skipped) != 1 ||
		!strings.Contains(d.Skipped[0], "below 0.750") {
		t.Errorf("classifier: %+v %v", d, err)
	}
	d, err = r.Decide(ctx, Input{LastUser: "weather"}, all)
	if err != nil || d.Layer != LayerDefault || len(d.Skipped) != 2 {
		t.Errorf("default: %+v %v", d, err)
	}
	// Models the caller may not use are never chosen.
	d, err = r.Decide(ctx, Input{LastUser: "help with math"}, func(m string) bool { return m != "m-math" && m != "m-default" })
	if !errors.Is(err, ErrNoRoute) {
		t.Errorf("without permitted routes: %+v %v", d, err)
	}
	before := embedCalls.Load()
	if _, err := r.Decide(ctx, Input{LastUser: "help with math"}, all); err != nil || embedCalls.Load() != before {
		t.Errorf("cached embeddings fetched again (%v)", err)
	}
	if r.CacheLen() != 6 {
		t.Errorf("cache holds %d", r.CacheLen())
	}
}

func TestFailingEmbedderFallsThrough(t *testing.T) {
	embed := func(context.Context, []string) ([][]float64, error) { return nil, errors.New("down") }
	r, _ := New(Config{Routes: []Route{{Name: "a", Model: "m", Examples: []string{"x"}}}, Default: "d"}, embed, nil)
	d, err := r.Decide(context.Background(), Input{LastUser: "x"}, all)
	if err != nil || d.Layer != LayerDefault || !strings.Contains(strings.Join(d.Skipped, ";"), "embedding: unavailable: down") {
		t.Errorf("%+v %v", d, err)
	}
}

func TestCacheEvicts(t *testing.T) {
	c := newCache(2)
	c.put("a", []float64{1})
	c.put("b", []float64{2})
	c.get("a")
	c.put("c", []float64{3})
	if _, ok := c.get("b"); ok {
		t.Error("the least recently used entry stayed")
	}
	if _, ok := c.get("a"); !ok {
		t.Error("a recently used entry was evicted")
	}
}
