// Command umbra runs and operates an Umbra network: the controller, routers, a one-process development network,
// enrollment, identities and services.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/umbra-mesh/umbra/internal/zitilog"
)

const usage = `umbra: the zero-trust overlay for AI agents

Usage:
  umbra dev        --data DIR                       controller + router + NATS in one process
  umbra dev        --data DIR --controllers 3 --routers 2   a cluster, each member a child process (docs/cluster.md)
  umbra demo       [--data DIR] [--loop]            the multi-organisation demo, all on this machine
  umbra controller --data DIR [--router-token NAME:FILE]
                   [--cluster-init | --cluster-join tls:HOST:PORT --cluster-secrets FILE]
      a cluster of controllers also takes the NATS cluster flags (docs/cluster.md)
      dev and controller also take --max-identity-age D (renewal refused D after enrollment; default 720h)
      and --reset-admin (break-glass: new platform administrator in DIR/admin.json, every earlier one revoked)
  umbra controller secrets export --data DIR --out FILE   the keys every controller of a cluster shares
  umbra cluster status --as ADMIN.json [--json]      the controller cluster's members, as one member sees them
  umbra cluster remove --as ADMIN.json --member ID   removes a member gone for good (start its replacement first)
  umbra router     --data DIR [--token FILE] [--edge HOST:PORT] [--link HOST:PORT]
  umbra router create   --as ADMIN.json --name NAME  prints a router enrollment token
  umbra identity create --as ADMIN.json --org O --kind K --name N [--admin] [--token-ttl D]
  umbra identity revoke --as ADMIN.json SPIFFE-ID [--reason R]
  umbra identity reenroll --as ADMIN.json SPIFFE-ID [--token-ttl D]   prints a new enrollment token for it
  umbra identity suspend|resume --as ADMIN.json SPIFFE-ID --reason R   the kill switch (docs/posture.md)
  umbra inventory --as ADMIN.json [--json]          identities, services, workgroups, advertisements
  umbra posture   --as ADMIN.json [--json] [--fail-on SEVERITY]   findings and drift; exit 1 at or above SEVERITY
  umbra posture baseline --as ADMIN.json            records the baseline later posture runs compare with
  umbra alerts    --as ADMIN.json [--follow] [--json]   anomaly alerts, and with --follow the new ones as they come
  umbra policy set    --as ADMIN.json --org ORG --name N --file F.cedar   an organisation's forbid-only Cedar policy
  umbra policy list   --as ADMIN.json [--org ORG] [--json]
  umbra policy remove --as ADMIN.json --org ORG --name N
      evaluated on every A2A decision involving the organisation, on every controller (docs/intent.md)
  umbra admin rotate --as ADMIN.json [--out FILE]   new platform administrator; the old one is revoked
  umbra enroll     --token FILE --out FILE
  umbra whoami     --as ID.json
  umbra service grant --as ADMIN.json --service S [--bind ID]... [--dial ID]...
  umbra service serve --as ID.json --service S --echo
  umbra service dial  --as ID.json --service S
  umbra service list  --as ID.json

  umbra org create --as ADMIN.json --name ORG        prints the org administrator's enrollment token
  umbra workgroup create --as ORG-ADMIN.json --name WG [--invite ORG]...
  umbra workgroup accept|decline --as ORG-ADMIN.json WG
  umbra workgroup member add|remove --as ORG-ADMIN.json WG SPIFFE-ID [--role admin]
  umbra workgroup list|delete --as ID.json [WG]
  umbra advertise --as ID.json --card CARD.json --terms TERMS.json --workgroup WG
  umbra discover  --as ID.json [--skill S] [--text T] [--json]
  umbra session propose --as ID.json --ad AD [--max-messages N] [--types a,b] [--duration D] [--max-bytes N]
                        [--intent PURPOSE [--intent-category C]]
  umbra session send    --as ID.json --session S --type T [--intent PURPOSE [--intent-category C]] < payload
  umbra session recv    --as ID.json [--session S] [--follow]
  umbra session accept|reject|close|withdraw|show --as ID.json S [--reason R]
  umbra session list    --as ID.json [--state STATE]
  umbra audit session|export --as ID.json [S]      export ends in a checkpoint signed by the controller
  umbra audit key    --as ID.json                  prints the controller's checkpoint public key (PEM)
  umbra audit verify --as ADMIN.json [--after SEQ:HASH] [--require-checkpoint]
  umbra audit verify --file audit.jsonl [--file LATER.jsonl] --key KEY.pem [--after SEQ:HASH] [--require-checkpoint]
  umbra audit archive --as ADMIN.json --through SEQ:HASH
      offline, no controller; --after is the checkpoint the last verification printed: fails if the chain
      no longer holds it (truncated, rolled back, rewritten); without a checkpoint a file is only a warning
  umbra envelopes export  --as ADMIN.json --out FILE [--max-sessions N]
      the envelopes of sessions removed after the retention of ended sessions, ending in a manifest
  umbra envelopes archive --as ADMIN.json --file FILE
      removes from the controller the envelopes an export holds, once each session is checked and recorded

  umbra mcp serve   --as ID.json --service S -- COMMAND [ARGS]   makes a stdio MCP server dark
  umbra mcp connect --as ID.json [--service mcpgw]               stdio bridge to the MCP gateway
  umbra mcpgw --as GATEWAY.json --config mcpgw.yaml              hosts the MCP gateway as a dark service
  umbra mcp tools --as ID.json                                   what this identity may see and call
  umbra mcp backends --as ADMIN.json [--json]                    each backend: kind, state, last error, tools, pins
  umbra mcp approvals list|approve|deny --as ADMIN.json [--tools] [ID] [--digest D] [--reason R]

  umbra llmgw --as GATEWAY.json --config llmgw.yaml              hosts the LLM gateway as a dark service
  umbra llm serve  --as ID.json --service S (--upstream URL | --sample NAME)   makes a model server dark
  umbra llm bridge --as ID.json [--listen 127.0.0.1:8089]        loopback bridge for non-Go clients
  umbra llm usage  --as ID.json [--identity ID] [--since 24h]

  umbra ui --as ADMIN.json [--listen 127.0.0.1:8088] [--mcp-gateway mcpgw] [--llm-gateway llmgw]
      the web console, bridged over the overlay to loopback; approvals and usage from the gateways, as ADMIN

  umbra a2a bridge --as ID.json --ad AD [--session S] [--listen 127.0.0.1:8090]   a provider's A2A agent for A2A clients
  umbra a2a serve  --as ID.json --endpoint URL               answers A2A calls with an A2A JSON-RPC server

Every command takes --log-level (debug, info, warn, error; default warn).
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runMain(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// runMain runs one command line and returns the process's exit status; an error is printed as one line.
func runMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := run(ctx, args, stdin, stdout, stderr)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, errorLine(err))
	return 1
}

type command func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error

// commands are the top-level commands that take no subcommand of the table in groups.
func commands() map[string]command {
	return map[string]command{
		"dev":        cmdDev,
		"controller": cmdController,
		"router":     cmdRouter,
		"enroll":     cmdEnroll,
		"whoami":     cmdWhoAmI,
		"advertise":  cmdAdvertise,
		"discover":   cmdDiscover,
		"mcpgw":      cmdMCPGateway,
		"llmgw":      cmdLLMGateway,
		"demo":       cmdDemo,
		"inventory":  cmdInventory,
		"posture":    cmdPosture,
		"alerts":     cmdAlerts,
		"ui":         cmdUI,
	}
}

// groups are the top-level commands made of subcommands.
func groups() map[string]map[string]command {
	return map[string]map[string]command{
		"identity": {"create": cmdIdentityCreate, "revoke": cmdIdentityRevoke, "reenroll": cmdIdentityReenroll,
			"suspend": cmdIdentitySuspend(true), "resume": cmdIdentitySuspend(false)},
		"admin":   {"rotate": cmdAdminRotate},
		"policy":  {"set": cmdPolicySet, "list": cmdPolicyList, "remove": cmdPolicyRemove},
		"service": {"grant": cmdServiceGrant, "serve": cmdServiceServe, "dial": cmdServiceDial, "list": cmdServiceList},
		"org":     {"create": cmdOrgCreate},
		"workgroup": {"create": cmdWorkgroupCreate, "accept": cmdWorkgroupAnswer(false), "decline": cmdWorkgroupAnswer(true),
			"member": cmdWorkgroupMember, "list": cmdWorkgroupList, "delete": cmdWorkgroupDelete},
		"session": {"propose": cmdSessionPropose, "send": cmdSessionSend, "recv": cmdSessionRecv,
			"close": cmdSessionAction("close"), "accept": cmdSessionAction("accept"), "reject": cmdSessionAction("reject"),
			"withdraw": cmdSessionAction("withdraw"), "show": cmdSessionShow, "list": cmdSessionList},
		"mcp": {"serve": cmdMCPServe, "connect": cmdMCPConnect, "tools": cmdMCPTools, "approvals": cmdMCPApprovals,
			"backends": cmdMCPBackends, "sample-server": cmdMCPSampleServer},
		"llm":       {"serve": cmdLLMServe, "bridge": cmdLLMBridge, "usage": cmdLLMUsage},
		"a2a":       {"bridge": cmdA2ABridge, "serve": cmdA2AServe},
		"audit":     {"session": cmdAuditSession, "verify": cmdAuditVerify, "export": cmdAuditExport, "key": cmdAuditKey, "archive": cmdAuditArchive},
		"envelopes": {"export": cmdEnvelopesExport, "archive": cmdEnvelopesArchive},
		"cluster":   {"status": cmdClusterStatus, "remove": cmdClusterRemove},
	}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	if args[0] == "help" {
		return help(ctx, args[1:], stdin, stdout)
	}
	if g, ok := groups()[args[0]]; ok {
		name, cmd, rest, err := subcommand(args[0], g, args[1:], stdout)
		if err != nil || cmd == nil {
			return err
		}
		return named(name, cmd(ctx, rest, stdin, stdout, stderr))
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		return fmt.Errorf("unknown command %q; 'umbra help' lists the commands", args[0])
	}
	return named(args[0], cmd(ctx, args[1:], stdin, stdout, stderr))
}

// subcommand picks the subcommand of group named by args[0]. Asked for help, it prints the group's usage
// and returns no command.
func subcommand(group string, g map[string]command, args []string, stdout io.Writer) (string, command, []string, error) {
	if len(args) == 0 {
		return "", nil, nil, usagef(group, "missing subcommand: one of %s", strings.Join(sortedKeys(g), ", "))
	}
	if wantsHelp(args[:1]) {
		fmt.Fprintf(stdout, "Usage:\n%s\n", strings.Join(usageLines(group), "\n"))
		return "", nil, nil, nil
	}
	cmd, ok := g[args[0]]
	if !ok {
		return "", nil, nil, usagef(group, "unknown subcommand %q: want one of %s", args[0], strings.Join(sortedKeys(g), ", "))
	}
	return group + " " + args[0], cmd, args[1:], nil
}

// help prints the usage of everything, of a group of commands, or of one command with its flags.
func help(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return nil
	}
	if g, ok := groups()[args[0]]; ok {
		if len(args) == 1 {
			fmt.Fprintf(stdout, "Usage:\n%s\n", strings.Join(usageLines(args[0]), "\n"))
			return nil
		}
		cmd, ok := g[args[1]]
		if !ok {
			return usagef(args[0], "unknown subcommand %q: want one of %s", args[1], strings.Join(sortedKeys(g), ", "))
		}
		return quietHelp(cmd(ctx, append(args[2:], "-h"), stdin, stdout, stdout))
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		return fmt.Errorf("help: unknown command %q; 'umbra help' lists the commands", args[0])
	}
	return quietHelp(cmd(ctx, append(args[1:], "-h"), stdin, stdout, stdout))
}

func quietHelp(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

// named attaches the command's name to an error it returned, unless the error names its command already.
func named(cmd string, err error) error {
	var ue *usageError
	var ce *commandError
	if err == nil || errors.Is(err, flag.ErrHelp) || errors.As(err, &ue) || errors.As(err, &ce) {
		return err
	}
	return &commandError{cmd: cmd, err: err}
}

func sortedKeys(m map[string]command) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		if k != "sample-server" { // for the demo and trying things out; not listed
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// flags is a flag set with the options every command shares, and the checks parse makes before a command
// does anything: required flags, the number of positional arguments, and the command's own checks.
type flags struct {
	*flag.FlagSet
	level    string
	out      io.Writer // where -h prints the command's help
	required []string
	nargs    int    // positional arguments wanted; -1: not checked here
	argsWhat string // what they are, for the error message
	checks   []func(pos []string) error
}

func newFlags(name string, stderr io.Writer) *flags {
	f := &flags{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), out: stderr, nargs: -1}
	// Package flag prints errors and a usage dump itself; parse reports one line instead.
	f.SetOutput(io.Discard)
	f.Usage = func() {}
	f.StringVar(&f.level, "log-level", "warn", "log level: debug, info, warn or error")
	return f
}

// require marks flags that must be given a non-empty value.
func (f *flags) require(names ...string) { f.required = append(f.required, names...) }

// args sets how many positional arguments the command takes, and what they are (e.g. "session ID").
func (f *flags) args(n int, what string) { f.nargs, f.argsWhat = n, what }

// check adds a check of the parsed flags and arguments, run before the command does anything.
func (f *flags) check(fn func(pos []string) error) { f.checks = append(f.checks, fn) }

// parse accepts flags before and after positional arguments, then makes the checks. Every error it returns
// is a *usageError, or flag.ErrHelp once the help is printed.
func (f *flags) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				f.printHelp(f.out)
				return nil, err
			}
			return nil, usagef(f.Name(), "%s", f.flagProblem(err))
		}
		args = f.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if !validLevel(f.level) {
		return nil, usagef(f.Name(), "--log-level %q: want debug, info, warn or error", f.level)
	}
	var missing []string
	for _, name := range f.required {
		if fl := f.Lookup(name); fl != nil && fl.Value.String() == "" {
			missing = append(missing, "--"+name)
		}
	}
	switch len(missing) {
	case 0:
	case 1:
		return nil, usagef(f.Name(), "%s is required", missing[0])
	default:
		return nil, usagef(f.Name(), "%s and %s are required", strings.Join(missing[:len(missing)-1], ", "), missing[len(missing)-1])
	}
	switch {
	case f.nargs < 0 || len(pos) == f.nargs:
	case f.nargs == 0:
		return nil, usagef(f.Name(), "unexpected argument %q", pos[0])
	case len(pos) == 0:
		return nil, usagef(f.Name(), "missing %s", f.argsWhat)
	default:
		return nil, usagef(f.Name(), "want %d arguments (%s), got %d", f.nargs, f.argsWhat, len(pos))
	}
	for _, c := range f.checks {
		if err := c(pos); err != nil {
			var ue *usageError
			if errors.As(err, &ue) {
				return nil, err
			}
			return nil, usagef(f.Name(), "%s", err)
		}
	}
	return pos, nil
}

func (f *flags) logger(stderr io.Writer) (*slog.Logger, slog.Level, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.ToLower(f.level))); err != nil {
		return nil, 0, usagef(f.Name(), "--log-level %q: want debug, info, warn or error", f.level)
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})), level, nil
}

// logging builds the logger and routes OpenZiti's own logs into it at the same level.
func (f *flags) logging(stderr io.Writer) (*slog.Logger, error) {
	log, level, err := f.logger(stderr)
	if err != nil {
		return nil, err
	}
	zitilog.Route(log, level)
	return log, nil
}

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }
