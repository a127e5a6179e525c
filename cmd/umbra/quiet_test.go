package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// slogLevel finds the level of a line of slog's text handler.
var slogLevel = regexp.MustCompile(`^time=\S+ level=([A-Z]+[+-]?[0-9]*) `)

// loudLines returns the lines of a log an operator would have to read: every WARN or ERROR record, and every line
// that is not a record of our logger at all (OpenZiti writing past it, a panic, a goroutine trace), except the
// records allow accepts.
func loudLines(log string, allow func(line string) bool) []string {
	var loud []string
	for _, l := range strings.Split(log, "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		m := slogLevel.FindStringSubmatch(l)
		if m != nil && !strings.HasPrefix(m[1], "WARN") && !strings.HasPrefix(m[1], "ERROR") {
			continue
		}
		if m != nil && allow != nil && allow(l) {
			continue
		}
		loud = append(loud, l)
	}
	return loud
}

// TestLoudLines: the filter of the quiet tests sees warnings, errors and foreign lines, and nothing else.
func TestLoudLines(t *testing.T) {
	log := strings.Join([]string{
		`time=2026-12-04T19:07:13.311Z level=INFO msg="controller ready"`,
		`time=2026-12-04T19:07:13.311Z level=DEBUG msg="reported forwarding faults" source=openziti`,
		`time=2026-12-04T19:07:13.311Z level=WARN msg="reported forwarding faults" source=openziti circuitCount=28`,
		`time=2026-12-04T19:07:13.311Z level=ERROR msg="relay stopped"`,
		`time=2026-12-04T19:07:13.311Z level=WARN msg="request refused" code=not_found`,
		`[   0.123]   ERROR ziti/router: raw`,
		`panic: boom`,
		``,
	}, "\n")
	got := loudLines(log, func(l string) bool { return strings.Contains(l, "code=not_found") })
	if len(got) != 4 || !strings.Contains(got[0], "forwarding faults") || !strings.Contains(got[1], "relay stopped") ||
		got[2] != `[   0.123]   ERROR ziti/router: raw` || got[3] != "panic: boom" {
		t.Fatalf("loud lines: %q", got)
	}
}

// checkQuiet fails the test with every loud line of a log.
func checkQuiet(t *testing.T, what, log string, allow func(string) bool) {
	t.Helper()
	if loud := loudLines(log, allow); len(loud) > 0 {
		t.Errorf("%s logged %d WARN/ERROR or foreign lines in a healthy run:\n%s", what, len(loud), strings.Join(loud, "\n"))
	}
}

// demoRouterLogs reads the log of every router the demo started as a child process (it runs at its default level).
func demoRouterLogs(t *testing.T, dir string) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*", "router.log"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no router.log of the demo's second router under %s", dir)
	}
	logs := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		logs[f] = string(b)
	}
	return logs
}

// TestQuietDemo runs the embedded demo with its components at warn, the level every other command logs at by
// default (the demo itself shows only errors by default), and requires a healthy round to log no warning or error:
// neither OpenZiti's routine chatter nor ours. The refusals the round provokes on purpose are the callers' business
// (answered and audited) and log at info.
func TestQuietDemo(t *testing.T) {
	bin := umbraBinary(t)
	limit := testlimit.Start(t, 6*time.Minute)
	limit.Step("umbra demo --log-level warn")
	dir := filepath.Join(t.TempDir(), "demo")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "demo", "--data", dir, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("umbra demo: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "audit chain: VERIFIED") {
		t.Fatalf("the round did not complete:\n%s", out.String())
	}
	checkQuiet(t, "umbra demo --log-level warn", errb.String(), nil)
	for f, log := range demoRouterLogs(t, dir) {
		checkQuiet(t, "the demo's second router ("+f+")", log, nil)
	}
}

// TestQuietDev starts `umbra dev` at the default level, runs one agent session and one dial of a hosted service
// through it, lets it idle past OpenZiti's periodic reports (forwarding faults every 15 s), stops it with an
// interrupt, and requires that nothing it logged on the way is a warning or an error.
func TestQuietDev(t *testing.T) {
	r := &restartRun{t: t, c: newCLI(t, 5*time.Minute)}
	c := r.c
	args, _ := devArgs(t, "data")
	dev := c.start("umbra dev ready", args...)
	p := r.pricingSession(10)
	admin, quoter, buyer, sess := p.admin, p.quoter, p.buyer, p.sess
	r.step("send and receive on the session", 30*time.Second, func(ctx context.Context) error {
		if _, err := sess.Send(ctx, "quote.request", []byte(`{"n":1}`)); err != nil {
			return err
		}
		qs, err := quoter.Session(ctx, sess.ID())
		if err != nil {
			return err
		}
		env, err := qs.Receive(ctx)
		if err != nil {
			return err
		}
		if string(env.Payload) != `{"n":1}` {
			return fmt.Errorf("payload %s", env.Payload)
		}
		return sess.Close(ctx, "done")
	})
	const service = "quotes-quiet"
	r.step("grant "+service, 30*time.Second, func(ctx context.Context) error {
		return admin.Controller().Grant(ctx, api.GrantRequest{Service: service,
			Bind: []string{quoter.ID().String()}, Dial: []string{buyer.ID().String()}})
	})
	var ln net.Listener
	r.retryStep("host "+service, time.Now().Add(30*time.Second), 10*time.Second, func(ctx context.Context) error {
		l, err := quoter.ListenContext(ctx, service)
		if err == nil {
			ln = l
			go echoAll(l)
		}
		return err
	})
	r.retryStep("dial "+service, time.Now().Add(30*time.Second), 10*time.Second, func(ctx context.Context) error {
		return echoOnce(ctx, buyer, service, "hello")
	})
	// Close what the test opened, as an application ending would, then let the network idle past OpenZiti's
	// periodic reports.
	ln.Close()
	for _, a := range []*agentsdk.Agent{quoter, buyer, p.acme, p.globex, admin} {
		a.Close()
	}
	c.limit.Step("idle")
	time.Sleep(20 * time.Second)
	c.limit.Step("stop umbra dev")
	dev.stop(t)
	checkQuiet(t, "umbra dev", dev.errb.String(), nil)
}
