package workgroups

import (
	"strings"
	"testing"
)

func TestDecodeStrict(t *testing.T) {
	type inner struct {
		X int `json:"x"`
	}
	type doc struct {
		Name  string  `json:"name"`
		List  []inner `json:"list"`
		Inner inner   `json:"inner"`
	}
	deep := `{"name":"a","list":[` + strings.Repeat("[", 10) + strings.Repeat("]", 10) + `]}`
	for _, tc := range []struct {
		name, in string
		want     error
	}{
		{"ok", `{"name":"a","list":[{"x":1},{"x":2}],"inner":{"x":3}}`, nil},
		{"ok whitespace", " \n{\"name\":\"a\"}\n\t ", nil},
		{"empty object", `{}`, nil},
		{"duplicate key", `{"name":"a","name":"b"}`, ErrMalformed},
		{"duplicate nested", `{"inner":{"x":1,"x":2}}`, ErrMalformed},
		{"duplicate in array element", `{"list":[{"x":1},{"x":1,"x":2}]}`, ErrMalformed},
		{"case variant", `{"Name":"a"}`, ErrMalformed},
		{"case variant duplicate", `{"name":"a","NAME":"b"}`, ErrMalformed},
		{"unknown field", `{"nam":"a"}`, ErrMalformed},
		{"unknown nested", `{"inner":{"y":1}}`, ErrMalformed},
		{"trailing object", `{"name":"a"}{}`, ErrMalformed},
		{"trailing garbage", `{"name":"a"} x`, ErrMalformed},
		{"array", `[]`, ErrMalformed},
		{"string", `"a"`, ErrMalformed},
		{"null", `null`, ErrMalformed},
		{"empty", ``, ErrMalformed},
		{"truncated", `{"name":"a"`, ErrMalformed},
		{"invalid utf8", "{\"name\":\"\xff\"}", ErrMalformed},
		{"too deep", deep, ErrMalformed},
		{"wrong type", `{"name":1}`, ErrMalformed},
		{"too large", `{"name":"` + strings.Repeat("a", 100) + `"}`, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d doc
			wantErr(t, decodeStrict("doc", []byte(tc.in), 64, &d), tc.want)
		})
	}
}
