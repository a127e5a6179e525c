package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/demo"
)

// cmdDemo runs the multi-organisation demo on this machine. Its subcommands are the entry points of the
// containerised demo (docker-compose.yml), one workload per container.
func cmdDemo(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		sub := map[string]command{"setup": cmdDemoSetup, "agent": cmdDemoAgent, "exec": cmdDemoExec, "serve-mcp": cmdDemoServeMCP,
			"sockets": cmdDemoSockets, "probe": cmdDemoProbe}
		if cmd, ok := sub[args[0]]; ok {
			return cmd(ctx, args[1:], stdin, stdout, stderr)
		}
	}
	f := newFlags("demo", stderr)
	var data, openaiModel string
	var loop bool
	var rounds int
	var pace, pause time.Duration
	f.StringVar(&data, "data", "", "directory for everything the demo creates; must be empty or absent (default: a new temporary directory)")
	f.BoolVar(&loop, "loop", false, "keep running rounds on the same network until interrupted (or --rounds have run)")
	f.IntVar(&rounds, "rounds", 0, "rounds to run on the same network, then exit; any round that fails or loses an envelope ends the run with an error (default 1, or unlimited with --loop)")
	f.DurationVar(&pause, "pause", 10*time.Second, "pause between rounds")
	f.StringVar(&openaiModel, "openai-model", "", "use this OpenAI model (key in OPENAI_API_KEY) instead of the built-in sample model")
	f.DurationVar(&pace, "pace", 0, "pause between the planner's steps, to follow the feed more easily")
	f.args(0, "")
	f.check(func([]string) error {
		if rounds < 0 || pause < 0 || pace < 0 {
			return errors.New("--rounds, --pause and --pace cannot be negative")
		}
		if openaiModel != "" && os.Getenv("OPENAI_API_KEY") == "" {
			return errors.New("--openai-model needs the key in OPENAI_API_KEY")
		}
		return nil
	})
	if _, err := f.parse(args); err != nil {
		return err
	}
	// The feed on stdout is the demo; the components' own warnings (every refusal is one) only with --log-level.
	levelSet := false
	f.Visit(func(fl *flag.Flag) { levelSet = levelSet || fl.Name == "log-level" })
	if !levelSet {
		f.level = "error"
	}
	// The demo routes OpenZiti's logs itself (demo.Config.LogLevel), into a logger it silences at shutdown.
	log, level, err := f.logger(stderr)
	if err != nil {
		return err
	}
	if data == "" {
		if data, err = os.MkdirTemp("", "umbra-demo-"); err != nil {
			return err
		}
	}
	cfg := demo.Config{DataDir: data, Out: stdout, Logger: log, LogLevel: level, SecondRouter: demoChildRouter(), Pace: pace,
		Rounds: rounds, RoundPause: pause}
	if loop && rounds == 0 {
		cfg.Rounds = -1
	}
	if openaiModel != "" {
		key := os.Getenv("OPENAI_API_KEY")
		if key == "" {
			return errors.New("demo: --openai-model needs OPENAI_API_KEY")
		}
		cfg.Upstream = &demo.Upstream{Provider: "openai", APIKey: key, Model: openaiModel}
	}
	sum, err := demo.Run(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nRead the brief:        %s\nThe audit trail:       %s (%d records this round, chain verified: %v)\n"+
		"Everything else is in: %s\n", sum.Brief, sum.AuditExport, sum.AuditRecords, sum.AuditVerified, data)
	if !sum.AuditVerified {
		return errors.New("demo: the audit chain did not verify")
	}
	return nil
}

// demoChildRouter starts the second router as a child process of this binary (one router per process). The
// child also exits when this process goes away: it watches its stdin.
func demoChildRouter() func(ctx context.Context, r demo.RouterSpec) (func(), error) {
	return func(ctx context.Context, r demo.RouterSpec) (func(), error) {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(r.DataDir, 0o700); err != nil {
			return nil, err
		}
		tokenFile := filepath.Join(r.DataDir, "enroll.token")
		if err := os.WriteFile(tokenFile, []byte(r.Token+"\n"), 0o600); err != nil {
			return nil, err
		}
		logFile, err := os.Create(filepath.Join(r.DataDir, "router.log"))
		if err != nil {
			return nil, err
		}
		args := []string{"demo", "exec", "--watch-stdin", "--", "router", "--data", r.DataDir, "--token", tokenFile, "--edge", r.EdgeAddr}
		if r.LinkAddr != "" {
			args = append(args, "--link", r.LinkAddr)
		}
		cmd := exec.Command(exe, args...)
		cmd.Stderr = logFile
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		done, ready := make(chan struct{}), make(chan struct{})
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if strings.Contains(sc.Text(), "umbra router ready") {
					close(ready)
					break
				}
			}
			_, _ = io.Copy(io.Discard, out)
			_ = cmd.Wait()
			logFile.Close()
			close(done)
		}()
		stop := func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			stdin.Close()
		}
		select {
		case <-ready:
			return stop, nil
		case <-done:
			return nil, fmt.Errorf("router process exited; see %s", filepath.Join(r.DataDir, "router.log"))
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case <-time.After(2 * time.Minute):
			stop()
			return nil, errors.New("router process not ready after 2 minutes")
		}
	}
}

// demoWaitFile waits until path exists.
func demoWaitFile(ctx context.Context, path string) error {
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", path, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// demoEnroll redeems the token in tokenFile into identity unless identity exists already.
func demoEnroll(ctx context.Context, tokenFile, identity string) error {
	if _, err := os.Stat(identity); err == nil {
		return nil
	}
	if err := demoWaitFile(ctx, tokenFile); err != nil {
		return err
	}
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	id, err := agentsdk.Enroll(ctx, strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(identity), 0o700); err != nil {
		return err
	}
	return id.Save(identity)
}

// cmdDemoExec waits for files, enrolls an identity if asked, then runs an umbra command in this process.
func cmdDemoExec(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var command []string
	for i, a := range args {
		if a == "--" {
			args, command = args[:i], args[i+1:]
			break
		}
	}
	if len(command) == 0 && !wantsHelp(args) {
		return usagef("demo exec", "give the umbra command after --")
	}
	f := newFlags("demo exec", stderr)
	var waits multi
	var token, identity, unless string
	var watch bool
	f.Var(&waits, "wait", "wait until this file exists (repeatable)")
	f.StringVar(&unless, "unless-exists", "", "do nothing if this file exists (a one-time job, run again by a second start)")
	f.StringVar(&token, "token", "", "enrollment token file to redeem into --identity if that does not exist yet")
	f.StringVar(&identity, "identity", "", "identity file")
	f.BoolVar(&watch, "watch-stdin", false, "stop when stdin closes (the parent process went away)")
	f.args(0, "")
	f.check(func([]string) error {
		if token != "" && identity == "" {
			return errors.New("--token needs --identity")
		}
		return nil
	})
	if _, err := f.parse(args); err != nil {
		return err
	}
	if unless != "" {
		if _, err := os.Lstat(unless); err == nil {
			fmt.Fprintf(stdout, "%s exists: nothing to do\n", unless)
			return nil
		}
	}
	if watch {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go func() {
			_, _ = io.Copy(io.Discard, stdin)
			cancel()
		}()
		stdin = strings.NewReader("")
	}
	for _, w := range waits {
		if err := demoWaitFile(ctx, w); err != nil {
			return err
		}
	}
	if token != "" {
		if err := demoEnroll(ctx, token, identity); err != nil {
			return err
		}
	}
	return run(ctx, command, stdin, stdout, stderr)
}

// cmdDemoSetup creates the scenario's organisations, identities, workgroups and grants. Each workload gets a
// directory of its own under --out, named by its key, that only it mounts besides setup: setup writes the
// workload's enrollment token there (token), a gateway's configuration, and, once the whole scenario is in
// place, ready. The organisations' administrators' identities stay in --admins, which no workload mounts.
func cmdDemoSetup(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("demo setup", stderr)
	var adminFile, out, admins, state string
	var routers multi
	f.StringVar(&adminFile, "admin", "", "the platform administrator's identity file (waited for)")
	f.StringVar(&out, "out", "", "directory holding one existing directory per workload, named by its key (e.g. northwind-planner)")
	f.StringVar(&admins, "admins", "admins", "directory for the organisations' administrators' identities")
	f.StringVar(&state, "state", "/data/state", "the gateways' state directory, written into their configurations")
	f.Var(&routers, "router-token", "NAME:FILE: register router NAME and write its enrollment token to FILE (repeatable)")
	f.require("admin", "out")
	f.args(0, "")
	f.check(func([]string) error {
		for _, r := range routers {
			if _, _, ok := strings.Cut(r, ":"); !ok {
				return fmt.Errorf("--router-token %q: want NAME:FILE", r)
			}
		}
		return nil
	})
	if _, err := f.parse(args); err != nil {
		return err
	}
	log, err := f.logging(stderr)
	if err != nil {
		return err
	}
	workloads := append(append([]demo.Workload{}, demo.Agents...), demo.Services...)
	done := true
	for _, w := range workloads {
		dir := filepath.Join(out, w.Key())
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return fmt.Errorf("demo setup: %s must be a directory of %s's own", dir, w.Label())
		}
		if _, err := os.Stat(filepath.Join(dir, "ready")); err != nil {
			done = false
		}
	}
	if done {
		fmt.Fprintln(stdout, "demo setup: already done")
		return nil
	}
	if err := demoWaitFile(ctx, adminFile); err != nil {
		return err
	}
	id, err := agentsdk.LoadIdentity(adminFile)
	if err != nil {
		return err
	}
	admin, err := agentsdk.Connect(ctx, id, agentsdk.WithLogger(log))
	if err != nil {
		return err
	}
	defer admin.Close()
	for deadline := time.Now().Add(3 * time.Minute); ; {
		_, err := admin.Controller().WhoAmI(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo setup: the controller's API did not come up: %w", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, r := range routers {
		name, path, ok := strings.Cut(r, ":")
		if !ok {
			return fmt.Errorf("--router-token %q: want NAME:FILE", r)
		}
		if _, err := os.Stat(path); err == nil {
			continue
		}
		tok, err := admin.Controller().CreateRouter(ctx, name)
		if err != nil {
			return err
		}
		if err := demoWriteFile(path, tok+"\n"); err != nil {
			return err
		}
	}
	feed := demo.NewFeed(stdout)
	tokens, err := demo.Setup(ctx, admin, admins, feed)
	if err != nil {
		return err
	}
	td := admin.ID().TrustDomain()
	configs := map[string][2]string{
		demo.MCPGateway.Key(): {"mcpgw.yaml", demo.MCPGatewayYAML(state)},
		demo.LLMGateway.Key(): {"llmgw.yaml", demo.LLMGatewayYAML(state, td)},
	}
	for _, w := range workloads {
		dir := filepath.Join(out, w.Key())
		if err := demoWriteFile(filepath.Join(dir, "token"), tokens[w.Key()]+"\n"); err != nil {
			return err
		}
		if c, ok := configs[w.Key()]; ok {
			if err := demoWriteFile(filepath.Join(dir, c[0]), c[1]); err != nil {
				return err
			}
		}
	}
	// ready only once every workload has what it needs: the agents expect each other's workgroups and grants.
	for _, w := range workloads {
		if err := demoWriteFile(filepath.Join(out, w.Key(), "ready"), "ready\n"); err != nil {
			return err
		}
	}
	fmt.Fprintln(stdout, "demo setup: done")
	return nil
}

// demoWriteFile writes a file readable by its owner only, whole or not at all: the workload waiting for it
// reads it as soon as it appears.
func demoWriteFile(path, text string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(text); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// cmdDemoAgent runs one agent of the scenario, then stays connected until stopped.
func cmdDemoAgent(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("demo agent", stderr)
	var key, token, identity, out string
	var rounds int
	var exit bool
	var pace time.Duration
	f.StringVar(&key, "role", "", "the agent, e.g. northwind-planner")
	f.StringVar(&token, "token", "", "enrollment token file (waited for) if --identity does not exist yet")
	f.StringVar(&identity, "identity", "identity.json", "identity file")
	f.StringVar(&out, "out", ".", "where the planner writes the brief")
	f.IntVar(&rounds, "rounds", 1, "rounds to play")
	f.BoolVar(&exit, "exit", false, "exit after the rounds instead of staying connected")
	f.DurationVar(&pace, "pace", 0, "pause between the planner's steps")
	f.require("role")
	f.args(0, "")
	var w demo.Workload
	f.check(func([]string) error {
		var ok bool
		if w, ok = demo.WorkloadByKey(key); !ok {
			return fmt.Errorf("--role %q: not an agent of the demo (e.g. northwind-planner)", key)
		}
		return nil
	})
	if _, err := f.parse(args); err != nil {
		return err
	}
	log, err := f.logging(stderr)
	if err != nil {
		return err
	}
	if token != "" {
		if err := demoEnroll(ctx, token, identity); err != nil {
			return err
		}
	}
	id, err := agentsdk.LoadIdentity(identity)
	if err != nil {
		return err
	}
	a, err := agentsdk.Connect(ctx, id, agentsdk.WithLogger(log), agentsdk.WithIdentityFile(identity))
	if err != nil {
		return err
	}
	defer a.Close()
	feed := demo.NewFeed(stdout)
	if err := demo.RunAgent(ctx, a, w, rounds, out, pace, feed); err != nil {
		return err
	}
	if w == demo.Planner {
		if b, err := os.ReadFile(filepath.Join(out, demo.BriefFile)); err == nil {
			feed.Text("%s", b)
		}
	}
	if exit {
		return nil
	}
	<-ctx.Done()
	return nil
}

// cmdDemoServeMCP hosts one of the demo's MCP servers as a dark service.
func cmdDemoServeMCP(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var server, service string
	return withAgent(ctx, "demo serve-mcp", args, stderr, func(f *flags) {
		f.StringVar(&server, "server", "", "scada or marine")
		f.StringVar(&service, "service", "", "overlay service to host")
		f.require("server", "service")
		f.args(0, "")
		f.check(func([]string) error {
			if server != "scada" && server != "marine" {
				return fmt.Errorf("--server %q: want scada or marine", server)
			}
			return nil
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		feed := demo.NewFeed(stdout)
		switch server {
		case "scada":
			feed.Event(server, "hosting turbine telemetry as dark service %s (no listening socket)", service)
			return demo.ServeMCP(ctx, a, service, demo.NewSCADAServer())
		case "marine":
			m := demo.NewMarineServer()
			m.Changed = func() {
				feed.Event(server, "published an update of sea_state: the description now asks for the whole conversation")
			}
			feed.Event(server, "hosting tides and sea state as dark service %s (no listening socket)", service)
			return demo.ServeMCP(ctx, a, service, m.Server)
		}
		return fmt.Errorf("demo serve-mcp: --server %q: want scada or marine", server)
	})
}

// cmdDemoSockets counts the listening sockets (TCP in LISTEN, unconnected UDP) of the processes of this PID
// namespace, the container's workload: the sockets of this network namespace whose inode one of them holds.
// Sockets no process here holds belong to someone else, such as the DNS resolver Docker runs at 127.0.0.11
// for every container on a user-defined network; they are listed apart.
func cmdDemoSockets(_ context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("demo sockets", stderr)
	f.args(0, "")
	if _, err := f.parse(args); err != nil {
		return err
	}
	owned := map[string]bool{}
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if link, err := os.Readlink(fd); err == nil && strings.HasPrefix(link, "socket:[") {
			owned[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	n := 0
	for _, file := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile("/proc/net/" + file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) < 10 {
				continue
			}
			// TCP: state LISTEN. UDP: not connected to one peer (a connected socket, such as a DNS query in
			// flight, takes datagrams only from that peer), so it would take them from anyone.
			_, remotePort, _ := strings.Cut(fields[2], ":")
			if strings.HasPrefix(file, "tcp") && fields[3] != "0A" || strings.HasPrefix(file, "udp") && remotePort != "0000" {
				continue
			}
			if owned[fields[9]] {
				n++
				fmt.Fprintf(stdout, "listening: %s %s (inode %s)\n", file, fields[1], fields[9])
			} else {
				fmt.Fprintf(stdout, "not ours: %s %s (held by no process of this container)\n", file, fields[1])
			}
		}
	}
	fmt.Fprintf(stdout, "%d listening sockets\n", n)
	return nil
}

// cmdDemoProbe tries to open a TCP connection, to show what a workload can reach directly.
func cmdDemoProbe(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("demo probe", stderr)
	var timeout time.Duration
	f.DurationVar(&timeout, "timeout", 3*time.Second, "connection timeout")
	f.check(func(pos []string) error {
		if len(pos) == 0 {
			return errors.New("give one or more HOST:PORT to try")
		}
		return nil
	})
	addrs, err := f.parse(args)
	if err != nil {
		return err
	}
	failed := 0
	for _, addr := range addrs {
		d := net.Dialer{Timeout: timeout}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "%s unreachable: %v\n", addr, err)
			continue
		}
		conn.Close()
		fmt.Fprintf(stdout, "%s reachable\n", addr)
	}
	if failed > 0 {
		return fmt.Errorf("demo probe: %d of %d unreachable", failed, len(addrs))
	}
	return nil
}
