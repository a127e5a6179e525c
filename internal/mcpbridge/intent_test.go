package mcpbridge

import (
	"encoding/json"
	"testing"
)

func TestDeclareIntent(t *testing.T) {
	intent := json.RawMessage(`{"purpose":"triage","category":"support"}`)
	for _, tc := range []struct {
		name, params, want string
	}{
		{"no meta", `{"name":"t","arguments":{}}`, `{"_meta":{"umbra/intent":{"purpose":"triage","category":"support"}},"arguments":{},"name":"t"}`},
		{"other meta kept", `{"name":"t","_meta":{"progressToken":7}}`, `{"_meta":{"progressToken":7,"umbra/intent":{"purpose":"triage","category":"support"}},"name":"t"}`},
		{"client's own intent kept", `{"name":"t","_meta":{"umbra/intent":{"purpose":"mine"}}}`, `{"name":"t","_meta":{"umbra/intent":{"purpose":"mine"}}}`},
		{"null meta", `{"name":"t","_meta":null}`, `{"_meta":{"umbra/intent":{"purpose":"triage","category":"support"}},"name":"t"}`},
		{"not an object", `[1]`, `[1]`},
		{"meta not an object", `{"name":"t","_meta":3}`, `{"name":"t","_meta":3}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(declareIntent(json.RawMessage(tc.params), intent)); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}
