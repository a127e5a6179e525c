package canon

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

func TestJSON(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"spacing and order", `{ "b" : 1, "a" : [ true , null ] }`, `{"a":[true,null],"b":1}`},
		{"nested order", `{"z":{"y":1,"x":2},"a":0}`, `{"a":0,"z":{"x":2,"y":1}}`},
		{"integer forms", `[1, -0, 0, 100, 12345678901234567890123]`, `[1,0,0,100,12345678901234567890123]`},
		{"float forms", `[1.0, 1e2, 1.5, -2.50, 1e300, 0.1]`, `[1,100,1.5,-2.5,1e+300,0.1]`},
		{"escapes", `"a\u0041\n\u001f\/\"\\é"`, `"aA\n\u001f/\"\\é"`},
		{"html not escaped", `"<b>&</b>"`, `"<b>&</b>"`},
		{"utf16 key order", `{"\uffff":2,"\ud83d\ude00":1}`, "{\"😀\":1,\"\uffff\":2}"},
		{"empty containers", `{"a":{},"b":[]}`, `{"a":{},"b":[]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := JSON([]byte(tt.in))
			if err != nil {
				t.Fatalf("JSON(%s): %v", tt.in, err)
			}
			if string(got) != tt.want {
				t.Fatalf("JSON(%s) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestJSONRefuses(t *testing.T) {
	deep := ""
	for range MaxDepth + 1 {
		deep += "["
	}
	for range MaxDepth + 1 {
		deep += "]"
	}
	tests := []struct{ name, in string }{
		{"duplicate key", `{"a":1,"a":2}`},
		{"nested duplicate key", `{"x":{"a":1,"a":1}}`},
		{"trailing data", `{} {}`},
		{"trailing garbage", `{}x`},
		{"truncated", `{"a":`},
		{"invalid utf8", "\"\xff\""},
		{"too deep", deep},
		{"empty", ``},
		{"huge exponent", `1e400`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := JSON([]byte(tt.in)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("JSON(%q) = %s, %v; want ErrInvalid", tt.in, got, err)
			}
		})
	}
}

func TestDigestIgnoresSpelling(t *testing.T) {
	a, _, err := Digest([]byte(`{"path":"/tmp/x","size":10}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := Digest([]byte("{\n  \"size\": 10.0,\n  \"path\": \"/tmp/x\"\n}"))
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := Digest([]byte(`{"path":"/tmp/y","size":10}`))
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Fatalf("same document, different digests: %s %s", a, b)
	}
	if a == c {
		t.Fatal("different documents, same digest")
	}
	if len(a) != 64 {
		t.Fatalf("digest %q is not hex SHA-256", a)
	}
}

// FuzzJSON checks that canonicalisation is idempotent, yields valid JSON that means what the input meant, and
// never accepts a document encoding/json would read differently.
func FuzzJSON(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `[1.5,"x",null,true]`, `{"b":{"c":[]},"a":"\u00e9"}`, `"\ud800"`, `-0.0e-5`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := JSON(in)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("canonical form %q of %q is not valid JSON", out, in)
		}
		again, err := JSON(out)
		if err != nil || string(again) != string(out) {
			t.Fatalf("not idempotent: %q -> %q -> %q (%v)", in, out, again, err)
		}
		var v1, v2 any
		if err := json.Unmarshal(in, &v1); err != nil {
			t.Fatalf("accepted %q that encoding/json refuses: %v", in, err)
		}
		if err := json.Unmarshal(out, &v2); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(v1, v2) {
			t.Fatalf("meaning changed: %q (%v) -> %q (%v)", in, v1, out, v2)
		}
	})
}
