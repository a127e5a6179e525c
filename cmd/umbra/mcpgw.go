package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/gatewayhost"
	"github.com/umbra-mesh/umbra/internal/tracing"
	"github.com/umbra-mesh/umbra/mcpgw"
)

// mcpgwFile is the MCP gateway's configuration file.
type mcpgwFile struct {
	Service        string        `yaml:"service"` // overlay service to host; default mcpgw
	Data           string        `yaml:"data"`    // state directory; default mcpgw-data
	Separator      string        `yaml:"separator"`
	Policies       string        `yaml:"policies"`    // Cedar text
	PolicyFile     string        `yaml:"policy_file"` // or a file of Cedar text
	Sensitive      []string      `yaml:"sensitive"`
	Admins         []string      `yaml:"admins"`         // SPIFFE IDs that administer the gateway fully
	AdminOrgs      []string      `yaml:"admin_orgs"`     // organisations whose administrators decide their own callers' held calls
	AdminPolicies  string        `yaml:"admin_policies"` // Cedar text added to the built-in administration policies
	AuditArguments bool          `yaml:"audit_arguments"`
	MetricsListen  string        `yaml:"metrics_listen"`       // loopback HOST:PORT for Prometheus; default: /metrics on the overlay only, to administrators
	MetricsRemote  bool          `yaml:"metrics_allow_remote"` // let metrics_listen be a non-loopback address
	OTLPEndpoint   string        `yaml:"otlp_endpoint"`        // OTLP/HTTP collector for traces; --otlp-endpoint overrides it
	StartTimeout   time.Duration `yaml:"start_timeout"`        // how long to wait for a first backend; default 30s
	Approvals      struct {
		Timeout time.Duration `yaml:"timeout"`
		TTL     time.Duration `yaml:"ttl"`
		Hold    time.Duration `yaml:"hold"`
	} `yaml:"approvals"`
	Limits struct {
		CallsPerMinute int           `yaml:"calls_per_minute"`
		Burst          int           `yaml:"burst"`
		Concurrent     int           `yaml:"concurrent"`
		CallTimeout    time.Duration `yaml:"call_timeout"`
		MaxRequest     int64         `yaml:"max_request"`
		MaxResponse    int64         `yaml:"max_response"`
	} `yaml:"limits"`
	Backends []struct {
		Name    string `yaml:"name"`
		Trusted bool   `yaml:"trusted"`
		Spawn   string `yaml:"spawn"`
		Stdio   *struct {
			Command []string          `yaml:"command"`
			Env     map[string]string `yaml:"env"`
		} `yaml:"stdio"`
		HTTP *struct {
			URL string `yaml:"url"`
		} `yaml:"http"`
		Overlay *struct {
			Service string `yaml:"service"`
		} `yaml:"overlay"`
	} `yaml:"backends"`
}

// decodeYAML decodes one YAML document strictly: unknown keys are errors.
func decodeYAML(b []byte, v any) error {
	if len(b) > 1<<20 {
		return errors.New("configuration larger than 1 MiB")
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("the file is empty")
		}
		return yamlError(err)
	}
	return nil
}

// withPolicyFile appends the Cedar text of file (if any) to inline.
func withPolicyFile(inline, file string) (string, error) {
	if file == "" {
		return inline, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	return inline + "\n" + string(b), nil
}

// parseMCPGatewayConfig decodes and checks a gateway configuration file.
func parseMCPGatewayConfig(b []byte) (mcpgwFile, error) {
	var fc mcpgwFile
	if err := decodeYAML(b, &fc); err != nil {
		return fc, err
	}
	if fc.Service == "" {
		fc.Service = "mcpgw"
	}
	if fc.Data == "" {
		fc.Data = "mcpgw-data"
	}
	if len(fc.Backends) == 0 {
		return fc, errors.New("no backends")
	}
	for _, raw := range fc.Admins {
		if _, err := spiffeid.FromString(raw); err != nil {
			return fc, fmt.Errorf("admins: %q: %w", raw, err)
		}
	}
	for _, b := range fc.Backends {
		n := 0
		for _, set := range []bool{b.Stdio != nil, b.HTTP != nil, b.Overlay != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			return fc, fmt.Errorf("backend %q: give exactly one of stdio, http, overlay", b.Name)
		}
		switch {
		case b.Stdio != nil && len(b.Stdio.Command) == 0:
			return fc, fmt.Errorf("backend %q: stdio.command is empty", b.Name)
		case b.HTTP != nil && !strings.HasPrefix(b.HTTP.URL, "http://") && !strings.HasPrefix(b.HTTP.URL, "https://"):
			return fc, fmt.Errorf("backend %q: http.url must be an http(s) URL", b.Name)
		case b.Overlay != nil && b.Overlay.Service == "":
			return fc, fmt.Errorf("backend %q: overlay.service is empty", b.Name)
		}
	}
	return fc, nil
}

// mcpBackend turns one configured backend into the gateway's transport factory.
func mcpBackend(i int, f *mcpgwFile, host *gatewayhost.Host) (mcpgw.Backend, error) {
	b := f.Backends[i]
	out := mcpgw.Backend{Name: b.Name, Trusted: b.Trusted, Spawn: b.Spawn}
	kinds := 0
	switch {
	case b.Stdio != nil:
		kinds++
		out.Kind = "stdio"
		if len(b.Stdio.Command) == 0 {
			return out, fmt.Errorf("backend %s: stdio.command is empty", b.Name)
		}
		out.Connect = func(ctx context.Context) (mcp.Transport, error) {
			cmd := exec.Command(b.Stdio.Command[0], b.Stdio.Command[1:]...)
			cmd.Env = os.Environ()
			for k, v := range b.Stdio.Env {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			return &mcp.CommandTransport{Command: cmd}, nil
		}
	case b.HTTP != nil:
		kinds++
		out.Kind = "http"
		out.Connect = func(ctx context.Context) (mcp.Transport, error) {
			return &mcp.StreamableClientTransport{Endpoint: b.HTTP.URL}, nil
		}
	case b.Overlay != nil:
		kinds++
		out.Kind, out.Service = "overlay", b.Overlay.Service
		// A dark MCP server hosted with `umbra mcp serve`: the MCP stdio transport inside an overlay connection.
		out.Connect = func(ctx context.Context) (mcp.Transport, error) {
			conn, err := host.Agent.Dial(ctx, b.Overlay.Service)
			if err != nil {
				return nil, err
			}
			return &mcp.IOTransport{Reader: conn, Writer: conn}, nil
		}
	}
	if kinds != 1 {
		return out, fmt.Errorf("backend %s: give exactly one of stdio, http, overlay", b.Name)
	}
	return out, nil
}

// mcpDirectory answers the gateway's caller look-ups from the controller.
type mcpDirectory struct{ host *gatewayhost.Host }

func (d mcpDirectory) Lookup(ctx context.Context, id spiffeid.ID) (mcpgw.Principal, error) {
	info, err := d.host.Lookup(ctx, id)
	if err != nil {
		return mcpgw.Principal{}, err
	}
	return mcpgw.Principal{ID: id, Org: info.Org, Admin: info.Admin, Revoked: info.Revoked || info.Suspended, Workgroups: info.Workgroups}, nil
}

// gatewaySetup parses a gateway command's flags, reads its configuration file with parse (which returns the
// gateway's data directory), and connects the gateway's identity.
// It also returns the --otlp-endpoint flag's value.
func gatewaySetup(ctx context.Context, name string, args []string, stderr io.Writer, parse func(raw []byte) (string, error)) (*gatewayhost.Host, *slog.Logger, string, error) {
	f := newFlags(name, stderr)
	var as, config string
	f.StringVar(&as, "as", "", "the gateway's identity file (kind gateway)")
	f.StringVar(&config, "config", name+".yaml", "gateway configuration")
	otlp := f.String("otlp-endpoint", "", "send OpenTelemetry traces to this OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (default: the configuration's otlp_endpoint, else $"+
		tracing.EnvEndpoint+", else no tracing)")
	f.require("as", "config")
	f.args(0, "")
	if _, err := f.parse(args); err != nil {
		return nil, nil, "", err
	}
	log, err := f.logging(stderr)
	if err != nil {
		return nil, nil, "", err
	}
	raw, err := os.ReadFile(config)
	if err != nil {
		return nil, nil, "", usagef(name, "--config %s: %s", config, fileProblem(err))
	}
	data, err := parse(raw)
	if err != nil {
		return nil, nil, "", usagef(name, "--config %s: %s", config, err)
	}
	host, err := gatewayhost.Start(ctx, as, data, log)
	if err != nil {
		return nil, nil, "", err
	}
	return host, log, *otlp, nil
}

func cmdMCPGateway(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var fc mcpgwFile
	host, log, otlp, err := gatewaySetup(ctx, "mcpgw", args, stderr, func(raw []byte) (string, error) {
		var err error
		if fc, err = parseMCPGatewayConfig(raw); err != nil {
			return "", err
		}
		fc.Policies, err = withPolicyFile(fc.Policies, fc.PolicyFile)
		return fc.Data, err
	})
	if err != nil {
		return err
	}
	defer host.Close()
	ctx, cancel := context.WithCancel(ctx) // whatever fails stops the rest before the host closes
	defer cancel()
	tp, stopTracing, err := startTracing(ctx, "mcpgw", cmp.Or(otlp, fc.OTLPEndpoint), "umbra-mcpgw", log)
	if err != nil {
		return err
	}
	defer stopTracing()
	cfg := mcpgw.Config{Separator: fc.Separator, Policies: fc.Policies, Sensitive: fc.Sensitive, AuditArguments: fc.AuditArguments,
		Directory: mcpDirectory{host}, Auditor: host, State: host.JS, Self: host.Agent.ID(), Service: fc.Service, Logger: log,
		StartTimeout: fc.StartTimeout, MetricsListen: fc.MetricsListen, MetricsAllowRemote: fc.MetricsRemote, TracerProvider: tp}
	cfg.Approvals.Timeout, cfg.Approvals.TTL, cfg.Approvals.Hold = fc.Approvals.Timeout, fc.Approvals.TTL, fc.Approvals.Hold
	cfg.AdminOrgs, cfg.AdminPolicies = fc.AdminOrgs, fc.AdminPolicies
	cfg.Limits = mcpgw.Limits{CallsPerMinute: fc.Limits.CallsPerMinute, Burst: fc.Limits.Burst, Concurrent: fc.Limits.Concurrent,
		CallTimeout: fc.Limits.CallTimeout, MaxRequest: fc.Limits.MaxRequest, MaxResponse: fc.Limits.MaxResponse}
	for _, raw := range fc.Admins {
		id, err := spiffeid.FromString(raw)
		if err != nil {
			return fmt.Errorf("admins: %q: %w", raw, err)
		}
		cfg.Admins = append(cfg.Admins, id)
	}
	for i := range fc.Backends {
		b, err := mcpBackend(i, &fc, host)
		if err != nil {
			return err
		}
		cfg.Backends = append(cfg.Backends, b)
	}
	g, err := mcpgw.New(cfg)
	if err != nil {
		return err
	}
	if _, err := g.ServeMetrics(ctx); err != nil {
		return err
	}
	// Hosted first: a missing Bind grant fails now, and callers meanwhile are told the gateway is starting.
	ln, err := host.Listen(ctx, fc.Service)
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- g.Run(ctx) }()
	go func() { errc <- host.ServeListener(ctx, ln, g.Handler()) }()
	// Both are waited for: Run flushes the audit records still queued, and the host must outlive that.
	running := 2
	stop := func(err error) error {
		cancel()
		for ; running > 0; running-- {
			err = errors.Join(err, <-errc)
		}
		return err
	}
	select {
	case <-g.Ready():
	case err := <-errc:
		running--
		return stop(err) // nil: ctx ended while starting
	}
	states, err := g.Backends(ctx)
	if err != nil {
		return stop(err)
	}
	up := 0
	for _, st := range states {
		if st.Up {
			up++
			continue
		}
		fmt.Fprintf(stderr, "warning: backend %s (%s) is not available, retrying: %s\n", st.Name, st.Kind, st.LastError)
	}
	fmt.Fprintf(stdout, "umbra mcpgw ready: serving %d of %d backends as %s on overlay service %s (no listening socket)\n",
		up, len(states), host.Agent.ID(), fc.Service)
	err = <-errc
	running--
	return stop(err)
}

// gatewayCall calls a gateway's admin endpoints over the overlay.
func gatewayCall(ctx context.Context, a *agentsdk.Agent, method, url string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.HTTPClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("gateway answered %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return json.Unmarshal(b, out)
}

func cmdMCPTools(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var service string
	return withAgent(ctx, "mcp tools", args, stderr, func(f *flags) {
		f.StringVar(&service, "service", "mcpgw", "the gateway's overlay service")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		var out struct {
			Tools []*mcp.Tool `json:"tools"`
		}
		if err := gatewayCall(ctx, a, http.MethodGet, "http://"+service+"/admin/tools", nil, &out); err != nil {
			return err
		}
		for _, t := range out.Tools {
			fmt.Fprintf(stdout, "%s\t%s\n", t.Name, t.Description)
		}
		return nil
	})
}

func cmdMCPBackends(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var service string
	var asJSON bool
	return withAgent(ctx, "mcp backends", args, stderr, func(f *flags) {
		f.StringVar(&service, "service", "mcpgw", "the gateway's overlay service")
		f.BoolVar(&asJSON, "json", false, "print the gateway's JSON")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		var out struct {
			Backends []mcpgw.BackendStatus `json:"backends"`
		}
		if err := gatewayCall(ctx, a, http.MethodGet, "http://"+service+"/admin/backends", nil, &out); err != nil {
			return err
		}
		if asJSON {
			return printJSON(stdout, out)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tKIND\tSTATE\tTOOLS\tPINNED\tQUARANTINED\tHELD\tLAST ERROR")
		for _, b := range out.Backends {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", b.Name, b.Kind, b.State, b.Tools, b.Pinned, b.Quarantined,
				b.Held, oneLine(b.LastError))
		}
		return tw.Flush()
	})
}

func cmdMCPApprovals(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "list" && args[0] != "approve" && args[0] != "deny" {
		if wantsHelp(args) {
			fmt.Fprintf(stderr, "Usage:\n%s\n", strings.Join(usageLines("mcp approvals"), "\n"))
			return nil
		}
		if len(args) == 0 {
			return usagef("mcp approvals", "missing list, approve or deny")
		}
		return usagef("mcp approvals", "unknown subcommand %q: want list, approve or deny", args[0])
	}
	verb := args[0]
	var service, digest, backend, tool, kind, reason string
	var versions bool
	return withAgent(ctx, "mcp approvals "+verb, args[1:], stderr, func(f *flags) {
		f.StringVar(&service, "service", "mcpgw", "the gateway's overlay service")
		f.BoolVar(&versions, "tools", false, "tool versions awaiting approval instead of calls")
		f.StringVar(&digest, "digest", "", "the digest being decided (from list)")
		f.StringVar(&backend, "backend", "", "with --tools: the backend")
		f.StringVar(&tool, "tool", "", "with --tools: the tool (the prompt's name or the resource's URI with --kind)")
		f.StringVar(&kind, "kind", "tool", "with --tools: tool, prompt or resource (from list --tools)")
		f.StringVar(&reason, "reason", "", "why you decide so (recorded in the audit trail)")
		f.check(func(pos []string) error {
			switch {
			case verb == "list" && len(pos) > 0:
				return fmt.Errorf("unexpected argument %q", pos[0])
			case verb != "list" && versions && (backend == "" || tool == "" || digest == ""):
				return errors.New("with --tools, --backend, --tool and --digest are required (from list --tools)")
			case verb != "list" && !versions && len(pos) != 1:
				return errors.New("give the approval ID (from list)")
			}
			return nil
		})
	}, func(a *agentsdk.Agent, pos []string) error {
		base := "http://" + service + "/admin/"
		var out any
		switch {
		case verb == "list" && versions:
			if err := gatewayCall(ctx, a, http.MethodGet, base+"tool-versions", nil, &out); err != nil {
				return err
			}
		case verb == "list":
			if err := gatewayCall(ctx, a, http.MethodGet, base+"approvals", nil, &out); err != nil {
				return err
			}
		case (verb == "approve" || verb == "deny") && versions:
			if err := gatewayCall(ctx, a, http.MethodPost, base+"tool-versions/"+verb,
				map[string]string{"Kind": kind, "Backend": backend, "Tool": tool, "Digest": digest, "Reason": reason}, &out); err != nil {
				return err
			}
		case verb == "approve" || verb == "deny":
			id, err := one(pos, "approval id")
			if err != nil {
				return err
			}
			if err := gatewayCall(ctx, a, http.MethodPost, base+"approvals/"+id+"/"+verb, map[string]string{"Digest": digest, "Reason": reason}, &out); err != nil {
				return err
			}
		default:
			return fmt.Errorf("mcp approvals: unknown verb %q", verb)
		}
		return printJSON(stdout, out)
	})
}
