package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/umbra-mesh/umbra/internal/testlimit"
)

// TestREADME runs the command blocks of README.md as written, in order, in one directory, with the freshly built
// umbra first on PATH, against a real `umbra dev` started by the README's own "Run it" block.
//
// How a block is read:
//   - A fenced block with no language or `sh` is commands: one a line, `\` continues a line, `#` starts a
//     comment. A command whose comment begins with "fails" must exit non-zero; every other command must exit 0.
//     Each command runs with /bin/sh in the walk-through's directory and has a deadline of its own.
//   - A `yaml` block whose first line is `# NAME.yaml`, and a `json` block after a line ending in "`NAME.json`:",
//     is a file: it is written there before the commands of its section run (the README shows files after the
//     commands that use them).
//   - `go run ./cmd/umbra` is the freshly built `umbra`.
//   - Commands that run until stopped (readmeDaemons) start in the background, each until it prints its ready
//     line, and are stopped at the end. `umbra dev` gets free ports besides the README's flags, so that the test
//     never collides with another network on this machine. `umbra mcp connect` is the stdio transport of an MCP
//     client (the official Go SDK), as the README says: that client waits until it sees
//     dark__catalogue_lookup and calls it, which holds the call for the approval the next commands give; the
//     call must then succeed.
//   - Placeholders (readmePlaceholders) are taken from the output of the latest earlier command that produces
//     them, and replaced where they stand as a word of a command.
//   - Blocks that are not part of a walk-through are skipped only by readmeSkips, each naming why and what test
//     covers it instead; a skip that matches no block fails the test.
func TestREADME(t *testing.T) {
	bin := umbraBinary(t)
	limit := testlimit.Start(t, 10*time.Minute)
	text, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := readmeBlocks(string(text))
	w := &walkthrough{t: t, dir: t.TempDir(), limit: limit, values: map[string]string{}}
	w.env = append(os.Environ(), "PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"))

	var cmds []readmeCommand
	used := map[int]bool{}
	sections := map[string]bool{}
	for _, b := range blocks {
		if i, ok := readmeSkipped(b); ok {
			if used[i] {
				t.Fatalf("README.md:%d: skip %q matches more than one block", b.line, readmeSkips[i].first)
			}
			used[i] = true
			if readmeWalkthroughs[b.section] {
				t.Fatalf("README.md:%d: a block of the walk-through %q is skipped (%s)", b.line, b.section, readmeSkips[i].why)
			}
			continue
		}
		sections[b.section] = true
		switch {
		case b.file != "":
			w.files = append(w.files, b)
		case b.lang == "" || b.lang == "sh":
			cmds = append(cmds, readmeCommands(b)...)
		default:
			t.Fatalf("README.md:%d: a %q block that is neither run, written nor skipped: add it to readmeSkips with the reason", b.line, b.lang)
		}
	}
	for i, s := range readmeSkips {
		if !used[i] {
			t.Fatalf("readmeSkips[%d] %q matches no block of the README", i, s.first)
		}
	}
	for s := range readmeWalkthroughs {
		if !sections[s] {
			t.Fatalf("the README has no blocks under the walk-through heading %q", s)
		}
	}

	for _, c := range cmds {
		// Besides umbra and /bin/sh, a walk-through may use only curl, which the README's reader is expected to have.
		if strings.Contains(" "+c.text, " curl ") {
			if _, err := exec.LookPath("curl"); err != nil {
				t.Fatalf("README.md:%d: %s: needs curl, which is not on PATH: install it", c.line, c.text)
			}
		}
	}
	section := ""
	for i, c := range cmds {
		if c.section != section {
			section = c.section
			w.writeFiles(section)
		}
		w.run(cmds, i)
	}
	w.finish()
}

// readmeWalkthroughs are the sections whose every block must run.
var readmeWalkthroughs = map[string]bool{
	"Run it":                       true,
	"Use it from the command line": true,
	"Agents collaborating across organisations":   true,
	"MCP tools and LLMs behind the same identity": true,
}

// readmeSkips are the blocks this test does not run, matched by the start of their first line (the longest
// match wins).
var readmeSkips = []struct{ first, why string }{
	{"workload (agentsdk)", "the picture"},
	{"go run ./cmd/umbra demo", "the demo: TestDemoEmbedded runs it and checks its audit export"},
	{"== Round 1", "the demo's output: TestDemoEmbedded checks its sessions, envelopes and refusals"},
	{"make images", "Docker: TestDemoCompose builds the images and runs the containers where Docker is available"},
	{"go test -count=1 -p 1", "the test suite itself"},
	{"go run ./cmd/umbra demo --rounds 100", "soak runs, by hand: hours long (TestDemoEmbedded and TestKillRestartCycles run the short forms)"},
	{"go get github.com/umbra-mesh/umbra/agentsdk", "fetches the SDK: TestSDKExternalModule builds a module outside this workspace that requires it"},
	{"import (", "a Go fragment, not a program: the agentsdk Example functions and sdktest make these calls"},
}

// readmeDaemons are the commands that run until stopped, and the line each prints once it serves.
var readmeDaemons = []struct{ prefix, ready string }{
	{"umbra dev ", "umbra dev ready"},
	{"umbra service serve ", "serving "},
	{"umbra mcp serve ", "serving MCP server"},
	{"umbra mcpgw ", "umbra mcpgw ready"},
	{"umbra mcp connect ", ""}, // an MCP client's transport: ready once the client has initialised
	{"umbra llmgw ", "umbra llmgw ready"},
	{"umbra llm serve ", "serving model"},
	{"umbra llm bridge ", "llm bridge on"},
}

// readmePlaceholders: each is taken from the output of the latest earlier command that begins with from; value
// gets that output and the command that uses the placeholder. A command must print the value the first time,
// except where wait is set: what the gateway lists arrives as it sees it (tool definitions as it connects to
// a backend, a call once the client makes it), so such a command runs again until it does, up to its deadline.
var readmePlaceholders = []struct {
	name, from string
	wait       bool
	value      func(out, use string) (string, bool)
}{
	{"AD", "umbra advertise ", false, firstLine},      // the advertisement ID advertise prints
	{"S", "umbra session propose ", false, firstLine}, // the session ID propose prints
	{"SEQ:HASH", "umbra audit verify ", false, func(out, _ string) (string, bool) { // "keep ... --after SEQ:HASH"
		m := regexp.MustCompile(`--after (\d+:[0-9a-f]+)`).FindStringSubmatch(out)
		if m == nil {
			return "", false
		}
		return m[1], true
	}},
	{"DIGEST", "umbra mcp approvals list --tools ", true, func(out, use string) (string, bool) { // of the --tool it approves
		var list struct {
			Versions []struct{ Backend, Tool, Digest string }
		}
		if json.Unmarshal([]byte(out), &list) != nil {
			return "", false
		}
		for _, v := range list.Versions {
			if v.Backend == flagValue(use, "--backend") && v.Tool == flagValue(use, "--tool") {
				return v.Digest, true
			}
		}
		return "", false
	}},
	{"ID", "umbra mcp approvals list --as ", true, func(out, _ string) (string, bool) { // the first pending call
		var list struct {
			Approvals []struct{ ID, Status string }
		}
		if json.Unmarshal([]byte(out), &list) != nil {
			return "", false
		}
		for _, a := range list.Approvals {
			if a.Status == "pending" {
				return a.ID, true
			}
		}
		return "", false
	}},
}

func firstLine(out, _ string) (string, bool) {
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	return line, line != ""
}

// flagValue is the word after flag in a command line.
func flagValue(cmd, flag string) string {
	f := strings.Fields(cmd)
	for i := range f[:max(len(f)-1, 0)] {
		if f[i] == flag {
			return f[i+1]
		}
	}
	return ""
}

type readmeBlock struct {
	line    int // of the opening fence
	lang    string
	section string // the last "## " heading before it
	file    string // for a file block: the file it is
	lines   []string
}

// readmeBlocks parses the fenced blocks of a Markdown text.
func readmeBlocks(text string) []readmeBlock {
	var out []readmeBlock
	var cur *readmeBlock
	section, prev := "", ""
	for i, line := range strings.Split(text, "\n") {
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &readmeBlock{line: i + 1, lang: strings.TrimSpace(strings.TrimPrefix(line, "```")), section: section}
			if m := regexp.MustCompile("`([\\w.-]+\\.json)`:$").FindStringSubmatch(strings.TrimSpace(prev)); cur.lang == "json" && m != nil {
				cur.file = m[1]
			}
		case cur != nil && strings.HasPrefix(line, "```"):
			if f, ok := strings.CutPrefix(firstOf(cur.lines), "# "); ok && cur.lang == "yaml" && strings.HasSuffix(f, ".yaml") {
				cur.file = f
			}
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.lines = append(cur.lines, line)
		default:
			if h, ok := strings.CutPrefix(line, "## "); ok {
				section = strings.TrimSpace(h)
			}
			if strings.TrimSpace(line) != "" {
				prev = line
			}
		}
	}
	return out
}

func firstOf(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return lines[0]
}

// readmeSkipped finds the skip of a block: the longest whose first matches the start of the block's first line.
func readmeSkipped(b readmeBlock) (int, bool) {
	first := strings.TrimSpace(firstOf(b.lines))
	best := -1
	for i, s := range readmeSkips {
		if strings.HasPrefix(first, s.first) && (best < 0 || len(s.first) > len(readmeSkips[best].first)) {
			best = i
		}
	}
	return best, best >= 0
}

type readmeCommand struct {
	line     int // in README.md
	section  string
	text     string // the command, continuation lines joined, comment removed
	wantFail bool   // the comment says it fails
}

// readmeCommands splits a block into commands.
func readmeCommands(b readmeBlock) []readmeCommand {
	var out []readmeCommand
	var cur *readmeCommand
	for i, raw := range b.lines {
		code, comment := splitComment(raw)
		code = strings.TrimSpace(code)
		if cur == nil {
			if code == "" {
				continue
			}
			cur = &readmeCommand{line: b.line + 1 + i, section: b.section}
		}
		cont := strings.HasSuffix(code, "\\")
		cur.text += " " + strings.TrimSpace(strings.TrimSuffix(code, "\\"))
		if strings.HasPrefix(strings.TrimSpace(comment), "fails") {
			cur.wantFail = true
		}
		if !cont {
			cur.text = strings.TrimSpace(cur.text)
			if rest, ok := strings.CutPrefix(cur.text, "go run ./cmd/umbra "); ok {
				cur.text = "umbra " + rest
			}
			out = append(out, *cur)
			cur = nil
		}
	}
	return out
}

// splitComment cuts a shell line at a # that starts a word outside quotes.
func splitComment(line string) (code, comment string) {
	var quote rune
	for i, r := range line {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return line[:i], line[i+1:]
		}
	}
	return line, ""
}

// walkthrough runs the README's commands in one directory.
type walkthrough struct {
	t      *testing.T
	dir    string
	env    []string
	limit  *testlimit.Limit
	files  []readmeBlock
	values map[string]string
	call   chan error // the MCP client's held call, once started
}

func (w *walkthrough) writeFiles(section string) {
	for _, f := range w.files {
		if f.section == section {
			if err := os.WriteFile(filepath.Join(w.dir, f.file), []byte(strings.Join(f.lines, "\n")+"\n"), 0o600); err != nil {
				w.t.Fatal(err)
			}
		}
	}
}

// substitute replaces the placeholders standing as words of cmd.
func (w *walkthrough) substitute(c readmeCommand) string {
	words := strings.Fields(c.text)
	for i, word := range words {
		for _, p := range readmePlaceholders {
			if word == p.name {
				v, ok := w.values[p.name]
				if !ok {
					w.t.Fatalf("README.md:%d: %s: no earlier command printed %s", c.line, c.text, p.name)
				}
				words[i] = v
			}
		}
	}
	return strings.Join(words, " ")
}

func (w *walkthrough) run(cmds []readmeCommand, i int) {
	t := w.t
	c := cmds[i]
	line := w.substitute(c)
	w.limit.Step("README.md:%d: %s", c.line, line)
	for _, d := range readmeDaemons {
		if strings.HasPrefix(line+" ", d.prefix) {
			w.start(c, line, d.ready)
			return
		}
	}
	// A placeholder this command produces for a later one.
	type want struct {
		name  string
		wait  bool
		value func(out, use string) (string, bool)
		use   string
	}
	var wants []want
	for _, p := range readmePlaceholders {
		if !strings.HasPrefix(line+" ", p.from) {
			continue
		}
		for _, later := range cmds[i+1:] {
			if slices.Contains(strings.Fields(later.text), p.name) {
				wants = append(wants, want{p.name, p.wait, p.value, later.text})
				break
			}
			if strings.HasPrefix(later.text+" ", p.from) {
				break // produced again before any use
			}
		}
	}
	began := time.Now()
	deadline := began.Add(90 * time.Second)
	defer func() { t.Logf("README.md:%d: %s (%s)", c.line, line, time.Since(began).Round(time.Millisecond)) }()
	for {
		out, errs, err := w.sh(line, deadline)
		if c.wantFail {
			if err == nil {
				t.Fatalf("README.md:%d: %s: succeeded; the README says it fails\nstdout: %s", c.line, line, out)
			}
			return
		}
		if err != nil {
			t.Fatalf("README.md:%d: %s: %v\nstdout: %s\nstderr: %s", c.line, line, err, out, errs)
		}
		missing, wait := "", false
		for _, wt := range wants {
			v, ok := wt.value(out, wt.use)
			if !ok {
				missing, wait = wt.name, wt.wait
				break
			}
			w.values[wt.name] = v
		}
		if missing == "" {
			return
		}
		if !wait || time.Now().After(deadline) {
			t.Fatalf("README.md:%d: %s: its output does not hold %s, which a later command needs:\n%s", c.line, line, missing, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// sh runs one command line to completion, or until deadline.
func (w *walkthrough) sh(line string, deadline time.Time) (string, string, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", line)
	cmd.Dir, cmd.Env = w.dir, w.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("no end within its deadline: %w", err)
	}
	return out.String(), errb.String(), err
}

// start runs a command that serves until stopped, and waits for its ready line.
func (w *walkthrough) start(c readmeCommand, line, ready string) {
	t := w.t
	if strings.HasPrefix(line, "umbra dev ") {
		args, _ := devArgs(t, "")
		line += " " + strings.Join(args[3:], " ") // the port flags, after dev --data DIR
	}
	cmd := exec.Command("/bin/sh", "-c", "exec "+line)
	cmd.Dir, cmd.Env = w.dir, w.env
	if strings.HasPrefix(line, "umbra mcp connect ") {
		w.mcpClient(c, cmd)
		return
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errb := &syncBuffer{}
	cmd.Stderr = errb
	if err := cmd.Start(); err != nil {
		t.Fatalf("README.md:%d: %s: %v", c.line, line, err)
	}
	done := make(chan struct{})
	w.stopAtEnd(cmd, done)
	lines := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		var acc []byte
		for {
			n, err := stdout.Read(buf)
			acc = append(acc, buf[:n]...)
			for {
				i := bytes.IndexByte(acc, '\n')
				if i < 0 {
					break
				}
				select {
				case lines <- string(acc[:i]):
				default: // nobody reads after ready
				}
				acc = acc[i+1:]
			}
			if err != nil {
				break
			}
		}
		close(lines)
		cmd.Wait()
		close(done)
	}()
	timeout := time.After(90 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("README.md:%d: %s: exited before it was ready:\n%s", c.line, line, errb.String())
			}
			if strings.Contains(l, ready) {
				t.Logf("README.md:%d: %s: %s", c.line, line, l)
				return
			}
		case <-timeout:
			t.Fatalf("README.md:%d: %s: not ready after 90s:\n%s", c.line, line, errb.String())
		}
	}
}

// stopAtEnd stops a background command when the test ends (interrupt, then kill).
func (w *walkthrough) stopAtEnd(cmd *exec.Cmd, done chan struct{}) {
	w.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
}

// mcpClient connects an MCP client through `umbra mcp connect`, waits until it sees the dark backend's
// catalogue_lookup, and calls it in the background: the call waits for the approval the README gives next.
func (w *walkthrough) mcpClient(c readmeCommand, cmd *exec.Cmd) {
	t := w.t
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "readme", Version: "1"}, nil).Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("README.md:%d: %s: an MCP client could not connect: %v", c.line, c.text, err)
	}
	t.Cleanup(func() { cs.Close() })
	const tool = "dark__catalogue_lookup"
	for deadline := time.Now().Add(60 * time.Second); ; {
		tools, err := cs.ListTools(ctx, nil)
		if err != nil {
			t.Fatalf("README.md:%d: %s: tools/list: %v", c.line, c.text, err)
		}
		found := false
		for _, tl := range tools.Tools {
			found = found || tl.Name == tool
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("README.md:%d: %s: the client never saw %s", c.line, c.text, tool)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("README.md:%d: %s: an MCP client sees %s and calls it", c.line, c.text, tool)
	w.call = make(chan error, 1)
	go func() {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: map[string]any{"sku": "w-1"}})
		switch {
		case err != nil:
		case res.IsError:
			err = fmt.Errorf("tool error: %+v", res.Content)
		default:
			if m, ok := res.StructuredContent.(map[string]any); !ok || m["name"] != "widget" {
				err = fmt.Errorf("answer %v, want the widget", res.StructuredContent)
			}
		}
		w.call <- err
	}()
}

// finish checks what the background steps owe: the held MCP call went ahead once approved.
func (w *walkthrough) finish() {
	if w.call == nil {
		w.t.Fatal("no MCP client called the gateway: the README has no `umbra mcp connect`")
	}
	w.limit.Step("the approved MCP call")
	select {
	case err := <-w.call:
		if err != nil {
			w.t.Fatalf("the MCP client's call of dark__catalogue_lookup after its approval: %v", err)
		}
	case <-time.After(60 * time.Second):
		w.t.Fatal("the MCP client's call of dark__catalogue_lookup did not end within 60s of its approval")
	}
}
