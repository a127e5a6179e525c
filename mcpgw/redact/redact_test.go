package redact

import (
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	tests := []struct {
		name, in, secret string
	}{
		{"bearer", "Authorization: Bearer abcdefghijklmnop123", "abcdefghijklmnop123"},
		{"openai key", "use sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX please", "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX"},
		{"anthropic key", "key sk-ant-api03-abcdefghijklmnopqrstuv", "abcdefghijklmnopqrstuv"},
		{"aws", "AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"},
		{"github", "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"},
		{"jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-nature_x", "eyJzdWIiOiIxIn0"},
		{"private key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "MIIEow"},
		{"truncated private key", "-----BEGIN PRIVATE KEY-----\nMIIEow", "MIIEow"},
		{"assignment", "password=hunter22 and more", "hunter22"},
		{"url credentials", "postgres://app:s3cr3tpw@db:5432/x", "s3cr3tpw"},
		{"slack", "xoxb-1234567890-abcdef", "xoxb-1234567890-abcdef"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := String(tt.in)
			if strings.Contains(got, tt.secret) || !strings.Contains(got, Mask) {
				t.Fatalf("String(%q) = %q still holds the secret", tt.in, got)
			}
		})
	}
	for _, plain := range []string{"read /tmp/file.txt", "count the tokens in a text", "max_tokens=200"} {
		if got := String(plain); got != plain {
			t.Errorf("String(%q) = %q, changed harmless text", plain, got)
		}
	}
}

func TestJSON(t *testing.T) {
	in := `{"path":"/etc/x","api_key":"abc","nested":{"Password":"p","list":[{"client_secret":"s"}],"note":"Bearer abcdefghijklmnop"},"max_tokens":5,"token":null}`
	got := string(JSON([]byte(in)))
	for _, secret := range []string{`"abc"`, `"p"`, `"s"`, "abcdefghijklmnop"} {
		if strings.Contains(got, secret) {
			t.Errorf("redacted JSON %s still holds %s", got, secret)
		}
	}
	for _, kept := range []string{`"path":"/etc/x"`, `"max_tokens":5`, `"token":null`} {
		if !strings.Contains(got, kept) {
			t.Errorf("redacted JSON %s lost %s", got, kept)
		}
	}
	if got := string(JSON([]byte("not json Bearer abcdefghijklmnop"))); strings.Contains(got, "abcdefghijklmnop") {
		t.Errorf("text input not redacted: %s", got)
	}
}

func TestSecretName(t *testing.T) {
	for name, want := range map[string]bool{
		"password": true, "api_key": true, "apiKey": true, "X-Api-Key": true, "authorization": true, "access_token": true,
		"refresh_token": true, "private_key": true, "cookie": true, "client_secret": true,
		"path": false, "tokens": false, "max_tokens": false, "input_tokens": false, "author": false, "key": false, "query": false,
	} {
		if got := SecretName(name); got != want {
			t.Errorf("SecretName(%q) = %v, want %v", name, got, want)
		}
	}
}
