package main

import (
	"os"
	"strings"
	"testing"

	"github.com/umbra-mesh/umbra/mcpgw/policy"
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

// TestREADMEGatewayConfigs keeps the README's gateway configuration examples valid.
func TestREADMEGatewayConfigs(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(b), "```yaml\n")
	found := 0
	for _, blk := range blocks[1:] {
		blk = blk[:strings.Index(blk, "```")]
		switch {
		case strings.HasPrefix(blk, "# mcpgw.yaml"):
			fc, err := parseMCPGatewayConfig([]byte(blk))
			if err != nil {
				t.Fatalf("README mcpgw.yaml: %v", err)
			}
			if _, err := policy.Parse(fc.Policies); err != nil {
				t.Fatalf("README mcpgw.yaml policies: %v", err)
			}
			found++
		case strings.HasPrefix(blk, "# llmgw.yaml"):
			if _, err := parseLLMGatewayConfig([]byte(blk)); err != nil {
				t.Fatalf("README llmgw.yaml: %v", err)
			}
			found++
		}
	}
	if found != 2 {
		t.Fatalf("found %d gateway configurations in the README, want 2", found)
	}
}
