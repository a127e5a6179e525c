package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/demo"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// TestDemoGatewayConfigs: the gateway configurations the containerised demo writes are what `umbra mcpgw` and
// `umbra llmgw` accept, with the scenario's policies.
func TestDemoGatewayConfigs(t *testing.T) {
	m, err := parseMCPGatewayConfig([]byte(demo.MCPGatewayYAML("/data/state")))
	if err != nil {
		t.Fatal(err)
	}
	if m.Policies != demo.MCPPolicies || len(m.Backends) != 3 || m.Backends[1].Overlay == nil || m.Backends[1].Overlay.Service != demo.ServiceMarine {
		t.Fatalf("MCP gateway config: %+v", m)
	}
	td := spiffeid.RequireTrustDomainFromString("umbra.local")
	l, err := parseLLMGatewayConfig([]byte(demo.LLMGatewayYAML("/data/state", td)))
	if err != nil {
		t.Fatal(err)
	}
	if l.Policies != demo.LLMPolicies || len(l.Models) != 1 || l.Models[0].Endpoints[0].Overlay != demo.ServiceModel ||
		l.Budgets[0].Identity != demo.Forecaster.ID(td).String() || l.Budgets[0].TokensPerDay != demo.ForecasterTokensPerDay {
		t.Fatalf("LLM gateway config: %+v", l)
	}
}

// sessionKey names a session by its parties, org/name each.
type sessionKey struct{ consumer, provider string }

type sessionFacts struct {
	envelopes, refused int
	closeReason        string
}

// The round every run of the demo must produce, as the audit trail records it.
var (
	wantSessions = map[sessionKey]sessionFacts{
		{"northwind/planner", "helix/diagnostics"}:     {2, 0, "by_consumer"},
		{"northwind/planner", "meridian/forecaster"}:   {2, 0, "by_consumer"},
		{"northwind/planner", "northwind/procurement"}: {2, 0, "by_consumer"},
		{"northwind/procurement", "helix/parts"}:       {4, 1, "max_messages"},
		{"helix/parts", "tidewater/dispatch"}:          {2, 0, "by_consumer"},
		{"northwind/planner", "keelson/dispatch"}:      {2, 1, "expired"},
		{"northwind/planner", "tidewater/dispatch"}:    {4, 1, "by_consumer"},
		{"northwind/planner", "northwind/safety"}:      {2, 0, "by_consumer"},
		{"northwind/safety", "meridian/forecaster"}:    {2, 0, "by_consumer"},
	}
	wantRefusals = map[string]int{
		"envelope.rejected type_not_allowed":                                                       1, // a payment in a charter contract
		"envelope.rejected session_closed (max_messages)":                                          1, // a third reservation under a four-message contract
		"envelope.rejected session_closed (expired)":                                               1, // a revised bid after the bidding window
		"session.propose not visible to the caller":                                                1, // Tidewater proposing on Keelson's advertisement
		"mcp.denied call not permitted: forbade call_tool on scada__set_mode by no-remote-restart": 1, // a remote restart by Helix, with the policy that forbade it
		"mcp.denied tool quarantined":                                                              1, // the changed sea_state tool
		"mcp.tool_quarantined":                                                                     1, // the change itself
		"llm.budget_exceeded":                                                                      1, // Meridian's second model call of the day
	}
)

var closedReason = regexp.MustCompile(`is closed \(([a-z_]+)\)`)

// checkDemoAudit reads an audit export, verifies its chain and checks the round against wantSessions and
// wantRefusals, counting from the raw records.
func checkDemoAudit(t *testing.T, export []byte) {
	t.Helper()
	records, err := audit.ReadJSONLines(bytes.NewReader(export))
	if err != nil {
		t.Fatal(err)
	}
	if err := audit.VerifyRecords(records); err != nil {
		t.Fatalf("the exported audit chain does not verify: %v", err)
	}
	label := func(raw string) string {
		id := spiffeid.RequireFromString(raw)
		segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
		return segs[0] + "/" + segs[2]
	}
	parties := map[string]sessionKey{}
	got := map[sessionKey]sessionFacts{}
	refusals := map[string]int{}
	mcpCalls, llmCalls, internal := 0, 0, 0
	defer func() {
		if internal > 0 {
			t.Logf("%d envelopes refused as internal and sent again", internal)
		}
	}()
	for _, r := range records {
		switch r.Kind {
		case "session.transition":
			var d struct {
				To, Consumer, Provider string
				CloseReason            string `json:"close_reason"`
			}
			if err := json.Unmarshal(r.Data, &d); err != nil {
				t.Fatal(err)
			}
			k := sessionKey{label(d.Consumer), label(d.Provider)}
			parties[r.Session] = k
			f := got[k]
			if d.To == "closed" {
				f.closeReason = d.CloseReason
			}
			got[k] = f
		case "envelope.accepted":
			k := parties[r.Session]
			f := got[k]
			f.envelopes++
			got[k] = f
		case "envelope.rejected":
			code, _, _ := strings.Cut(r.Reason, ":")
			if code == api.CodeInternal {
				// The relay failed inside (a store changing leader while a controller or router dies in the
				// round): the sender sends the envelope again, so it is not one of the scenario's refusals.
				internal++
				continue
			}
			k := parties[r.Session]
			f := got[k]
			f.refused++
			got[k] = f
			if m := closedReason.FindStringSubmatch(r.Reason); code == "session_closed" && m != nil {
				code += " (" + m[1] + ")"
			}
			refusals["envelope.rejected "+code]++
		case "session.propose":
			if r.Decision == audit.DecisionDeny {
				refusals["session.propose "+r.Reason]++
			}
		case "mcp.denied":
			refusals["mcp.denied "+r.Reason]++
		case "mcp.tool_quarantined", "llm.budget_exceeded", "llm.denied", "llm.guardrail", "llm.rate_limited":
			refusals[r.Kind]++
		case "mcp.call":
			mcpCalls++
		case "llm.call":
			llmCalls++
		}
	}
	if !maps.Equal(got, wantSessions) {
		t.Errorf("sessions in the audit trail:\n got %v\nwant %v", got, wantSessions)
	}
	if !maps.Equal(refusals, wantRefusals) {
		t.Errorf("refusals in the audit trail:\n got %v\nwant %v", refusals, wantRefusals)
	}
	// Tools: 3 SCADA reads, 2 tide tables, 1 sea state, 1 word count. Models: diagnosis, first forecast, brief.
	if mcpCalls != 7 || llmCalls != 3 {
		t.Errorf("%d MCP calls and %d LLM calls reached a backend, want 7 and 3", mcpCalls, llmCalls)
	}
	if t.Failed() {
		t.Logf("export:\n%s", export)
	}
}

// TestDemoEmbedded runs `umbra demo` as a newcomer would and checks, from the audit export it wrote, every
// session, envelope count and refusal reason of the round, the brief, and that nothing was logged.
func TestDemoEmbedded(t *testing.T) {
	bin := umbraBinary(t)
	limit := testlimit.Start(t, 6*time.Minute)
	limit.Step("umbra demo")
	dir := filepath.Join(t.TempDir(), "demo")
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := exec.CommandContext(ctx, bin, "demo", "--data", dir)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	cancel()
	// A crash of the embedded OpenZiti controller fails the test like any other failure.
	if err != nil {
		t.Fatalf("umbra demo: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
	feed := out.String()
	for _, want := range []string{
		"== Round 1", "REFUSED  payment.instruction", "REFUSED  parts.reserve", "REFUSED  charter.quote.revised",
		"mcp  scada__set_mode        REFUSED", "mcp  marine__sea_state      REFUSED", "402 budget_exceeded",
		"proposing a session on advertisement", "404 not_found (the same answer)", "service not found",
		"9 sessions, 22 envelopes accepted", "audit chain: VERIFIED", "audit export: " + filepath.Join(dir, "audit.jsonl"),
	} {
		if !strings.Contains(feed, want) {
			t.Errorf("the feed lacks %q", want)
		}
	}
	// Quiet by default: a healthy round logs nothing at the demo's default level, and the second router, a child
	// process at its own default level, logs no warning or error either.
	checkQuiet(t, "umbra demo", errb.String(), nil)
	for f, log := range demoRouterLogs(t, dir) {
		checkQuiet(t, "the demo's second router ("+f+")", log, nil)
	}
	export, err := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	checkDemoAudit(t, export)
	brief, err := os.ReadFile(filepath.Join(dir, demo.BriefFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"# Repair brief: turbine A07", "Tidewater Swift", "NOT reserved", "approved with conditions",
		"refused by Northwind's tool policy", "counted by the sample MCP server"} {
		if !strings.Contains(string(brief), want) {
			t.Errorf("the brief lacks %q:\n%s", want, brief)
		}
	}
	// Every session the brief cites is in the audit trail.
	cited := regexp.MustCompile("`(ses_[a-z0-9]+)`").FindAllStringSubmatch(string(brief), -1)
	if len(cited) != 6 {
		t.Errorf("the brief cites %d sessions, want the planner's 6", len(cited))
	}
	for _, m := range cited {
		if !bytes.Contains(export, []byte(`"session":"`+m[1]+`"`)) {
			t.Errorf("the brief cites session %s, which the audit trail does not know", m[1])
		}
	}
	if t.Failed() {
		t.Logf("feed:\n%s", feed)
	}
}

// compose runs docker compose (or docker-compose v1) for one project.
type compose struct {
	t       *testing.T
	cmd     []string
	project string
	file    string
	env     []string
}

func (c *compose) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	all := append(append(append([]string{}, c.cmd[1:]...), "-p", c.project, "-f", c.file), args...)
	cmd := exec.CommandContext(ctx, c.cmd[0], all...)
	cmd.Env = os.Environ()
	if os.Getenv("COMPOSE_HTTP_TIMEOUT") == "" {
		// docker-compose v1 gives up on a Docker API call after 60 s, which creating twenty containers with their
		// volumes at once can take on a loaded machine; the command's own deadline above still bounds it.
		cmd.Env = append(cmd.Env, "COMPOSE_HTTP_TIMEOUT=240")
	}
	cmd.Env = append(cmd.Env, c.env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *compose) must(args ...string) string {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// container is the ID of a service's container.
func (c *compose) container(service string) string {
	c.t.Helper()
	id := strings.TrimSpace(c.must("ps", "-q", service))
	if id == "" {
		c.t.Fatalf("no container for %s", service)
	}
	return id
}

func (c *compose) logs() string {
	out, _ := c.run("logs", "--no-color")
	return out
}

// waitLogs waits until what appears n times in the project's logs, and returns them. It looks every 2 s: each
// look runs the compose command, which costs a core for most of a second with docker-compose v1.
func (c *compose) waitLogs(what string, n int, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	for {
		logs := c.logs()
		if strings.Count(logs, what) >= n {
			return logs, nil
		}
		if time.Now().After(deadline) {
			return logs, fmt.Errorf("%d times %q not in the logs after %s", n, what, limit)
		}
		time.Sleep(2 * time.Second)
	}
}

// roundKilling brings the demo up, kills service (SIGKILL) as soon as the planner's first session has started,
// and waits until every agent has completed the round; it returns the logs.
func (c *compose) roundKilling(service string) (string, error) {
	c.t.Helper()
	c.must("up", "-d")
	logs, err := c.waitLogs("northwind/planner      session ", 1, 6*time.Minute)
	if err != nil {
		return logs, err
	}
	if strings.Contains(logs, "northwind/planner      round 1 complete") {
		c.t.Fatalf("the round was over before %s was killed", service)
	}
	if out, err := docker("kill", c.container(service)); err != nil {
		c.t.Fatalf("docker kill %s: %v\n%s", service, err, out)
	}
	logs, err = c.waitLogs("round 1 complete", len(demo.Agents), 6*time.Minute)
	if err != nil {
		return logs, fmt.Errorf("%w\n%s", err, c.unfinished("round 1 complete"))
	}
	return logs, nil
}

// unfinished describes each agent whose own log lacks what: its container's state and the last lines of its log,
// repeated lines left out, so that a round that did not complete says where it stopped.
func (c *compose) unfinished(what string) string {
	var b strings.Builder
	for _, w := range demo.Agents {
		out, _ := c.run("logs", "--no-color", w.Key())
		if strings.Contains(out, what) {
			continue
		}
		state := "no container"
		if id, _ := c.run("ps", "-q", w.Key()); strings.TrimSpace(id) != "" {
			state, _ = docker("inspect", "-f", "{{.State.Status}}, exit code {{.State.ExitCode}}", strings.TrimSpace(id))
		}
		lines := strings.Split(condenseLogs(out), "\n")
		fmt.Fprintf(&b, "%s has not logged %q (container %s); its last lines:\n%s\n", w.Key(), what,
			strings.TrimSpace(state), strings.Join(lines[max(0, len(lines)-30):], "\n"))
	}
	return b.String()
}

// logStamp matches the times in a log line: the feed's clock time and slog's time attribute.
var logStamp = regexp.MustCompile(`\b\d\d:\d\d:\d\d\.\d+\b|time=\S+`)

// condenseLogs leaves out of logs each line that, but for its times, appeared twice before (a router that is
// down is dialled again every second by every process), and ends with how many lines it left out.
func condenseLogs(logs string) string {
	seen := map[string]int{}
	var kept []string
	left := 0
	for _, line := range strings.Split(strings.TrimRight(logs, "\n"), "\n") {
		key := logStamp.ReplaceAllString(line, "")
		if seen[key]++; seen[key] > 2 {
			left++
			continue
		}
		kept = append(kept, line)
	}
	if left > 0 {
		kept = append(kept, fmt.Sprintf("(%d repeated lines left out)", left))
	}
	return strings.Join(kept, "\n")
}

func docker(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	return string(out), err
}

// composeCommand finds `docker compose` or `docker-compose`, or says why neither works.
func composeCommand() ([]string, string) {
	if out, err := docker("info", "--format", "{{.ServerVersion}}"); err != nil {
		return nil, "Docker is not available: " + strings.TrimSpace(out)
	}
	if _, err := docker("compose", "version"); err == nil {
		return []string{"docker", "compose"}, ""
	}
	if out, err := exec.Command("docker-compose", "version").CombinedOutput(); err == nil {
		return []string{"docker-compose"}, ""
	} else {
		return nil, "neither `docker compose` nor `docker-compose` works: " + strings.TrimSpace(string(out))
	}
}

// upDemoCompose builds the FROM-scratch image from a static binary (nothing is pulled) and returns the compose
// project of file (in the repository's root, which it also returns), with a free loopback port for each of
// portVars. It removes the project's containers, networks and volumes and the image when the test ends, and
// checks that nothing is left behind. Without Docker or compose, it skips the test.
func upDemoCompose(t *testing.T, limit *testlimit.Limit, file string, portVars ...string) (*compose, string) {
	t.Helper()
	cmdline, why := composeCommand()
	if cmdline == nil {
		t.Skip(why)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	limit.Step("static build of the image's binary")
	ctxDir := t.TempDir()
	// Static, as `make images` builds it, without -trimpath: where the tests themselves are built with
	// CGO_ENABLED=0 (as .ci/run does), this build finds every package in the build cache and only links.
	build := exec.Command("go", "build", "-o", filepath.Join(ctxDir, "umbra"), "./cmd/umbra")
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	// The directories the image's user owns, as `make images` prepares them.
	for _, dir := range []string{"data", "setup", "admin", "out", "secrets", "tmp"} {
		if err := os.MkdirAll(filepath.Join(ctxDir, "rootfs", dir), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	suffix := strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + "-" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	image := "umbra-demo-test:" + suffix
	limit.Step("docker build")
	if out, err := docker("build", "-q", "-f", filepath.Join(root, "Dockerfile"), "-t", image, ctxDir); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	c := &compose{t: t, cmd: cmdline, project: "umbra" + strings.NewReplacer("-", "", "_", "").Replace(suffix),
		file: filepath.Join(root, file), env: []string{"UMBRA_IMAGE=" + image, "UMBRA_DEMO_PACE=2s"}}
	free := freePorts(t, len(portVars))
	for i, v := range portVars {
		c.env = append(c.env, v+"="+free[i])
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("compose logs:\n%s", condenseLogs(c.logs()))
		}
		if out, err := c.run("down", "-v", "--remove-orphans"); err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
		if out, err := docker("rmi", image); err != nil {
			t.Errorf("docker rmi: %v\n%s", err, out)
		}
		label := "label=com.docker.compose.project=" + c.project
		for _, kind := range [][]string{{"ps", "-a"}, {"volume", "ls"}, {"network", "ls"}} {
			if out, _ := docker(append(kind, "-q", "--filter", label)...); strings.TrimSpace(out) != "" {
				t.Errorf("docker %s: left behind %s", strings.Join(kind, " "), out)
			}
		}
	})
	return c, root
}

// TestDemoCompose builds the FROM-scratch image, brings the containerised demo up, kills a router in the middle
// of the round, and checks that the round completes with every expected session, envelope and refusal, that no
// envelope a sender saw acknowledged is missing, that no agent, MCP, model or gateway container listens on any
// socket, that an agent cannot reach another organisation's agent by IP, that every container runs as a non-root
// user and holds no key material but its own (an agent that tries to read another organisation's token or
// identity finds nothing), that no log line carries a token, that demo/check.sh passes, and that the audit chain
// verifies. It removes its containers, networks, volumes and image.
func TestDemoCompose(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up the containerised demo")
	}
	limit := testlimit.Start(t, 15*time.Minute)
	c, root := upDemoCompose(t, limit, "docker-compose.yml", "UMBRA_API_PORT", "UMBRA_ENROLL_PORT", "UMBRA_CTRL_PORT",
		"UMBRA_EDGE1_PORT", "UMBRA_EDGE2_PORT")
	// Kill the first router as soon as the round has started: the rest of it runs through the other one.
	limit.Step("compose up and one round of the demo, router1 killed in it")
	logs, err := c.roundKilling("router1")
	limit.Step("checks on the running containers")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs, "could not answer") {
		t.Errorf("an agent failed to answer")
	}

	// Dark: no container of a workload holds a listening socket; the controller's show that the check sees them.
	for _, svc := range []string{"northwind-planner", "northwind-safety", "northwind-procurement", "helix-diagnostics", "helix-parts",
		"meridian-forecaster", "tidewater-dispatch", "keelson-dispatch", "mcpgw", "llmgw", "model", "scada", "textkit", "marine"} {
		out, err := docker("exec", c.container(svc), "/umbra", "demo", "sockets")
		if err != nil || !strings.HasSuffix(strings.TrimSpace(out), "\n0 listening sockets") && strings.TrimSpace(out) != "0 listening sockets" {
			t.Errorf("%s: %v\n%s", svc, err, out)
		}
	}
	// The controller's published ports, on every interface: 1280, 1281 and 6262 (it also listens on loopback).
	if out, _ := docker("exec", c.container("controller"), "/umbra", "demo", "sockets"); strings.Count(out, "000000000000:0500 ")+
		strings.Count(out, "000000000000:0501 ")+strings.Count(out, "000000000000:1876 ") != 3 {
		t.Errorf("the controller should show its 3 published listening sockets:\n%s", out)
	}

	// Separate networks: Northwind's planner cannot reach Keelson's agent by IP, nor Helix's Meridian's; it can
	// reach the surviving router, so the probe itself works.
	ipOf := func(svc string) string {
		out, err := docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", c.container(svc))
		if err != nil || len(strings.Fields(out)) != 1 {
			t.Fatalf("address of %s: %v %q", svc, err, out)
		}
		return strings.Fields(out)[0]
	}
	for _, pair := range [][2]string{{"northwind-planner", "keelson-dispatch"}, {"tidewater-dispatch", "keelson-dispatch"},
		{"helix-diagnostics", "meridian-forecaster"}} {
		ip := ipOf(pair[1])
		out, err := docker("exec", c.container(pair[0]), "/umbra", "demo", "probe", "--timeout", "2s", ip+":3022", ip+":80", ip+":443")
		if err == nil || strings.Count(out, " unreachable: ") != 3 {
			t.Errorf("%s reached %s (%s) on some port (%v):\n%s", pair[0], pair[1], ip, err, out)
		}
	}
	if out, err := docker("exec", c.container("northwind-planner"), "/umbra", "demo", "probe", "router2:3022"); err != nil {
		t.Errorf("the planner cannot reach the surviving router, so the probe proves nothing: %v\n%s", err, out)
	}

	checkComposeIsolation(t, c)

	checkComposeAudit(t, c, "controller", logs)

	// The checks a reader runs by hand agree, and the key check can fail.
	limit.Step("demo/check.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	check := exec.CommandContext(ctx, "bash", filepath.Join(root, "demo", "check.sh"))
	check.Env = append(append(os.Environ(), c.env...), "COMPOSE_PROJECT_NAME="+c.project, "COMPOSE_FILE="+c.file)
	out, err := check.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "all checks passed") || strings.Contains(string(out), "NOT ITS OWN") {
		t.Errorf("demo/check.sh: %v\n%s", err, out)
	}
	t.Logf("demo/check.sh:\n%s", out)
	checkComposeKeysCheckFails(t, c)
}

// checkComposeAudit checks the audit trail of a compose project through the controller service ctrl (which holds
// the platform administrator's identity at /data/admin.json): the chain verifies, the round is complete, and
// every envelope a sender saw acknowledged in logs (the feed prints it only then) is stored.
func checkComposeAudit(t *testing.T, c *compose, ctrl string, logs string) {
	t.Helper()
	id := c.container(ctrl)
	if out, err := docker("exec", id, "/umbra", "audit", "verify", "--as", "/data/admin.json"); err != nil || !strings.Contains(out, "audit chain verified") {
		t.Fatalf("audit verify: %v\n%s", err, out)
	}
	export, err := exec.Command("docker", "exec", id, "/umbra", "audit", "export", "--as", "/data/admin.json").Output()
	if err != nil {
		t.Fatalf("audit export: %v", err)
	}
	checkDemoAudit(t, export)
	stored := map[string]bool{}
	records, err := audit.ReadJSONLines(bytes.NewReader(export))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range records {
		if r.Kind == "envelope.accepted" {
			var h struct{ Seq int }
			if err := json.Unmarshal(r.Data, &h); err != nil {
				t.Fatal(err)
			}
			stored[r.Session[:12]+"#"+strconv.Itoa(h.Seq)] = true
		}
	}
	acked := regexp.MustCompile(`envelope #(\d+) of session (ses_[a-z0-9]+)`).FindAllStringSubmatch(logs, -1)
	if len(acked) != 22 {
		t.Errorf("the agents saw %d envelopes acknowledged, want 22", len(acked))
	}
	for _, m := range acked {
		if !stored[m[2]+"#"+m[1]] {
			t.Errorf("envelope #%s of session %s was acknowledged but is not in the audit trail", m[1], m[2])
		}
	}
}

// composeWorkloads maps the compose file's workload services to the scenario's workloads.
func composeWorkloads() map[string]demo.Workload {
	m := map[string]demo.Workload{"mcpgw": demo.MCPGateway, "llmgw": demo.LLMGateway, "model": demo.Model,
		"scada": demo.SCADA, "textkit": demo.Textkit, "marine": demo.Marine}
	for _, a := range demo.Agents {
		m[a.Key()] = a
	}
	return m
}

// keyItem is a file in a container holding key material: an identity (owner: organisation/kind/name of its
// SPIFFE ID), a workload's enrollment token (owner likewise), a router's enrollment token (owner: the router's
// name), some other JWT, or a bare private key (no owner).
type keyItem struct{ path, kind, owner string }

var (
	spiffeIDField = regexp.MustCompile(`"spiffe_id":\s*"spiffe://[^/"]*/([^"]*)"`)
	workloadToken = regexp.MustCompile(`uet1\.([A-Za-z0-9_-]+)\.`)
	routerToken   = regexp.MustCompile(`urt1\.([A-Za-z0-9_-]+)`)
	jwtShape      = regexp.MustCompile(`eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*`)
)

// classifyKey says what key material b is, if any.
func classifyKey(path string, b []byte) (keyItem, bool) {
	it := keyItem{path: path}
	claim := func(segment []byte, field string) string {
		var claims map[string]any
		raw, _ := base64.RawURLEncoding.DecodeString(string(segment))
		_ = json.Unmarshal(raw, &claims)
		v, _ := claims[field].(string)
		if i := strings.Index(v, "://"); i >= 0 {
			_, v, _ = strings.Cut(v[i+3:], "/") // the SPIFFE ID's path
		}
		return v
	}
	if m := spiffeIDField.FindSubmatch(b); m != nil {
		it.kind, it.owner = "identity", string(m[1])
	} else if m := workloadToken.FindSubmatch(b); m != nil {
		it.kind, it.owner = "token", claim(m[1], "sub")
	} else if m := routerToken.FindSubmatch(b); m != nil {
		it.kind, it.owner = "router-token", claim(m[1], "name")
	} else if jwtShape.Match(b) {
		it.kind = "jwt"
	} else if bytes.Contains(b, []byte("PRIVATE KEY")) {
		it.kind = "key"
	} else {
		return keyItem{}, false
	}
	return it, true
}

// containerKeys lists the key material in a container's filesystem, volumes included: everything a process in it
// could read. docker cp works on exited containers too.
func containerKeys(t *testing.T, id string) []keyItem {
	t.Helper()
	cmd := exec.Command("docker", "cp", id+":/", "-")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var items []keyItem
	tr := tar.NewReader(out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("docker cp %s: %v", id, err)
		}
		// The image's binary is the one large file; key material is small.
		if h.Typeflag != tar.TypeReg || h.Size > 1<<20 {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if it, ok := classifyKey("/"+strings.TrimLeft(h.Name, "./"), b); ok {
			items = append(items, it)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("docker cp %s: %v\n%s", id, err, stderr.String())
	}
	return items
}

// keyAllowed says whether the container of service svc may hold it: the controller is the authority and holds
// its CAs; a router holds its own keys and token; setup holds the administrators' identities and the tokens it
// minted, and no bare private key (the CAs' are bare); a workload holds its own identity and token and nothing
// else.
func keyAllowed(svc string, it keyItem) bool {
	switch svc {
	case "controller":
		return true
	case "router1", "router2":
		return it.kind == "key" && strings.HasPrefix(it.path, "/data/") ||
			it.kind == "router-token" && it.owner == "r"+strings.TrimPrefix(svc, "router")
	case "setup":
		return it.kind == "identity" && strings.Contains(it.owner, "/admin/") || it.kind == "token" || it.kind == "router-token"
	}
	w, ok := composeWorkloads()[svc]
	own := w.Org + "/" + w.Kind + "/" + w.Name
	return ok && (it.kind == "identity" || it.kind == "token") && it.owner == own
}

// checkComposeIsolation: no log line carries a token; every container runs as a non-root user and holds no key
// material but its own; and an agent trying to read another organisation's token or identity, where the demo
// used to keep them all and where setup keeps them now, finds nothing, while its own identity works.
func checkComposeIsolation(t *testing.T, c *compose) {
	t.Helper()
	logs := c.logs()
	for _, re := range []*regexp.Regexp{jwtShape, workloadToken, routerToken, regexp.MustCompile(`(?i)bearer\s+[A-Za-z0-9]`)} {
		if m := re.FindAllString(logs, -1); len(m) > 0 {
			t.Errorf("%d log lines carry a credential (%s), first %q", len(m), re, m[0])
		}
	}

	services := []string{"controller", "router1", "router2", "setup"}
	for svc := range composeWorkloads() {
		services = append(services, svc)
	}
	for _, svc := range services {
		id := strings.TrimSpace(c.must("ps", "-a", "-q", svc))
		if id == "" {
			t.Errorf("no container for %s", svc)
			continue
		}
		state, _ := docker("inspect", "-f", "{{.Config.User}} {{.State.Running}}", id)
		user, running, _ := strings.Cut(strings.TrimSpace(state), " ")
		if !regexp.MustCompile(`^[1-9][0-9]*:[1-9][0-9]*$`).MatchString(user) {
			t.Errorf("%s runs as user %q, want a non-root uid:gid", svc, user)
		}
		// The processes themselves, where there are any: setup has exited, router1 was killed.
		if running == "true" {
			out, err := docker("top", id, "-eo", "uid,pid")
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if err != nil || len(lines) < 2 {
				t.Errorf("docker top %s: %v\n%s", svc, err, out)
			}
			for _, l := range lines[1:] {
				if f := strings.Fields(l); len(f) == 0 || f[0] == "0" || f[0] == "root" {
					t.Errorf("%s runs a process as root: %q", svc, l)
				}
			}
		}
		items := containerKeys(t, id)
		ownIdentity := false
		for _, it := range items {
			if !keyAllowed(svc, it) {
				t.Errorf("%s holds %s, %s of %q, which is not its own", svc, it.path, it.kind, it.owner)
			}
			ownIdentity = ownIdentity || it.kind == "identity" && keyAllowed(svc, it)
		}
		if !ownIdentity && svc != "router1" && svc != "router2" {
			t.Errorf("%s holds no identity of its own: the listing sees nothing (%v)", svc, items)
		}
	}

	// The attack, from inside Helix's container.
	helix := c.container("helix-diagnostics")
	if out, err := docker("exec", helix, "/umbra", "whoami", "--as", "/data/identity.json"); err != nil || !strings.Contains(out, "/helix/agent/diagnostics") {
		t.Errorf("helix-diagnostics cannot use its own identity, so the attack below proves nothing: %v\n%s", err, out)
	}
	for _, path := range []string{"/tokens/admins/keelson-admin.json", "/controller/admin.json", "/data/admins/keelson-admin.json",
		"/admin/admin.json", "/data/admin.json", "/out/keelson-dispatch/identity.json"} {
		if out, err := docker("exec", helix, "/umbra", "whoami", "--as", path); err == nil || !strings.Contains(out, "no such identity file") {
			t.Errorf("helix-diagnostics using the identity at %s: %v\n%s", path, err, out)
		}
	}
	for _, path := range []string{"/tokens/keelson-dispatch.token", "/out/keelson-dispatch/token", "/setup/../out/keelson-dispatch/token"} {
		if out, err := docker("exec", helix, "/umbra", "enroll", "--token", path, "--out", "/tmp/stolen.json"); err == nil || !strings.Contains(out, ": no such file;") {
			t.Errorf("helix-diagnostics redeeming the token at %s: %v\n%s", path, err, out)
		}
	}
}

// checkComposeKeysCheckFails plants another organisation's administrator identity in Helix's container, as the
// shared tokens volume used to, and requires the key listing to object: the check above can fail.
func checkComposeKeysCheckFails(t *testing.T, c *compose) {
	t.Helper()
	dir := t.TempDir()
	if out, err := docker("cp", c.container("setup")+":/data/admins/keelson-admin.json", dir); err != nil {
		t.Fatalf("docker cp: %v\n%s", err, out)
	}
	helix := c.container("helix-diagnostics")
	if out, err := docker("cp", filepath.Join(dir, "keelson-admin.json"), helix+":/tmp/"); err != nil {
		t.Fatalf("docker cp: %v\n%s", err, out)
	}
	for _, it := range containerKeys(t, helix) {
		if it.path == "/tmp/keelson-admin.json" {
			if keyAllowed("helix-diagnostics", it) {
				t.Errorf("Keelson's administrator identity in Helix's container passes the check: %+v", it)
			}
			return
		}
	}
	t.Error("the listing missed Keelson's administrator identity planted in Helix's container")
}

func TestCondenseLogs(t *testing.T) {
	in := strings.Join([]string{
		`controller_1 | time=2026-12-06T02:54:09.845Z level=ERROR msg="dial tcp: lookup router1: no such host" router=r1`,
		`planner_1    | 02:54:09.900  northwind/planner      session ses_a opened`,
		`controller_1 | time=2026-12-06T02:54:10.843Z level=ERROR msg="dial tcp: lookup router1: no such host" router=r1`,
		`controller_1 | time=2026-12-06T02:54:11.843Z level=ERROR msg="dial tcp: lookup router1: no such host" router=r1`,
		`controller_1 | time=2026-12-06T02:54:12.843Z level=ERROR msg="dial tcp: lookup router1: no such host" router=r1`,
		`planner_1    | 02:54:13.100  northwind/planner      session ses_b opened`,
	}, "\n") + "\n"
	// The first two of the four dial errors stay; the planner's lines differ in more than their times.
	got := strings.Split(condenseLogs(in), "\n")
	if len(got) != 5 || !strings.Contains(got[2], "10.843") || !strings.Contains(got[3], "ses_b") || got[4] != "(2 repeated lines left out)" {
		t.Fatalf("condensed to:\n%s", strings.Join(got, "\n"))
	}
}
