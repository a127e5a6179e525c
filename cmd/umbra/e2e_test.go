package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/internal/freeport"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// The end-to-end tests build the real binary and drive it as a user would, each daemon in its own process.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func umbraBinary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the umbra binary")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "umbra-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "umbra")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freePort(t *testing.T) int {
	t.Helper()
	p, _ := strconv.Atoi(freePorts(t, 1)[0])
	return p
}

// freePorts returns n distinct free loopback ports as strings for a command line, below the kernel's ephemeral
// range (freeport), where no outgoing connection takes one before the daemon it is for binds it.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	picked, err := freeport.Loopback(n)
	if err != nil {
		t.Fatal(err)
	}
	ports := make([]string, n)
	for i, p := range picked {
		ports[i] = strconv.Itoa(p)
	}
	return ports
}

type cli struct {
	t     *testing.T
	bin   string
	dir   string
	limit *testlimit.Limit // names each command as the test's current step
}

// newCLI builds the binary and gives the test a deadline of limit from then on: a stalled command fails the
// test, naming the command, well before the package timeout.
func newCLI(t *testing.T, limit time.Duration) *cli {
	t.Helper()
	bin := umbraBinary(t)
	return &cli{t: t, bin: bin, dir: t.TempDir(), limit: testlimit.Start(t, limit)}
}

// run runs one umbra command to completion and returns stdout, stderr and whether it succeeded.
func (c *cli) run(stdin string, args ...string) (string, string, error) {
	c.t.Helper()
	c.limit.Step("umbra %s", strings.Join(args, " "))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Dir = c.dir
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func (c *cli) must(stdin string, args ...string) string {
	c.t.Helper()
	out, errs, err := c.run(stdin, args...)
	if err != nil {
		c.t.Fatalf("umbra %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errs)
	}
	return out
}

type daemon struct {
	cmd  *exec.Cmd
	done chan struct{}
	errb *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// enroll creates the identity org/kind/name as admin and enrolls it into name.json in the test's directory,
// returning its SPIFFE ID.
func (c *cli) enroll(admin, org, kind, name string) string {
	c.t.Helper()
	tok := c.must("", "identity", "create", "--as", admin, "--org", org, "--kind", kind, "--name", name)
	if err := os.WriteFile(filepath.Join(c.dir, name+".token"), []byte(tok), 0o600); err != nil {
		c.t.Fatal(err)
	}
	c.must("", "enroll", "--token", name+".token", "--out", name+".json")
	return "spiffe://umbra.local/" + org + "/" + kind + "/" + name
}

// start runs a long-lived umbra command and waits until its stdout prints a line containing ready.
func (c *cli) start(ready string, args ...string) *daemon {
	c.t.Helper()
	c.limit.Step("start umbra %s", strings.Join(args, " "))
	cmd := exec.Command(c.bin, args...)
	cmd.Dir = c.dir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	d := &daemon{cmd: cmd, done: make(chan struct{}), errb: &syncBuffer{}}
	cmd.Stderr = d.errb
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { d.stop(c.t) })
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		cmd.Wait()
		close(d.done)
	}()
	timeout := time.After(90 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				c.t.Fatalf("umbra %s exited before ready:\n%s", strings.Join(args, " "), d.errb.String())
			}
			if strings.Contains(l, ready) {
				go func() {
					for range lines {
					}
				}()
				return d
			}
		case <-timeout:
			c.t.Fatalf("umbra %s not ready after 90s:\n%s", strings.Join(args, " "), d.errb.String())
		}
	}
}

// stop interrupts the daemon and waits for it; kill sends SIGKILL instead. In a test that failed, it logs the
// end of the daemon's stderr: the daemon's side of what went wrong.
func (d *daemon) stop(t *testing.T) {
	defer func() {
		if errs := d.errb.String(); t.Failed() && errs != "" {
			t.Logf("%s stderr, last lines:\n%s", strings.Join(d.cmd.Args, " "), lastLines(errs, 40))
		}
	}()
	select {
	case <-d.done:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

func (d *daemon) kill() {
	_ = d.cmd.Process.Kill()
	<-d.done
}

// listeningSockets counts the TCP listening sockets owned by process pid, read from /proc.
func listeningSockets(t *testing.T, pid int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	owned := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			owned[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	n := 0
	for _, file := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, file))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 {
				continue
			}
			// TCP state 0A is LISTEN; an unconnected UDP socket (no remote address) would also accept traffic,
			// a connected one (an in-flight DNS query) does not.
			unconnectedUDP := strings.HasPrefix(file, "udp") && strings.Trim(strings.Split(f[2], ":")[0], "0") == ""
			if (strings.HasPrefix(file, "tcp") && f[3] == "0A" || unconnectedUDP) && owned[f[9]] {
				n++
			}
		}
	}
	return n
}

func devArgs(t *testing.T, data string) ([]string, int) {
	p := freePorts(t, 4)
	edge, _ := strconv.Atoi(p[3])
	return []string{"dev", "--data", data, "--ctrl-port", p[0], "--api-port", p[1], "--enroll-port", p[2],
		"--edge", "127.0.0.1:" + p[3]}, edge
}

// TestCLISequence runs the README's command sequence end to end against `umbra dev`, checks that a served
// process is dark, that revocation cuts the identity, and that a restart keeps enrolled identities working.
func TestCLISequence(t *testing.T) {
	c := newCLI(t, 5*time.Minute)
	args, _ := devArgs(t, "umbra-data")
	dev := c.start("umbra dev ready", args...)
	admin := "umbra-data/admin.json"

	for _, name := range []string{"analyst", "server"} {
		tok := c.must("", "identity", "create", "--as", admin, "--org", "acme", "--kind", "agent", "--name", name)
		if err := os.WriteFile(filepath.Join(c.dir, name+".token"), []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		c.must("", "enroll", "--token", name+".token", "--out", name+".json")
	}
	// The token was spent: enrolling again fails with a clear error and changes nothing.
	if _, errs, err := c.run("", "enroll", "--token", "analyst.token", "--out", "again.json"); err == nil || !strings.Contains(errs, "token_used") {
		t.Fatalf("reusing a token: err=%v stderr=%s", err, errs)
	}
	if _, err := os.Stat(filepath.Join(c.dir, "again.json")); err == nil {
		t.Fatal("a refused enrollment wrote an identity file")
	}

	analyst, server := "spiffe://umbra.local/acme/agent/analyst", "spiffe://umbra.local/acme/agent/server"
	if got := strings.TrimSpace(c.must("", "whoami", "--as", "analyst.json")); got != analyst {
		t.Fatalf("whoami = %q, want %s", got, analyst)
	}
	// Only an administrator may grant.
	if _, errs, err := c.run("", "service", "grant", "--as", "analyst.json", "--service", "echo", "--dial", analyst); err == nil || !strings.Contains(errs, "forbidden") {
		t.Fatalf("grant by a non-admin: err=%v stderr=%s", err, errs)
	}
	c.must("", "service", "grant", "--as", admin, "--service", "echo", "--bind", server, "--dial", analyst)

	serve := c.start("serving echo", "service", "serve", "--as", "server.json", "--service", "echo", "--echo")
	if n := listeningSockets(t, serve.cmd.Process.Pid); n != 0 {
		t.Fatalf("the serving process owns %d listening sockets, want 0", n)
	}
	out, errs, err := c.run("hello dark world\n", "service", "dial", "--as", "analyst.json", "--service", "echo")
	if err != nil || out != "hello dark world\n" {
		t.Fatalf("dial: err=%v out=%q stderr=%s", err, out, errs)
	}
	if !strings.Contains(errs, "served by "+server) {
		t.Fatalf("dial did not report the verified peer: %s", errs)
	}
	if !strings.Contains(serve.errb.String(), "connection from "+analyst) {
		t.Fatalf("server did not see the verified caller: %s", serve.errb.String())
	}
	if list := c.must("", "service", "list", "--as", "analyst.json"); !strings.Contains(list, "echo") {
		t.Fatalf("service list = %q", list)
	}
	// Unknown service: a clear error.
	if _, errs, err := c.run("", "service", "dial", "--as", "analyst.json", "--service", "nope"); err == nil || !strings.Contains(errs, "service not found") {
		t.Fatalf("dial unknown service: err=%v stderr=%s", err, errs)
	}

	// Restart on the same data directory: enrolled identities keep working without re-enrollment.
	serve.stop(t)
	dev.stop(t)
	c.start("umbra dev ready", args...)
	if got := strings.TrimSpace(c.must("", "whoami", "--as", "server.json")); got != server {
		t.Fatalf("after restart whoami = %q", got)
	}
	serve = c.start("serving echo", "service", "serve", "--as", "server.json", "--service", "echo", "--echo")
	if out := c.must("again\n", "service", "dial", "--as", "analyst.json", "--service", "echo"); out != "again\n" {
		t.Fatalf("after restart dial = %q", out)
	}

	// Revocation cuts both layers.
	if out := c.must("", "identity", "revoke", "--as", admin, analyst); !strings.Contains(out, "revoked "+analyst) {
		t.Fatalf("revoke: %q", out)
	}
	if _, errs, err := c.run("x\n", "service", "dial", "--as", "analyst.json", "--service", "echo"); err == nil || !strings.Contains(errs, "not authorized") {
		t.Fatalf("dial after revoke: err=%v stderr=%s", err, errs)
	}
	if _, _, err := c.run("", "whoami", "--as", "analyst.json"); err == nil {
		t.Fatal("whoami after revoke succeeded")
	}
	if _, errs, err := c.run("", "identity", "create", "--as", admin, "--org", "acme", "--kind", "agent", "--name", "analyst"); err == nil || !strings.Contains(errs, "revoked") {
		t.Fatalf("re-creating a revoked identity: err=%v stderr=%s", err, errs)
	}
}

// TestRouterFailover runs a controller and two routers as separate processes; a hosted service stays
// reachable after one router is killed.
func TestRouterFailover(t *testing.T) {
	c := newCLI(t, 5*time.Minute)
	p, next := freePorts(t, 7), 2
	rp := func() string { next++; return p[next] }
	ctrl := []string{"controller", "--data", "ctrl", "--ctrl-port", p[0], "--api-port", p[1], "--enroll-port", p[2],
		"--router-token", "r1:r1.token"}
	c.start("umbra controller ready", ctrl...)
	r1 := c.start("umbra router ready", "router", "--data", "r1", "--token", "r1.token", "--edge", "127.0.0.1:"+rp(),
		"--link", "127.0.0.1:"+rp())
	admin := "ctrl/admin.json"
	// The controller API comes up on the overlay once the first router is online.
	var tok string
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, errs, err := c.run("", "router", "create", "--as", admin, "--name", "r2")
		if err == nil {
			tok = out
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("router create: %v %s", err, errs)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := os.WriteFile(filepath.Join(c.dir, "r2.token"), []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	c.start("umbra router ready", "router", "--data", "r2", "--token", "r2.token", "--edge", "127.0.0.1:"+rp(),
		"--link", "127.0.0.1:"+rp())

	for _, name := range []string{"client", "host"} {
		tok := c.must("", "identity", "create", "--as", admin, "--org", "acme", "--kind", "agent", "--name", name)
		if err := os.WriteFile(filepath.Join(c.dir, name+".token"), []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		c.must("", "enroll", "--token", name+".token", "--out", name+".json")
	}
	c.must("", "service", "grant", "--as", admin, "--service", "ha-echo",
		"--bind", "spiffe://umbra.local/acme/agent/host", "--dial", "spiffe://umbra.local/acme/agent/client")
	// Give the SDK a moment to learn both routers before hosting, so it binds through each.
	time.Sleep(2 * time.Second)
	c.start("serving ha-echo", "service", "serve", "--as", "host.json", "--service", "ha-echo", "--echo")
	if out := c.must("one\n", "service", "dial", "--as", "client.json", "--service", "ha-echo"); out != "one\n" {
		t.Fatalf("dial = %q", out)
	}
	r1.kill()
	// After losing a router, the service answers through the other one.
	deadline = time.Now().Add(60 * time.Second)
	for {
		out, errs, err := c.run("two\n", "service", "dial", "--as", "client.json", "--service", "ha-echo")
		if err == nil && out == "two\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service unreachable after losing one router: err=%v out=%q stderr=%s", err, out, errs)
		}
		time.Sleep(time.Second)
	}
}

// TestCLIGovernance runs the A2A governance sequence: organisations, an inter-org workgroup, an advertisement,
// scoped discovery, a session under a contract, envelopes both ways, refusals, close, audit.
func TestCLIGovernance(t *testing.T) {
	c := newCLI(t, 5*time.Minute)
	args, _ := devArgs(t, "data")
	// Ended sessions leave the session table soon, so that their envelopes can be archived below.
	c.start("umbra dev ready", append(args, "--closed-session-retention", "30s")...)
	admin := "data/admin.json"
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(c.dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	enrollOrg := func(org string) string {
		write(org+"-admin.token", c.must("", "org", "create", "--as", admin, "--name", org))
		c.must("", "enroll", "--token", org+"-admin.token", "--out", org+"-admin.json")
		return org + "-admin.json"
	}
	enrollAgent := func(orgAdmin, org, name string) string {
		write(name+".token", c.must("", "identity", "create", "--as", orgAdmin, "--org", org, "--name", name))
		c.must("", "enroll", "--token", name+".token", "--out", name+".json")
		return name + ".json"
	}
	acme, globex, initech := enrollOrg("acme"), enrollOrg("globex"), enrollOrg("initech")
	quoter := enrollAgent(acme, "acme", "quoter")
	buyer := enrollAgent(globex, "globex", "buyer")
	outsider := enrollAgent(initech, "initech", "outsider")
	// An organisation administrator cannot create identities for another organisation.
	if _, errs, err := c.run("", "identity", "create", "--as", acme, "--org", "globex", "--name", "spy"); err == nil || !strings.Contains(errs, "forbidden") {
		t.Fatalf("cross-org identity: err=%v %s", err, errs)
	}

	c.must("", "workgroup", "create", "--as", acme, "--name", "pricing", "--invite", "globex")
	if out := c.must("", "workgroup", "accept", "--as", globex, "pricing"); !strings.Contains(out, "active") {
		t.Fatalf("accept: %s", out)
	}
	c.must("", "workgroup", "member", "add", "--as", acme, "pricing", "spiffe://umbra.local/acme/agent/quoter")
	c.must("", "workgroup", "member", "add", "--as", globex, "acme/pricing", "spiffe://umbra.local/globex/agent/buyer")
	// acme's administrator may not add globex's members.
	if _, errs, err := c.run("", "workgroup", "member", "add", "--as", acme, "pricing", "spiffe://umbra.local/globex/agent/buyer"); err == nil {
		t.Fatalf("acme added a globex member: %s", errs)
	}

	write("card.json", `{"name":"Quoter","description":"prices widgets","version":"1.0","skills":[{"id":"quote","name":"Quote"}],"message_types":["quote.*"]}`)
	write("terms.json", `{"max_duration":"1h","max_messages":10,"allowed_message_types":["quote.request","quote.response"],"max_envelope_bytes":4096}`)
	ad := strings.TrimSpace(c.must("", "advertise", "--as", quoter, "--card", "card.json", "--terms", "terms.json", "--workgroup", "pricing"))
	if out := c.must("", "discover", "--as", buyer, "--skill", "quote"); !strings.Contains(out, ad) {
		t.Fatalf("buyer discover: %q", out)
	}
	if out := c.must("", "discover", "--as", outsider); strings.Contains(out, ad) {
		t.Fatalf("outsider discovered %s", ad)
	}
	if _, errs, err := c.run("", "session", "propose", "--as", outsider, "--ad", ad); err == nil || !strings.Contains(errs, "not_found") {
		t.Fatalf("outsider propose: err=%v %s", err, errs)
	}
	// An organisation policy, set by acme's administrator: a proposal declaring exfiltration is refused naming it;
	// globex's administrator cannot read acme's policies.
	write("no-exfil.cedar", `@id("no-exfiltration")
forbid (principal, action == Umbra::Action::"propose", resource)
when { context has intent && context.intent.category == "exfiltration" };
`)
	if out := c.must("", "policy", "set", "--as", acme, "--org", "acme", "--name", "no-exfil", "--file", "no-exfil.cedar"); !strings.Contains(out, "set policy no-exfil of acme") {
		t.Fatalf("policy set: %s", out)
	}
	if _, errs, err := c.run("", "policy", "list", "--as", globex, "--org", "acme"); err == nil || !strings.Contains(errs, "forbidden") {
		t.Fatalf("globex lists acme's policies: err=%v %s", err, errs)
	}
	if _, errs, err := c.run("", "session", "propose", "--as", buyer, "--ad", ad, "--intent", "copy the price list", "--intent-category", "exfiltration"); err == nil ||
		!strings.Contains(errs, "org/acme/no-exfil/no-exfiltration") {
		t.Fatalf("exfiltration proposal: err=%v %s", err, errs)
	}
	if out := c.must("", "policy", "list", "--as", acme); !strings.Contains(out, "no-exfil") {
		t.Fatalf("policy list: %s", out)
	}
	c.must("", "policy", "remove", "--as", acme, "--org", "acme", "--name", "no-exfil")
	if out := c.must("", "policy", "list", "--as", acme, "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("policy list after removal: %s", out)
	}
	sid := strings.TrimSpace(c.must("", "session", "propose", "--as", buyer, "--ad", ad, "--max-messages", "3",
		"--types", "quote.request,quote.response", "--duration", "5m", "--intent", "price check for the Lyon shop", "--intent-category", "procurement"))

	c.must(`{"sku":"w-1"}`, "session", "send", "--as", buyer, "--session", sid, "--type", "quote.request")
	if _, errs, err := c.run(`{}`, "session", "send", "--as", buyer, "--session", sid, "--type", "order.place"); err == nil || !strings.Contains(errs, "type_not_allowed") {
		t.Fatalf("disallowed type: err=%v %s", err, errs)
	}
	got := c.must("", "session", "recv", "--as", quoter, "--session", sid)
	if !strings.Contains(got, `"payload":"{\"sku\":\"w-1\"}"`) || !strings.Contains(got, `"from":"spiffe://umbra.local/globex/agent/buyer"`) {
		t.Fatalf("recv: %s", got)
	}
	c.must(`{"price":42}`, "session", "send", "--as", quoter, "--session", sid, "--type", "quote.response")
	if got := c.must("", "session", "recv", "--as", buyer); !strings.Contains(got, `{\"price\":42}`) {
		t.Fatalf("buyer recv: %s", got)
	}
	c.must("", "session", "close", "--as", buyer, sid, "--reason", "done")
	if _, errs, err := c.run(`{}`, "session", "send", "--as", buyer, "--session", sid, "--type", "quote.request"); err == nil || !strings.Contains(errs, "session_closed") {
		t.Fatalf("send after close: err=%v %s", err, errs)
	}
	show := c.must("", "session", "show", "--as", acme, sid)
	if !strings.Contains(show, `"close_reason": "by_consumer"`) || !strings.Contains(show, `"envelopes": 2`) {
		t.Fatalf("show: %s", show)
	}
	if _, _, err := c.run("", "session", "show", "--as", initech, sid); err == nil {
		t.Fatal("an unrelated organisation's administrator saw the session")
	}
	// Posture and the kill switch, as an organisation administrator.
	buyerID := "spiffe://umbra.local/globex/agent/buyer"
	c.must("", "posture", "baseline", "--as", globex)
	if inv := c.must("", "inventory", "--as", globex, "--json"); !strings.Contains(inv, `"spiffe_id": "`+buyerID+`"`) ||
		strings.Contains(inv, `"spiffe_id": "spiffe://umbra.local/acme/agent/quoter"`) {
		t.Fatalf("globex's inventory lacks its buyer or lists acme's quoter among its identities:\n%s", inv)
	}
	if out := c.must("", "identity", "suspend", "--as", globex, buyerID, "--reason", "drill"); !strings.Contains(out, "suspended "+buyerID) {
		t.Fatalf("suspend: %s", out)
	}
	if _, _, err := c.run("", "whoami", "--as", buyer); err == nil {
		t.Fatal("a suspended identity was answered")
	}
	out, _, err := c.run("", "posture", "--as", globex, "--fail-on", "info")
	if err == nil || !strings.Contains(out, "identity-suspended") || !strings.Contains(out, "~ identity:"+buyerID) {
		t.Fatalf("posture --fail-on info with a suspended identity: err=%v\n%s", err, out)
	}
	c.must("", "posture", "--as", globex) // nothing at or above high
	// One refusal and a few minutes of activity are no anomaly (the thresholds are the defaults).
	if out := c.must("", "alerts", "--as", globex); strings.TrimSpace(out) != "no alerts" {
		t.Fatalf("alerts: %s", out)
	}
	c.must("", "identity", "resume", "--as", globex, buyerID, "--reason", "drill over")
	if out := c.must("", "whoami", "--as", buyer); !strings.Contains(out, buyerID) {
		t.Fatalf("whoami after the resume: %s", out)
	}
	trail := c.must("", "audit", "session", "--as", acme, sid)
	for _, want := range []string{"envelope.accepted", "envelope.rejected", "type_not_allowed", "session.transition", `"type": "quote.response"`,
		`"purpose": "price check for the Lyon shop"`, `"category": "procurement"`} {
		if !strings.Contains(trail, want) {
			t.Fatalf("audit session lacks %q:\n%s", want, trail)
		}
	}
	// Before the audit trail is archived below: the session's history must still be in the trail.
	archiveEnvelopesThroughCLI(t, c, admin, acme, sid)
	if out := c.must("", "audit", "verify", "--as", admin); !strings.Contains(out, "audit chain verified") {
		t.Fatalf("verify: %s", out)
	}
	export := c.must("", "audit", "export", "--as", admin)
	if strings.Count(export, "\n") < 10 || !strings.Contains(export, sid) {
		t.Fatalf("export: %d lines", strings.Count(export, "\n"))
	}
	verifyExportOffline(t, c, acme, export)
	archiveThroughCLI(t, c, admin, acme, export)
}

// archiveEnvelopesThroughCLI waits until the closed session sid has left the session table, exports its
// envelopes, archives them, and checks that its audit still shows them and the archive.
func archiveEnvelopesThroughCLI(t *testing.T, c *cli, admin, member, sid string) {
	t.Helper()
	if _, errs, err := c.run("", "envelopes", "export", "--as", member, "--out", filepath.Join(c.dir, "member.jsonl")); err == nil || !strings.Contains(errs, "platform administrator") {
		t.Fatalf("a member exported envelopes: err=%v %s", err, errs)
	}
	file := filepath.Join(c.dir, "envelopes.jsonl")
	deadline := time.Now().Add(90 * time.Second)
	for {
		out := c.must("", "envelopes", "export", "--as", admin, "--out", file)
		if b, err := os.ReadFile(file); err == nil && strings.Contains(string(b), sid) {
			if !strings.Contains(out, "exported 2 envelopes") {
				t.Fatalf("export: %s", out)
			}
			break
		}
		if err := os.Remove(file); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s still not exported 90 s after it closed (retention 30 s): %s", sid, out)
		}
		time.Sleep(2 * time.Second)
	}
	if _, errs, err := c.run("", "envelopes", "export", "--as", admin, "--out", file); err == nil || !strings.Contains(errs, "already exists") {
		t.Fatalf("export over an existing file: err=%v %s", err, errs)
	}
	if out := c.must("", "envelopes", "archive", "--as", admin, "--file", file); !strings.Contains(out, "archived 2 envelopes") {
		t.Fatalf("archive: %s", out)
	}
	if out := c.must("", "envelopes", "archive", "--as", admin, "--file", file); !strings.Contains(out, "removal is now complete") {
		t.Fatalf("archive again: %s", out)
	}
	trail := c.must("", "audit", "session", "--as", member, sid)
	for _, want := range []string{"envelopes.archived", `"type": "quote.response"`, `"type": "quote.request"`} {
		if !strings.Contains(trail, want) {
			t.Fatalf("audit session after the archive lacks %q:\n%s", want, trail)
		}
	}
	if out := c.must("", "audit", "verify", "--as", admin); !strings.Contains(out, "audit chain verified") {
		t.Fatalf("verify after the envelope archive: %s", out)
	}
}

// archiveThroughCLI archives the trail through the checkpoint a verified export printed, then verifies the trail
// live from the archived head, the new export alone and joined to the old one.
func archiveThroughCLI(t *testing.T, c *cli, admin, member, export string) {
	t.Helper()
	old, key := filepath.Join(c.dir, "old.jsonl"), filepath.Join(c.dir, "audit-key.pem")
	if err := os.WriteFile(old, []byte(export), 0o600); err != nil {
		t.Fatal(err)
	}
	out := c.must("", "audit", "verify", "--file", old, "--key", key, "--require-checkpoint")
	_, kept, _ := strings.Cut(out, "--after ")
	kept = strings.TrimSpace(kept)
	if _, errs, err := c.run("", "audit", "archive", "--as", member, "--through", kept); err == nil || !strings.Contains(errs, "platform administrator") {
		t.Fatalf("a member archived the trail: err=%v %s", err, errs)
	}
	if out := c.must("", "audit", "archive", "--as", admin, "--through", kept); !strings.Contains(out, "audit trail archived through") {
		t.Fatalf("archive: %s", out)
	}
	if out := c.must("", "audit", "verify", "--as", admin, "--after", kept); !strings.Contains(out, "audit chain verified") {
		t.Fatalf("verify after the archive: %s", out)
	}
	cur := filepath.Join(c.dir, "new.jsonl")
	if err := os.WriteFile(cur, []byte(c.must("", "audit", "export", "--as", admin)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := c.must("", "audit", "verify", "--file", cur, "--key", key, "--require-checkpoint", "--after", kept); !strings.Contains(out, "archived head") {
		t.Fatalf("verify the export after the archive: %s", out)
	}
	if out := c.must("", "audit", "verify", "--file", old, "--file", cur, "--key", key, "--require-checkpoint"); !strings.Contains(out, "audit file verified") {
		t.Fatalf("verify old and new joined: %s", out)
	}
}

// verifyExportOffline checks a real export with no controller, against the key `umbra audit key` printed, and
// that the file cut before the kept checkpoint fails.
func verifyExportOffline(t *testing.T, c *cli, as, export string) {
	t.Helper()
	file, key := filepath.Join(c.dir, "audit.jsonl"), filepath.Join(c.dir, "audit-key.pem")
	if err := os.WriteFile(file, []byte(export), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, []byte(c.must("", "audit", "key", "--as", as)), 0o600); err != nil {
		t.Fatal(err)
	}
	out := c.must("", "audit", "verify", "--file", file, "--key", key, "--require-checkpoint")
	_, kept, ok := strings.Cut(out, "--after ")
	if !ok || !strings.Contains(out, "audit file verified") {
		t.Fatalf("offline verify: %s", out)
	}
	kept = strings.TrimSpace(kept)
	c.must("", "audit", "verify", "--file", file, "--key", key, "--after", kept)
	// Cut the file just before the record the kept checkpoint covers (records written after the export's own
	// checkpoint may follow it in the file).
	seqText, _, _ := strings.Cut(kept, ":")
	keptSeq, err := strconv.ParseUint(seqText, 10, 64)
	if err != nil {
		t.Fatalf("kept checkpoint %q: %v", kept, err)
	}
	var cut strings.Builder
	for _, line := range strings.SplitAfter(strings.TrimSuffix(export, "\n"), "\n") {
		var r struct{ Seq uint64 }
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r.Seq < keptSeq {
			cut.WriteString(line)
		}
	}
	if err := os.WriteFile(file, []byte(cut.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errs, err := c.run("", "audit", "verify", "--file", file, "--key", key, "--after", kept); err == nil || !strings.Contains(errs, "truncated") {
		t.Fatalf("a file cut before the kept checkpoint %s verified: %s %s", kept, out, errs)
	}
}
