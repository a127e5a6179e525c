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
	"strings"
	"syscall"

	"github.com/umbra-mesh/umbra/internal/zitilog"
)

const usage = `umbra: the zero-trust overlay for AI agents

Usage:
  umbra dev        --data DIR                       controller + router + NATS in one process
  umbra demo       [--data DIR] [--loop]            the multi-organisation demo, all on this machine
  umbra controller --data DIR [--router-token NAME:FILE]
      dev and controller also take --max-identity-age D (renewal refused D after enrollment; default 720h)
      and --reset-admin (break-glass: new platform administrator in DIR/admin.json, every earlier one revoked)
  umbra router     --data DIR [--token FILE] [--edge HOST:PORT] [--link HOST:PORT]
  umbra router create   --as ADMIN.json --name NAME  prints a router enrollment token
  umbra identity create --as ADMIN.json --org O --kind K --name N [--admin] [--token-ttl D]
  umbra identity revoke --as ADMIN.json SPIFFE-ID [--reason R]
  umbra identity reenroll --as ADMIN.json SPIFFE-ID [--token-ttl D]   prints a new enrollment token for it
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
  umbra session send    --as ID.json --session S --type T < payload
  umbra session recv    --as ID.json [--session S] [--follow]
  umbra session accept|reject|close|show --as ID.json S [--reason R]
  umbra session list    --as ID.json [--state STATE]
  umbra audit session|export --as ID.json [S]      export ends in a checkpoint signed by the controller
  umbra audit key    --as ID.json                  prints the controller's checkpoint public key (PEM)
  umbra audit verify --as ADMIN.json [--after SEQ:HASH] [--require-checkpoint]
  umbra audit verify --file audit.jsonl --key KEY.pem [--after SEQ:HASH] [--require-checkpoint]
      offline, no controller; --after is the checkpoint the last verification printed: fails if the chain
      no longer holds it (truncated, rolled back, rewritten); without a checkpoint a file is only a warning

  umbra mcp serve   --as ID.json --service S -- COMMAND [ARGS]   makes a stdio MCP server dark
  umbra mcp connect --as ID.json [--service mcpgw]               stdio bridge to the MCP gateway
  umbra mcpgw --as GATEWAY.json --config mcpgw.yaml              hosts the MCP gateway as a dark service
  umbra mcp tools --as ID.json                                   what this identity may see and call
  umbra mcp approvals list|approve|deny --as ADMIN.json [--tools] [ID] [--digest D]

  umbra llmgw --as GATEWAY.json --config llmgw.yaml              hosts the LLM gateway as a dark service
  umbra llm serve  --as ID.json --service S (--upstream URL | --sample NAME)   makes a model server dark
  umbra llm bridge --as ID.json [--listen 127.0.0.1:8089]        loopback bridge for non-Go clients
  umbra llm usage  --as ID.json [--identity ID] [--since 24h]

Every command takes --log-level (debug, info, warn, error; default warn).
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "umbra:", err)
		}
		os.Exit(1)
	}
}

type command func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	cmds := map[string]command{
		"dev":        cmdDev,
		"controller": cmdController,
		"router":     cmdRouter,
		"enroll":     cmdEnroll,
		"whoami":     cmdWhoAmI,
		"identity": subcommands(map[string]command{"create": cmdIdentityCreate, "revoke": cmdIdentityRevoke,
			"reenroll": cmdIdentityReenroll}),
		"admin": subcommands(map[string]command{"rotate": cmdAdminRotate}),
		"service": subcommands(map[string]command{"grant": cmdServiceGrant, "serve": cmdServiceServe,
			"dial": cmdServiceDial, "list": cmdServiceList}),
		"org": subcommands(map[string]command{"create": cmdOrgCreate}),
		"workgroup": subcommands(map[string]command{"create": cmdWorkgroupCreate, "accept": cmdWorkgroupAnswer(false),
			"decline": cmdWorkgroupAnswer(true), "member": cmdWorkgroupMember, "list": cmdWorkgroupList, "delete": cmdWorkgroupDelete}),
		"advertise": cmdAdvertise,
		"discover":  cmdDiscover,
		"session": subcommands(map[string]command{"propose": cmdSessionPropose, "send": cmdSessionSend, "recv": cmdSessionRecv,
			"close": cmdSessionAction("close"), "accept": cmdSessionAction("accept"), "reject": cmdSessionAction("reject"),
			"show": cmdSessionShow, "list": cmdSessionList}),
		"mcp": subcommands(map[string]command{"serve": cmdMCPServe, "connect": cmdMCPConnect, "tools": cmdMCPTools,
			"approvals": cmdMCPApprovals, "sample-server": cmdMCPSampleServer}),
		"mcpgw": cmdMCPGateway,
		"llmgw": cmdLLMGateway,
		"llm":   subcommands(map[string]command{"serve": cmdLLMServe, "bridge": cmdLLMBridge, "usage": cmdLLMUsage}),
		"audit": subcommands(map[string]command{"session": cmdAuditSession, "verify": cmdAuditVerify, "export": cmdAuditExport,
			"key": cmdAuditKey}),
		"demo": cmdDemo,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		return fmt.Errorf("unknown command %q (run umbra help)", args[0])
	}
	return cmd(ctx, args[1:], stdin, stdout, stderr)
}

func subcommands(m map[string]command) command {
	return func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
		if len(args) == 0 {
			return fmt.Errorf("missing subcommand (run umbra help)")
		}
		cmd, ok := m[args[0]]
		if !ok {
			return fmt.Errorf("unknown subcommand %q (run umbra help)", args[0])
		}
		return cmd(ctx, args[1:], stdin, stdout, stderr)
	}
}

// flags is a flag set with the options every command shares.
type flags struct {
	*flag.FlagSet
	level string
}

func newFlags(name string, stderr io.Writer) *flags {
	f := &flags{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError)}
	f.SetOutput(stderr)
	f.StringVar(&f.level, "log-level", "warn", "log level: debug, info, warn or error")
	return f
}

// parse accepts flags before and after positional arguments.
func (f *flags) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			return nil, err
		}
		args = f.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func (f *flags) logger(stderr io.Writer) (*slog.Logger, slog.Level, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.ToLower(f.level))); err != nil {
		return nil, 0, fmt.Errorf("--log-level %q: %w", f.level, err)
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
