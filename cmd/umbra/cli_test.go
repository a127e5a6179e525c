package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// cliRun runs one command line in this process, as main does, and returns its exit status and output.
func cliRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code = runMain(ctx, args, strings.NewReader(""), &out, &errOut)
	if ctx.Err() != nil {
		t.Fatalf("umbra %s: still running after 20s: it went past the checks and onto the network", strings.Join(args, " "))
	}
	return code, out.String(), errOut.String()
}

// TestCommandErrors runs every command with missing, malformed and conflicting inputs. None of them needs a
// network: each must be refused before any connection, with one line on stderr that names the flag, field or
// argument at fault and shows no Go internals.
func TestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	file := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	token := file("token.txt", "https://127.0.0.1:1281/enroll?token=abc\n") // an enrollment token, not an identity
	id := file("id.json", "{}\n")                                           // JSON, but no key or SVID in it
	missing := filepath.Join(dir, "missing.json")
	unknownKey := file("unknown.yaml", "backend:\n  - name: files\n")
	nestedKey := file("nested.yaml", "backends:\n  - name: files\n    stdio:\n      command: [x]\n      cmd: [y]\n")
	badType := file("badtype.yaml", "models:\n  - name: m\n    retries: many\n    endpoints:\n      - base_url: http://127.0.0.1:1\n")
	noModels := file("nomodels.yaml", "service: llmgw\n")
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldAddr := held.Addr().String()
	_, heldPort, _ := net.SplitHostPort(heldAddr)
	cluster := filepath.Join(dir, "cluster") // a dev cluster of three controllers and two routers
	if err := os.MkdirAll(cluster, 0o700); err != nil {
		t.Fatal(err)
	}
	file("cluster/cluster.json", `{"controllers":[{"name":"c1"},{"name":"c2"},{"name":"c3"}],"routers":[{"name":"r1"},{"name":"r2"}]}`)

	cases := []struct {
		args []string
		want []string // every one must be in the error line
	}{
		{[]string{"bogus"}, []string{`"bogus"`, "umbra help"}},
		{[]string{"session"}, []string{"subcommand", "propose"}},
		{[]string{"session", "bogus"}, []string{`"bogus"`}},
		{[]string{"whoami"}, []string{"--as"}},
		{[]string{"whoami", "--bogus"}, []string{"--bogus"}},
		{[]string{"whoami", "--as"}, []string{"--as", "value"}},
		{[]string{"whoami", "--as", token}, []string{"--as", "not an identity file", "umbra enroll"}},
		{[]string{"whoami", "--as", missing}, []string{"--as", "no such"}},
		{[]string{"whoami", "--as", id}, []string{"--as", "not a usable identity file"}},
		{[]string{"whoami", "--as", id, "extra"}, []string{`"extra"`}},
		{[]string{"posture", "--as", id, "--fail-on", "urgent"}, []string{"--fail-on", `"urgent"`, "critical"}},
		{[]string{"identity", "suspend", "--as", id, "spiffe://umbra.local/acme/agent/a"}, []string{"--reason"}},
		{[]string{"policy", "set", "--as", id, "--org", "acme", "--name", "no-exfil"}, []string{"--file"}},
		{[]string{"policy", "set", "--as", id, "--org", "acme", "--name", "no-exfil", "--file", missing}, []string{"--file", "no such"}},
		{[]string{"policy", "remove", "--as", id, "--org", "acme"}, []string{"--name"}},
		{[]string{"identity", "resume", "--as", id, "--reason", "ok", "not-an-id"}, []string{`"not-an-id"`, "SPIFFE ID"}},
		{[]string{"dev", "--log-level", "loud"}, []string{"--log-level", `"loud"`, "debug"}},
		{[]string{"dev", "--ctrl-port", "abc"}, []string{"--ctrl-port", "whole number"}},
		{[]string{"dev", "--data", filepath.Join(dir, "dev"), "--api-port", heldPort}, []string{"--api-port", heldAddr, "in use"}},
		{[]string{"dev", "--data", filepath.Join(dir, "dev"), "--edge", heldAddr}, []string{"--edge", "in use"}},
		{[]string{"dev", "--controllers", "2"}, []string{"--controllers 2", "odd number of 3 or more"}},
		{[]string{"dev", "--controllers", "3", "--routers", "0"}, []string{"--routers 0", "1 or more"}},
		{[]string{"dev", "--routers", "2"}, []string{"--routers", "--controllers 3"}},
		{[]string{"dev", "--controllers", "3", "--api-port", heldPort}, []string{"--api-port", "--controllers 3", "chooses"}},
		{[]string{"dev", "--data", cluster}, []string{cluster, "holds a cluster", "--controllers 3 --routers 2"}},
		{[]string{"dev", "--data", cluster, "--controllers", "5"}, []string{cluster, "--controllers 3 --routers 2"}},
		{[]string{"controller", "--data", filepath.Join(dir, "c"), "--enroll-port", heldPort}, []string{"--enroll-port", "in use"}},
		{[]string{"controller", "--router-token", "r1"}, []string{"--router-token", "NAME:FILE"}},
		{[]string{"controller", "--svid-ttl", "5"}, []string{"--svid-ttl", "duration"}},
		{[]string{"controller", "--cluster-init", "--cluster-join", "tls:127.0.0.1:6262"}, []string{"--cluster-init", "--cluster-join", "exclude"}},
		{[]string{"controller", "--cluster-join", "127.0.0.1:6262"}, []string{"--cluster-join", "tls:HOST:PORT"}},
		{[]string{"controller", "--data", filepath.Join(dir, "rl"), "--recorder-lease", "-1s"}, []string{"--recorder-lease", "negative"}},
		{[]string{"controller", "--cluster-join", "tls:127.0.0.1:6262"}, []string{"--cluster-join", "--nats-cluster-listen"}},
		{[]string{"controller", "--cluster-secrets", id}, []string{"--cluster-secrets", "--cluster-join"}},
		{[]string{"controller", "--data", filepath.Join(dir, "j"), "--cluster-join", "tls:127.0.0.1:6262", "--cluster-secrets", missing,
			"--nats-cluster-listen", "127.0.0.1:0", "--nats-routes", "127.0.0.1:1"}, []string{"--cluster-secrets", "no such"}},
		{[]string{"controller", "--data", filepath.Join(dir, "j"), "--cluster-join", "tls:127.0.0.1:6262", "--cluster-secrets", id,
			"--nats-cluster-listen", "127.0.0.1:0", "--nats-routes", "127.0.0.1:1"}, []string{"--cluster-secrets", "not a cluster secrets bundle"}},
		{[]string{"controller", "secrets"}, []string{"controller secrets", "export"}},
		{[]string{"controller", "secrets", "export", "--data", filepath.Join(dir, "s")}, []string{"--out"}},
		{[]string{"controller", "secrets", "export", "--data", filepath.Join(dir, "s"), "--out", id}, []string{"--out", "not overwritten"}},
		{[]string{"router"}, []string{"--data"}},
		{[]string{"router", "--data", filepath.Join(dir, "r"), "--edge", heldAddr}, []string{"--edge", "in use"}},
		{[]string{"router", "create", "--as", id}, []string{"--name"}},
		{[]string{"router", "create", "--name", "r2", "--as", token}, []string{"--as"}},
		{[]string{"enroll"}, []string{"--token", "--out"}},
		{[]string{"enroll", "--token", missing, "--out", filepath.Join(dir, "new.json")}, []string{"--token", "no such file"}},
		{[]string{"identity", "create", "--as", id, "--name", "a"}, []string{"--org"}},
		{[]string{"identity", "revoke", "--as", id}, []string{"SPIFFE ID"}},
		{[]string{"identity", "revoke", "--as", id, "acme/agent/a"}, []string{`"acme/agent/a"`, "SPIFFE ID"}},
		{[]string{"identity", "reenroll", "--as", id, "a", "b"}, []string{"SPIFFE ID"}},
		{[]string{"identity", "create", "--as", id, "--org", "acme", "--name", "a", "--admin=maybe"}, []string{"--admin", "true or false"}},
		{[]string{"admin", "rotate"}, []string{"--as"}},
		{[]string{"admin", "rotate", "--as", id, "extra"}, []string{`"extra"`}},
		{[]string{"service", "grant", "--as", id}, []string{"--service"}},
		{[]string{"service", "grant", "--as", id, "--service", "s", "--dial", "analyst"}, []string{`"analyst"`, "SPIFFE ID"}},
		{[]string{"service", "serve", "--as", id, "--service", "s"}, []string{"--echo"}},
		{[]string{"service", "dial", "--as", id}, []string{"--service"}},
		{[]string{"service", "list", "--as", token}, []string{"--as"}},
		{[]string{"org", "create", "--as", id}, []string{"--name"}},
		{[]string{"workgroup", "create", "--as", id}, []string{"--name"}},
		{[]string{"workgroup", "accept", "--as", id}, []string{"workgroup"}},
		{[]string{"workgroup", "decline", "--as", id, "a", "b"}, []string{"workgroup"}},
		{[]string{"workgroup", "member"}, []string{"add or remove"}},
		{[]string{"workgroup", "member", "add", "--as", id, "wg"}, []string{"WORKGROUP SPIFFE-ID"}},
		{[]string{"workgroup", "member", "add", "--as", id, "--role", "boss", "wg", "spiffe://umbra.local/acme/agent/a"}, []string{"--role", `"boss"`}},
		{[]string{"workgroup", "list", "--as", missing}, []string{"--as"}},
		{[]string{"workgroup", "delete", "--as", id}, []string{"workgroup"}},
		{[]string{"advertise", "--as", id, "--card", "card.json"}, []string{"--terms", "--workgroup"}},
		{[]string{"discover", "--as", id, "--json=maybe"}, []string{"--json"}},
		{[]string{"session", "propose", "--as", id, "--ad", "a", "--duration", "abc"}, []string{"--duration", `"abc"`, "duration such as"}},
		{[]string{"session", "propose", "--as", id, "--max-messages", "-1", "--ad", "a"}, []string{"--max-messages"}},
		{[]string{"session", "propose", "--as", id}, []string{"--ad"}},
		{[]string{"session", "send", "--as", id, "--type", "t"}, []string{"--session"}},
		{[]string{"session", "recv", "--as", id, "--idle", "0s"}, []string{"--idle"}},
		{[]string{"session", "close", "--as", id}, []string{"session ID"}},
		{[]string{"session", "accept", "--as", id}, []string{"session ID"}},
		{[]string{"session", "reject", "--as", id, "a", "b"}, []string{"session ID"}},
		{[]string{"session", "show", "--as", id}, []string{"session ID"}},
		{[]string{"session", "list", "--as", id, "--state", "open"}, []string{"--state", `"open"`}},
		{[]string{"audit", "session", "--as", id}, []string{"session ID"}},
		{[]string{"audit", "verify"}, []string{"--as", "--file"}},
		{[]string{"audit", "verify", "--file", "audit.jsonl"}, []string{"--key"}},
		{[]string{"audit", "verify", "--as", id, "--file", "audit.jsonl", "--key", "k.pem"}, []string{"--file", "--as"}},
		{[]string{"audit", "verify", "--as", id, "--key", "k.pem"}, []string{"--key"}},
		{[]string{"audit", "verify", "--as", id, "--after", "twelve"}, []string{"--after", "SEQ:HASH"}},
		{[]string{"audit", "verify", "--file", "audit.jsonl", "--key", missing}, []string{"--key", "no such file"}},
		{[]string{"audit", "export", "--as", token}, []string{"--as"}},
		{[]string{"audit", "archive", "--as", id}, []string{"--through"}},
		{[]string{"audit", "archive", "--as", id, "--through", "12"}, []string{"--through", "SEQ:HASH"}},
		{[]string{"controller", "--audit-bytes-per-identity-day", "-5"}, []string{"--audit-bytes-per-identity-day", "number of bytes"}},
		{[]string{"audit", "key"}, []string{"--as"}},
		{[]string{"mcp", "serve", "--as", id, "--service", "s"}, []string{"--", "MCP server command"}},
		{[]string{"mcp", "serve", "--as", id, "--", "umbra", "mcp", "sample-server"}, []string{"--service"}},
		{[]string{"mcp", "connect", "--as", token}, []string{"--as"}},
		{[]string{"mcp", "tools", "--as", id, "x"}, []string{`"x"`}},
		{[]string{"mcp", "approvals"}, []string{"list, approve or deny"}},
		{[]string{"mcp", "approvals", "grant"}, []string{`"grant"`}},
		{[]string{"mcp", "approvals", "approve", "--as", id}, []string{"approval ID"}},
		{[]string{"mcp", "approvals", "deny", "--as", id, "--tools", "--tool", "t"}, []string{"--backend", "--digest"}},
		{[]string{"mcp", "sample-server", "extra"}, []string{`"extra"`}},
		{[]string{"mcpgw", "--config", unknownKey}, []string{"--as"}},
		{[]string{"mcpgw", "--as", id, "--config", unknownKey}, []string{unknownKey, "line 1", `"backend"`}},
		{[]string{"mcpgw", "--as", id, "--config", nestedKey}, []string{"line 5", `"cmd"`}},
		{[]string{"mcpgw", "--as", id, "--config", missing}, []string{"--config", "no such file"}},
		{[]string{"llmgw", "--as", id, "--config", unknownKey}, []string{`"backend"`}},
		{[]string{"llmgw", "--as", id, "--config", badType}, []string{"line 3", `"many"`, "whole number"}},
		{[]string{"llmgw", "--as", id, "--config", noModels}, []string{"no models"}},
		{[]string{"llm", "serve", "--as", id, "--sample", "m"}, []string{"--service"}},
		{[]string{"llm", "serve", "--as", id, "--service", "s", "--sample", "m", "--upstream", "http://127.0.0.1:1"}, []string{"--upstream", "--sample"}},
		{[]string{"llm", "serve", "--as", id, "--service", "s", "--upstream", "localhost"}, []string{"--upstream"}},
		{[]string{"llm", "bridge", "--as", id, "--listen", "0.0.0.0:8089"}, []string{"--listen", "loopback"}},
		{[]string{"llm", "bridge", "--as", id, "--listen", heldAddr}, []string{"--listen", "in use"}},
		{[]string{"ui", "--as", id, "--listen", "0.0.0.0:8088"}, []string{"--listen", "only loopback"}},
		{[]string{"ui", "--as", id, "--listen", heldAddr}, []string{"--listen", "in use"}},
		{[]string{"llm", "usage", "--as", id, "--since", "yesterday"}, []string{"--since", `"yesterday"`}},
		{[]string{"session", "propose", "--as", id, "--ad", "ad_x", "--intent", "two\nlines"}, []string{"--intent", "one line"}},
		{[]string{"session", "send", "--as", id, "--session", "ses_x", "--type", "t", "--intent-category", "research"}, []string{"--intent", "purpose is empty"}},
		{[]string{"llm", "bridge", "--as", id, "--intent", "ok", "--intent-category", "Not Valid"}, []string{"--intent", "category"}},
		{[]string{"mcp", "connect", "--as", id, "--intent", "bidi \u202e"}, []string{"--intent", "U+202E"}},
		{[]string{"demo", "--rounds", "-1"}, []string{"--rounds"}},
		{[]string{"demo", "--pace", "slow"}, []string{"--pace", "duration"}},
		{[]string{"demo", "extra"}, []string{`"extra"`}},
		{[]string{"demo", "setup"}, []string{"--admin", "--out"}},
		{[]string{"demo", "setup", "--admin", id, "--out", dir, "--router-token", "r1"}, []string{"--router-token", "NAME:FILE"}},
		{[]string{"demo", "agent"}, []string{"--role"}},
		{[]string{"demo", "agent", "--role", "nobody"}, []string{"--role", `"nobody"`}},
		{[]string{"demo", "exec", "--wait", "x"}, []string{"--"}},
		{[]string{"demo", "exec", "--token", token, "--", "whoami"}, []string{"--token", "--identity"}},
		{[]string{"demo", "serve-mcp", "--as", id, "--server", "ftp", "--service", "s"}, []string{"--server", `"ftp"`}},
		{[]string{"demo", "probe"}, []string{"HOST:PORT"}},
		{[]string{"demo", "sockets", "extra"}, []string{`"extra"`}},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, _, stderr := cliRun(t, c.args...)
			if code == 0 {
				t.Fatalf("exit status 0, want an error; stderr %q", stderr)
			}
			line := strings.TrimSuffix(stderr, "\n")
			if line == "" || strings.Contains(line, "\n") || !strings.HasSuffix(stderr, "\n") {
				t.Fatalf("stderr is not exactly one line:\n%s", stderr)
			}
			if !strings.HasPrefix(line, "umbra") {
				t.Errorf("error does not start with umbra: %s", line)
			}
			for _, w := range c.want {
				if !strings.Contains(line, w) {
					t.Errorf("error does not name %q: %s", w, line)
				}
			}
			for _, bad := range []string{"main.", "*", "struct", "goroutine", "panic", "Usage", "flag provided", "agentsdk:"} {
				if strings.Contains(line, bad) {
					t.Errorf("error shows %q: %s", bad, line)
				}
			}
		})
	}
}

// TestCommandHelp asks every command and subcommand for help, as -h, --help and umbra help: each exits 0 and
// prints its usage.
func TestCommandHelp(t *testing.T) {
	paths := [][]string{{}, {"router", "create"}, {"workgroup", "member"}, {"workgroup", "member", "add"},
		{"workgroup", "member", "remove"}, {"mcp", "approvals"}, {"mcp", "approvals", "list"}, {"mcp", "approvals", "approve"},
		{"demo", "setup"}, {"demo", "agent"}, {"demo", "exec"}, {"demo", "serve-mcp"}, {"demo", "sockets"}, {"demo", "probe"},
		{"posture", "baseline"}, {"controller", "secrets"}, {"controller", "secrets", "export"}}
	for name := range commands() {
		paths = append(paths, []string{name})
	}
	for group, subs := range groups() {
		paths = append(paths, []string{group})
		for sub := range subs {
			paths = append(paths, []string{group, sub})
		}
	}
	sort.Slice(paths, func(i, j int) bool { return strings.Join(paths[i], " ") < strings.Join(paths[j], " ") })
	for _, p := range paths {
		for _, h := range []string{"-h", "--help", "help"} {
			args := append(append([]string{}, p...), h)
			if h == "help" {
				args = append([]string{"help"}, p...)
			}
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				code, stdout, stderr := cliRun(t, args...)
				if code != 0 {
					t.Fatalf("exit status %d, want 0; stderr %q", code, stderr)
				}
				if !strings.Contains(stdout+stderr, "Usage") && !strings.Contains(stdout+stderr, "umbra:") {
					t.Errorf("no usage printed: stdout %q stderr %q", stdout, stderr)
				}
				if h == "help" && stderr != "" {
					t.Errorf("umbra help wrote to stderr: %q", stderr)
				}
			})
		}
	}
}

// TestBrokenChainCounts checks that a broken chain is reported with the records that verified before the
// break: the report from the controller counts none then.
func TestBrokenChainCounts(t *testing.T) {
	err := brokenChain("audit: chain broken at seq 22: hash mismatch: stored 1f..., computed 9a...")
	if got := err.Error(); !strings.Contains(got, "records 1 to 21 verified") || !strings.Contains(got, "seq 22") {
		t.Errorf("got %q", got)
	}
	if got := brokenChain("audit: chain broken at seq 1: prev mismatch").Error(); strings.Contains(got, "verified") {
		t.Errorf("a break at the first record claims records verified: %q", got)
	}
}
