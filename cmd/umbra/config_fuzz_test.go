package main

import (
	"strings"
	"testing"
)

func TestParseMCPGatewayConfig(t *testing.T) {
	cases := []struct {
		name, yaml, err string
	}{
		{"ok", "backends:\n  - name: a\n    stdio: {command: [x]}\n", ""},
		{"unknown key", "backends:\n  - name: a\n    stdio: {command: [x]}\nbogus: 1\n", "bogus"},
		{"no backends", "service: x\n", "no backends"},
		{"two kinds", "backends:\n  - name: a\n    stdio: {command: [x]}\n    http: {url: 'http://h'}\n", "exactly one"},
		{"empty command", "backends:\n  - name: a\n    stdio: {command: []}\n", "command is empty"},
		{"bad url", "backends:\n  - name: a\n    http: {url: 'ftp://h'}\n", "http(s)"},
		{"bad admin", "admins: [nope]\nbackends:\n  - name: a\n    overlay: {service: s}\n", "admins"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fc, err := parseMCPGatewayConfig([]byte(c.yaml))
			if c.err == "" {
				if err != nil || fc.Service != "mcpgw" {
					t.Fatalf("err %v service %q", err, fc.Service)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("err = %v, want %q", err, c.err)
			}
		})
	}
}

// FuzzParseMCPGatewayConfig: the parser never panics, and whatever it accepts is a usable configuration.
func FuzzParseMCPGatewayConfig(f *testing.F) {
	f.Add([]byte("backends:\n  - name: a\n    stdio: {command: [x]}\n"))
	f.Add([]byte("service: s\ndata: d\nseparator: '__'\npolicies: |\n  permit(principal, action, resource);\nbackends:\n  - name: web\n    http: {url: 'http://127.0.0.1:1/mcp'}\n  - name: dark\n    overlay: {service: mcp-files}\n"))
	f.Add([]byte("limits: {calls_per_minute: 5, call_timeout: 1s}\nbackends: []\n"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fc, err := parseMCPGatewayConfig(b)
		if err != nil {
			return
		}
		if fc.Service == "" || fc.Data == "" || len(fc.Backends) == 0 {
			t.Fatalf("accepted an unusable configuration: %+v", fc)
		}
		for _, be := range fc.Backends {
			kinds := 0
			for _, set := range []bool{be.Stdio != nil, be.HTTP != nil, be.Overlay != nil} {
				if set {
					kinds++
				}
			}
			if kinds != 1 {
				t.Fatalf("backend %q with %d kinds accepted", be.Name, kinds)
			}
		}
	})
}
