// Package route picks a model for a routing model such as "auto", in a cascade of layers: ordered heuristic
// rules, then the similarity of the prompt's embedding to examples of each route, then an optional classifier
// model, then a default. Every decision says which layer made it and why.
package route

import (
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"sync"
)

// Rule is a heuristic. All conditions that are set must hold; a rule with none always matches.
type Rule struct {
	Name     string
	Model    string   // the model chosen when the rule matches
	Contains []string // the last user message contains any of these (case-insensitive)
	Pattern  string   // the last user message matches this regular expression (RE2 syntax)
	MinChars int      // the prompt (all message text) has at least this many bytes
	MaxChars int      // and at most this many (0: no bound)
	Tools    bool     // the request declares tools
	Images   bool     // the request carries an image
}

// Route is a destination for the similarity and classifier layers.
type Route struct {
	Name        string
	Model       string
	Description string   // shown to the classifier
	Examples    []string // prompts typical of the route, compared by embedding
}

// Config configures a Router.
type Config struct {
	Rules  []Rule
	Routes []Route
	// MinSimilarity is the cosine similarity the best example must reach for the embedding layer to decide.
	// Zero means 0.75.
	MinSimilarity float64
	// Default is the model chosen when no layer decides; "" means such a request is refused.
	Default string
	// CacheSize bounds the embedding cache (entries). Zero means 1024.
	CacheSize int
}

// Layer names a layer of the cascade.
type Layer string

// The layers.
const (
	LayerRule       Layer = "rule"
	LayerEmbedding  Layer = "embedding"
	LayerClassifier Layer = "classifier"
	LayerDefault    Layer = "default"
)

// Input is what the router looks at.
type Input struct {
	Prompt   string // all message text
	LastUser string // the last user message
	Tools    bool
	Images   bool
}

// Decision is the router's choice and its explanation.
type Decision struct {
	Layer   Layer    `json:"layer"`
	Model   string   `json:"model"`
	Name    string   `json:"name,omitempty"` // the rule or route
	Score   float64  `json:"score,omitempty"`
	Reason  string   `json:"reason"`
	Skipped []string `json:"skipped,omitempty"` // why earlier layers did not decide
}

// ErrNoRoute reports that no layer chose a model the caller may use and there is no usable default.
var ErrNoRoute = errors.New("route: no route for this request")

// Embedder returns one embedding per text.
type Embedder func(ctx context.Context, texts []string) ([][]float64, error)

// Classifier asks a model: the system prompt lists the routes, the user prompt is the request; the answer
// should be a route name.
type Classifier func(ctx context.Context, system, user string) (string, error)

// maxEmbedChars bounds the text sent to the embedder and classifier.
const maxEmbedChars = 8000

// Router decides routes. It is safe for concurrent use.
type Router struct {
	cfg      Config
	patterns []*regexp.Regexp
	embed    Embedder
	classify Classifier
	cache    *cache
}

// New checks cfg and returns a Router. embed and classify may be nil, which turns their layer off.
func New(cfg Config, embed Embedder, classify Classifier) (*Router, error) {
	if cfg.MinSimilarity == 0 {
		cfg.MinSimilarity = 0.75
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 1024
	}
	r := &Router{cfg: cfg, embed: embed, classify: classify, cache: newCache(cfg.CacheSize)}
	for i, rule := range cfg.Rules {
		if rule.Model == "" {
			return nil, fmt.Errorf("route: rule %d (%s) has no model", i, rule.Name)
		}
		var re *regexp.Regexp
		if rule.Pattern != "" {
			var err error
			if re, err = regexp.Compile(rule.Pattern); err != nil {
				return nil, fmt.Errorf("route: rule %d (%s): %w", i, rule.Name, err)
			}
		}
		r.patterns = append(r.patterns, re)
	}
	seen := map[string]bool{}
	for i, rt := range cfg.Routes {
		if rt.Name == "" || rt.Model == "" {
			return nil, fmt.Errorf("route: route %d needs a name and a model", i)
		}
		if seen[strings.ToLower(rt.Name)] {
			return nil, fmt.Errorf("route: route %q given twice", rt.Name)
		}
		seen[strings.ToLower(rt.Name)] = true
	}
	return r, nil
}

// Decide picks a model for in among those allowed reports true for.
func (r *Router) Decide(ctx context.Context, in Input, allowed func(model string) bool) (Decision, error) {
	var skipped []string
	for i, rule := range r.cfg.Rules {
		why, ok := r.matches(i, rule, in)
		if !ok {
			continue
		}
		if !allowed(rule.Model) {
			skipped = append(skipped, fmt.Sprintf("rule %s matched but %s is not permitted", rule.Name, rule.Model))
			continue
		}
		return Decision{Layer: LayerRule, Model: rule.Model, Name: rule.Name, Skipped: skipped,
			Reason: fmt.Sprintf("rule %s matched: %s", rule.Name, why)}, nil
	}
	if len(r.cfg.Rules) > 0 {
		skipped = append(skipped, "rules: none matched")
	}
	text := in.LastUser
	if strings.TrimSpace(text) == "" {
		text = in.Prompt
	}
	text = clip(text)

	var routes []Route
	for _, rt := range r.cfg.Routes {
		if allowed(rt.Model) {
			routes = append(routes, rt)
		}
	}
	if d, why, ok := r.byEmbedding(ctx, text, routes); ok {
		d.Skipped = skipped
		return d, nil
	} else if why != "" {
		skipped = append(skipped, why)
	}
	if d, why, ok := r.byClassifier(ctx, text, routes); ok {
		d.Skipped = skipped
		return d, nil
	} else if why != "" {
		skipped = append(skipped, why)
	}
	if r.cfg.Default != "" && allowed(r.cfg.Default) {
		return Decision{Layer: LayerDefault, Model: r.cfg.Default, Skipped: skipped,
			Reason: "no earlier layer decided; default model"}, nil
	}
	return Decision{Skipped: skipped, Reason: "no layer decided and no permitted default"}, ErrNoRoute
}

func clip(s string) string {
	if len(s) <= maxEmbedChars {
		return s
	}
	s = s[:maxEmbedChars]
	return strings.ToValidUTF8(s, "")
}

func (r *Router) matches(i int, rule Rule, in Input) (string, bool) {
	var why []string
	if len(rule.Contains) > 0 {
		lower := strings.ToLower(in.LastUser)
		found := ""
		for _, c := range rule.Contains {
			if c != "" && strings.Contains(lower, strings.ToLower(c)) {
				found = c
				break
			}
		}
		if found == "" {
			return "", false
		}
		why = append(why, fmt.Sprintf("contains %q", found))
	}
	if re := r.patterns[i]; re != nil {
		if !re.MatchString(in.LastUser) {
			return "", false
		}
		why = append(why, fmt.Sprintf("matches /%s/", rule.Pattern))
	}
	if rule.MinChars > 0 {
		if len(in.Prompt) < rule.MinChars {
			return "", false
		}
		why = append(why, fmt.Sprintf("prompt length %d >= %d", len(in.Prompt), rule.MinChars))
	}
	if rule.MaxChars > 0 {
		if len(in.Prompt) > rule.MaxChars {
			return "", false
		}
		why = append(why, fmt.Sprintf("prompt length %d <= %d", len(in.Prompt), rule.MaxChars))
	}
	if rule.Tools {
		if !in.Tools {
			return "", false
		}
		why = append(why, "declares tools")
	}
	if rule.Images {
		if !in.Images {
			return "", false
		}
		why = append(why, "has images")
	}
	if len(why) == 0 {
		why = append(why, "no conditions")
	}
	return strings.Join(why, ", "), true
}

func (r *Router) byEmbedding(ctx context.Context, text string, routes []Route) (Decision, string, bool) {
	if r.embed == nil {
		return Decision{}, "", false
	}
	var texts []string
	for _, rt := range routes {
		texts = append(texts, rt.Examples...)
	}
	if len(texts) == 0 {
		return Decision{}, "", false
	}
	vecs, err := r.vectors(ctx, append([]string{text}, texts...))
	if err != nil {
		return Decision{}, "embedding: unavailable: " + err.Error(), false
	}
	query := vecs[0]
	best, bestRoute, bestExample, i := -2.0, -1, "", 1
	for ri, rt := range routes {
		for _, ex := range rt.Examples {
			if s := cosine(query, vecs[i]); s > best {
				best, bestRoute, bestExample = s, ri, ex
			}
			i++
		}
	}
	if best < r.cfg.MinSimilarity {
		return Decision{}, fmt.Sprintf("embedding: best similarity %.3f (route %s) below %.3f",
			best, routes[bestRoute].Name, r.cfg.MinSimilarity), false
	}
	rt := routes[bestRoute]
	return Decision{Layer: LayerEmbedding, Model: rt.Model, Name: rt.Name, Score: best,
		Reason: fmt.Sprintf("similarity %.3f to an example of route %s (%q)", best, rt.Name, clipShort(bestExample))}, "", true
}

func clipShort(s string) string {
	if len(s) > 60 {
		return strings.ToValidUTF8(s[:60], "") + "..."
	}
	return s
}

// vectors embeds texts, from the cache where it can.
func (r *Router) vectors(ctx context.Context, texts []string) ([][]float64, error) {
	out := make([][]float64, len(texts))
	var missing []string
	var at []int
	for i, t := range texts {
		if v, ok := r.cache.get(t); ok {
			out[i] = v
		} else {
			missing = append(missing, t)
			at = append(at, i)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	vs, err := r.embed(ctx, missing)
	if err != nil {
		return nil, err
	}
	if len(vs) != len(missing) {
		return nil, fmt.Errorf("embedder returned %d vectors for %d texts", len(vs), len(missing))
	}
	for j, v := range vs {
		if len(v) == 0 {
			return nil, errors.New("embedder returned an empty vector")
		}
		r.cache.put(missing[j], v)
		out[at[j]] = v
	}
	return out, nil
}

func cosine(a, b []float64) float64 {
	if len(a) != len(b) {
		return -1
	}
	var dot, na, nb float64
	for i := range a {
		dot += a[i] * b[i]
		na += a[i] * a[i]
		nb += b[i] * b[i]
	}
	if na == 0 || nb == 0 {
		return -1
	}
	return dot / (math.Sqrt(na) * math.Sqrt(nb))
}

func (r *Router) byClassifier(ctx context.Context, text string, routes []Route) (Decision, string, bool) {
	if r.classify == nil || len(routes) == 0 {
		return Decision{}, "", false
	}
	var b strings.Builder
	b.WriteString("Classify the user's request. Reply with exactly one of these labels and nothing else:\n")
	for _, rt := range routes {
		fmt.Fprintf(&b, "- %s", rt.Name)
		if rt.Description != "" {
			fmt.Fprintf(&b, ": %s", rt.Description)
		}
		b.WriteByte('\n')
	}
	answer, err := r.classify(ctx, b.String(), text)
	if err != nil {
		return Decision{}, "classifier: unavailable: " + err.Error(), false
	}
	label := strings.ToLower(strings.Trim(strings.TrimSpace(answer), ".\"'`*- \n"))
	for _, exact := range []bool{true, false} {
		for _, rt := range routes {
			name := strings.ToLower(rt.Name)
			if (exact && label == name) || (!exact && strings.Contains(label, name)) {
				return Decision{Layer: LayerClassifier, Model: rt.Model, Name: rt.Name,
					Reason: fmt.Sprintf("classifier answered %q", clipShort(answer))}, "", true
			}
		}
	}
	return Decision{}, fmt.Sprintf("classifier: answer %q names no route", clipShort(answer)), false
}

// cache is a bounded LRU of embeddings keyed by the text's SHA-256.
type cache struct {
	mu    sync.Mutex
	size  int
	order *list.List // of [32]byte, most recent first
	items map[[32]byte]*list.Element
	vecs  map[[32]byte][]float64
}

func newCache(size int) *cache {
	return &cache{size: size, order: list.New(), items: map[[32]byte]*list.Element{}, vecs: map[[32]byte][]float64{}}
}

func (c *cache) get(text string) ([]float64, bool) {
	k := sha256.Sum256([]byte(text))
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[k]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(e)
	return c.vecs[k], true
}

func (c *cache) put(text string, v []float64) {
	k := sha256.Sum256([]byte(text))
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		c.order.MoveToFront(e)
		c.vecs[k] = v
		return
	}
	c.items[k] = c.order.PushFront(k)
	c.vecs[k] = v
	for c.order.Len() > c.size {
		old := c.order.Remove(c.order.Back()).([32]byte)
		delete(c.items, old)
		delete(c.vecs, old)
	}
}

// CacheLen returns the number of cached embeddings.
func (r *Router) CacheLen() int {
	r.cache.mu.Lock()
	defer r.cache.mu.Unlock()
	return r.cache.order.Len()
}
