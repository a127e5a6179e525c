package chat

import (
	"encoding/json"
	"errors"
)

// EmbeddingsRequest is an embeddings request. Inputs given as text can be read and rewritten; inputs given as
// token arrays pass through unread.
type EmbeddingsRequest struct {
	Body  Object
	Model string
}

// ParseEmbeddings decodes an embeddings request body.
func ParseEmbeddings(b []byte) (*EmbeddingsRequest, error) {
	body, err := ParseObject(b)
	if err != nil {
		return nil, err
	}
	r := &EmbeddingsRequest{Body: body}
	if err := json.Unmarshal(body["model"], &r.Model); err != nil || r.Model == "" {
		return nil, errors.New(`"model" must be a non-empty string`)
	}
	raw, ok := body["input"]
	if !ok || isNull(raw) {
		return nil, errors.New(`"input" is required`)
	}
	var s string
	var ss []string
	var toks []int64
	var tokss [][]int64
	if json.Unmarshal(raw, &s) != nil && json.Unmarshal(raw, &ss) != nil &&
		json.Unmarshal(raw, &toks) != nil && json.Unmarshal(raw, &tokss) != nil {
		return nil, errors.New(`"input" must be a string, an array of strings or token arrays`)
	}
	return r, nil
}

// Texts returns the text inputs (none when the input is tokens).
func (r *EmbeddingsRequest) Texts() []string {
	raw := r.Body["input"]
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []string{s}
	}
	var ss []string
	if json.Unmarshal(raw, &ss) == nil {
		return ss
	}
	return nil
}

// SetTexts replaces text inputs; ts must have the length Texts returned.
func (r *EmbeddingsRequest) SetTexts(ts []string) {
	var s string
	if json.Unmarshal(r.Body["input"], &s) == nil && len(ts) == 1 {
		r.Body.Set("input", ts[0])
		return
	}
	r.Body.Set("input", ts)
}

// EstimateInputTokens guesses the input's size in tokens from above.
func (r *EmbeddingsRequest) EstimateInputTokens() int64 {
	var n int64 = 1
	if ts := r.Texts(); ts != nil {
		for _, t := range ts {
			n += int64(len(t))/3 + 1
		}
		return n
	}
	var toks []int64
	if json.Unmarshal(r.Body["input"], &toks) == nil {
		return int64(len(toks)) + 1
	}
	var tokss [][]int64
	_ = json.Unmarshal(r.Body["input"], &tokss)
	for _, t := range tokss {
		n += int64(len(t))
	}
	return n
}
