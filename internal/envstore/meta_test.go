package envstore

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"
)

func TestMetaReadBack(t *testing.T) {
	s := newStore(t, Options{})
	ctx := testContext(t)
	meta := map[string]string{"Trace-Id": "4bf92f3577b34da6", "decision": "allow: policy p1", "A": "", "x-9": "~!@#$%^&*()"}
	a, err := s.Append(ctx, Envelope{ID: "m00", Session: "meta", To: recipientA, Data: []byte("data-m00"), Meta: meta}, 0)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, s, "meta", 1, 2, alternate, 0) // m01, without Meta

	check := func(how string, m Msg) {
		t.Helper()
		want := meta
		if m.ID != "m00" {
			want = nil
		}
		if !maps.Equal(m.Meta, want) || (want == nil) != (m.Meta == nil) {
			t.Errorf("%s: %s has Meta %q, want %q", how, m.ID, m.Meta, want)
		}
	}
	got, err := s.Get(ctx, a.StreamSeq)
	if err != nil {
		t.Fatal(err)
	}
	check("Get", got)
	all, err := s.All(ctx, "meta")
	if err != nil || len(all) != 2 {
		t.Fatalf("All: %d envelopes, %v", len(all), err)
	}
	check("All", all[0])
	check("All", all[1])
	r, err := s.Receiver(ctx, "meta", recipientA)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	check("Receiver", next(t, r, "m00"))
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	_ = s.Follow(fctx, 0, func(m Msg) error {
		check("Follow", m)
		if m.ID == "m01" {
			cancel()
		}
		return nil
	})
}

func TestMetaValidation(t *testing.T) {
	s := newStore(t, Options{})
	ctx := testContext(t)
	// Each entry takes len("Umbra-Meta-") + 2 + len(": ") + len(v) + len("\r\n") = 17 + len(v) bytes as a header.
	fill := func(total int) map[string]string {
		m := make(map[string]string)
		for i := 0; total > 0; i++ {
			v := min(total-17, 1000)
			m[string(rune('a'+i/26))+string(rune('a'+i%26))] = strings.Repeat("v", v)
			total -= 17 + v
		}
		return m
	}
	tests := []struct {
		name string
		meta map[string]string
		want string // in the error; "" for none
	}{
		{"none", nil, ""},
		{"empty value", map[string]string{"k": ""}, ""},
		{"longest key", map[string]string{strings.Repeat("K", 32): "v"}, ""},
		{"8 KiB in all", fill(8 << 10), ""},
		{"empty key", map[string]string{"": "v"}, `meta key ""`},
		{"key too long", map[string]string{strings.Repeat("K", 33): "v"}, "meta key"},
		{"key with underscore", map[string]string{"a_b": "v"}, `meta key "a_b"`},
		{"key with colon", map[string]string{"a:b": "v"}, "meta key"},
		{"value with newline", map[string]string{"k": "a\r\nNats-Msg-Id: x"}, "meta k: value has a byte 0x0d"},
		{"value with tab", map[string]string{"k": "a\tb"}, "byte 0x09"},
		{"value not ASCII", map[string]string{"k": "é"}, "byte 0xc3"},
		{"value starting with a space", map[string]string{"k": " v"}, "begins or ends with a space"},
		{"value ending with a space", map[string]string{"k": "v "}, "begins or ends with a space"},
		{"value with inner spaces", map[string]string{"k": "a b  c"}, ""},
		{"over 8 KiB in all", fill(8<<10 + 1), "more than 8192"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := streamMsgs(t, s)
			_, err := s.Append(ctx, Envelope{ID: "e-" + strings.ReplaceAll(tt.name, " ", "-"), Session: "v", To: recipientA, Meta: tt.meta}, 0)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Append: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Append: %v, want one line of ErrInvalid mentioning %q", err, tt.want)
			}
			if n := streamMsgs(t, s); n != before {
				t.Fatalf("%d messages stored by a refused Append", n-before)
			}
		})
	}
}
