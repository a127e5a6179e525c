package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/gatewayhost"
	"github.com/umbra-mesh/umbra/internal/samplemodel"
	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/guard"
	"github.com/umbra-mesh/umbra/llmgw/route"
	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// llmgwFile is the LLM gateway's configuration file.
type llmgwFile struct {
	Service       string   `yaml:"service"` // default llmgw
	Data          string   `yaml:"data"`    // default llmgw-data
	Policies      string   `yaml:"policies"`
	PolicyFile    string   `yaml:"policy_file"`
	LogPrompts    bool     `yaml:"log_prompts"`
	MetricsListen string   `yaml:"metrics_listen"`       // loopback HOST:PORT for Prometheus; default: /metrics on the overlay only
	MetricsRemote bool     `yaml:"metrics_allow_remote"` // let metrics_listen be a non-loopback address
	OTLPEndpoint  string   `yaml:"otlp_endpoint"`        // OTLP/HTTP collector for traces; --otlp-endpoint overrides it
	Admins        []string `yaml:"admins"`               // SPIFFE IDs that administer the gateway fully
	AdminOrgs     []string `yaml:"admin_orgs"`           // organisations whose administrators read their own organisation's usage
	AdminPolicies string   `yaml:"admin_policies"`       // Cedar text added to the built-in administration policies
	Models        []struct {
		Name           string        `yaml:"name"`
		Retries        int           `yaml:"retries"`
		Backoff        time.Duration `yaml:"backoff"`
		HealthInterval time.Duration `yaml:"health_interval"`
		Endpoints      []struct {
			Provider    string  `yaml:"provider"` // openai, anthropic, openai-compatible
			BaseURL     string  `yaml:"base_url"`
			Overlay     string  `yaml:"overlay"`     // a dark model server: its overlay service (instead of base_url)
			APIKeyEnv   string  `yaml:"api_key_env"` // the provider key is read from this environment variable
			Model       string  `yaml:"model"`
			Weight      int     `yaml:"weight"`
			InputPrice  float64 `yaml:"input_price"`  // per million tokens
			OutputPrice float64 `yaml:"output_price"` // per million tokens
		} `yaml:"endpoints"`
	} `yaml:"models"`
	Budgets []struct {
		Identity          string  `yaml:"identity"`
		Org               string  `yaml:"org"`
		RequestsPerMinute int64   `yaml:"requests_per_minute"`
		TokensPerMinute   int64   `yaml:"tokens_per_minute"`
		TokensPerDay      int64   `yaml:"tokens_per_day"`
		TokensPerMonth    int64   `yaml:"tokens_per_month"`
		CostPerDay        float64 `yaml:"cost_per_day"`
		CostPerMonth      float64 `yaml:"cost_per_month"`
		MaxConcurrent     int64   `yaml:"max_concurrent"`
	} `yaml:"budgets"`
	Guardrails struct {
		PII       string `yaml:"pii"`
		Secrets   string `yaml:"secrets"`
		Injection string `yaml:"injection"`
		Responses bool   `yaml:"responses"`
	} `yaml:"guardrails"`
	Router *struct {
		Name            string       `yaml:"name"`
		Rules           []route.Rule `yaml:"rules"`
		Default         string       `yaml:"default"`
		EmbeddingModel  string       `yaml:"embedding_model"`
		ClassifierModel string       `yaml:"classifier_model"`
	} `yaml:"router"`
}

// parseLLMGatewayConfig decodes and checks a gateway configuration file.
func parseLLMGatewayConfig(b []byte) (llmgwFile, error) {
	var fc llmgwFile
	if err := decodeYAML(b, &fc); err != nil {
		return fc, err
	}
	if fc.Service == "" {
		fc.Service = "llmgw"
	}
	if fc.Data == "" {
		fc.Data = "llmgw-data"
	}
	if len(fc.Models) == 0 {
		return fc, errors.New("no models")
	}
	for _, m := range fc.Models {
		if len(m.Endpoints) == 0 {
			return fc, fmt.Errorf("model %q: no endpoints", m.Name)
		}
		for _, e := range m.Endpoints {
			if (e.BaseURL == "") == (e.Overlay == "") {
				return fc, fmt.Errorf("model %q: each endpoint needs exactly one of base_url and overlay", m.Name)
			}
		}
	}
	for _, raw := range fc.Admins {
		if _, err := spiffeid.FromString(raw); err != nil {
			return fc, fmt.Errorf("admins: %q: %w", raw, err)
		}
	}
	for _, mode := range []string{fc.Guardrails.PII, fc.Guardrails.Secrets, fc.Guardrails.Injection} {
		if _, err := guard.ParseMode(mode); err != nil {
			return fc, err
		}
	}
	return fc, nil
}

type llmDirectory struct{ host *gatewayhost.Host }

func (d llmDirectory) Lookup(ctx context.Context, id spiffeid.ID) (llmgw.Principal, error) {
	info, err := d.host.Lookup(ctx, id)
	if err != nil {
		return llmgw.Principal{}, err
	}
	return llmgw.Principal{ID: id, Org: info.Org, Admin: info.Admin, Workgroups: info.Workgroups}, nil
}

func cmdLLMGateway(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var fc llmgwFile
	host, log, otlp, err := gatewaySetup(ctx, "llmgw", args, stderr, func(raw []byte) (string, error) {
		var err error
		if fc, err = parseLLMGatewayConfig(raw); err != nil {
			return "", err
		}
		fc.Policies, err = withPolicyFile(fc.Policies, fc.PolicyFile)
		return fc.Data, err
	})
	if err != nil {
		return err
	}
	defer host.Close()
	tp, stopTracing, err := startTracing(ctx, "llmgw", cmp.Or(otlp, fc.OTLPEndpoint), "umbra-llmgw", log)
	if err != nil {
		return err
	}
	defer stopTracing()
	cfg := llmgw.Config{Policies: fc.Policies, Directory: llmDirectory{host}, Auditor: host, State: host.JS,
		LogPrompts: fc.LogPrompts, Logger: log, MetricsListen: fc.MetricsListen, MetricsAllowRemote: fc.MetricsRemote,
		Self: host.Agent.ID(), Service: fc.Service, AdminOrgs: fc.AdminOrgs, AdminPolicies: fc.AdminPolicies, TracerProvider: tp}
	for _, raw := range fc.Admins {
		cfg.Admins = append(cfg.Admins, spiffeid.RequireFromString(raw)) // checked by parseLLMGatewayConfig
	}
	for _, m := range fc.Models {
		model := llmgw.Model{Name: m.Name, Retries: m.Retries, Backoff: m.Backoff, HealthInterval: m.HealthInterval}
		for _, e := range m.Endpoints {
			ep := llmgw.Endpoint{Provider: e.Provider, BaseURL: e.BaseURL, Model: e.Model, Weight: e.Weight,
				InputPrice: e.InputPrice, OutputPrice: e.OutputPrice}
			if e.APIKeyEnv != "" {
				ep.APIKey = os.Getenv(e.APIKeyEnv)
			}
			if e.Overlay != "" {
				ep.BaseURL, ep.HTTPClient, ep.Service = "http://"+e.Overlay+"/v1", host.Agent.HTTPClient(), e.Overlay
			}
			model.Endpoints = append(model.Endpoints, ep)
		}
		cfg.Models = append(cfg.Models, model)
	}
	for _, b := range fc.Budgets {
		cfg.Budgets = append(cfg.Budgets, llmgw.Budget{Identity: b.Identity, Org: b.Org, RequestsPerMinute: b.RequestsPerMinute,
			TokensPerMinute: b.TokensPerMinute, TokensPerDay: b.TokensPerDay, TokensPerMonth: b.TokensPerMonth,
			CostPerDay: b.CostPerDay, CostPerMonth: b.CostPerMonth, MaxConcurrent: b.MaxConcurrent})
	}
	cfg.Guardrails.PII, _ = guard.ParseMode(fc.Guardrails.PII)
	cfg.Guardrails.Secrets, _ = guard.ParseMode(fc.Guardrails.Secrets)
	cfg.Guardrails.Injection, _ = guard.ParseMode(fc.Guardrails.Injection)
	cfg.Guardrails.Responses = fc.Guardrails.Responses
	if fc.Router != nil {
		cfg.Router = llmgw.Router{Name: fc.Router.Name, Rules: fc.Router.Rules, Default: fc.Router.Default,
			EmbeddingModel: fc.Router.EmbeddingModel, ClassifierModel: fc.Router.ClassifierModel}
	}
	g, err := llmgw.New(cfg)
	if err != nil {
		return fmt.Errorf("llmgw: %w", err)
	}
	if _, err := g.ServeMetrics(ctx); err != nil {
		return err
	}
	// Hosted first, so that "ready" is true when printed: a missing Bind grant fails now.
	ln, err := host.Listen(ctx, fc.Service)
	if err != nil {
		return err
	}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	ran := make(chan error, 1)
	go func() { ran <- g.Run(runCtx) }()
	served := make(chan error, 1)
	go func() { served <- host.ServeListener(ctx, ln, g.Handler()) }()
	fmt.Fprintf(stdout, "umbra llmgw ready: %d models as %s on overlay service %s (no listening socket)\n",
		len(cfg.Models), host.Agent.ID(), fc.Service)
	err = <-served
	stopRun() // Run writes the audit records still queued before it returns, while the controller is reachable
	if rerr := <-ran; err == nil {
		err = rerr
	}
	return err
}

// cmdLLMServe makes a private model server dark: it hosts an overlay service and forwards each request to the
// upstream (normally on loopback), or, with --sample, answers with the built-in deterministic model.
func cmdLLMServe(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var service, upstream, sample string
	var delay time.Duration
	return withAgent(ctx, "llm serve", args, stderr, func(f *flags) {
		f.DurationVar(&delay, "delay", 0, "with --sample, hold every request this long first, as an upstream of fixed latency (for benchmarks)")
		f.StringVar(&service, "service", "", "overlay service to host")
		f.StringVar(&upstream, "upstream", "", "URL of the model server to make dark, e.g. http://127.0.0.1:11434")
		f.StringVar(&sample, "sample", "", "serve the built-in deterministic model under this name instead of an upstream")
		f.require("service")
		f.args(0, "")
		f.check(func([]string) error {
			if (sample == "") == (upstream == "") {
				return errors.New("give exactly one of --upstream and --sample")
			}
			if u, err := url.Parse(upstream); upstream != "" && (err != nil || u.Host == "") {
				return fmt.Errorf("--upstream %q is not a URL such as http://127.0.0.1:11434", upstream)
			}
			return nil
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		var h http.Handler
		if sample != "" {
			h = samplemodel.WithDelay(samplemodel.Handler(sample), delay)
		} else {
			u, _ := url.Parse(upstream)
			h = httputil.NewSingleHostReverseProxy(u)
		}
		ln, err := listenHosted(ctx, a, service)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "serving model on %s as %s (no listening socket)\n", service, a.ID())
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			<-ctx.Done()
			srv.Close()
		}()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
}

// cmdLLMBridge serves the gateway's API on a loopback port for programs that cannot embed agentsdk. It is opt-in
// and refuses any address that is not loopback.
func cmdLLMBridge(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var listen, service, purpose, category string
	return withAgent(ctx, "llm bridge", args, stderr, func(f *flags) {
		f.StringVar(&listen, "listen", "127.0.0.1:8089", "loopback HOST:PORT to serve on")
		f.StringVar(&service, "service", "llmgw", "the gateway's overlay service")
		f.StringVar(&purpose, "intent", os.Getenv("UMBRA_INTENT"), "declare this purpose on every call that has none (default $UMBRA_INTENT)")
		f.StringVar(&category, "intent-category", os.Getenv("UMBRA_INTENT_CATEGORY"), "and this intent category (default $UMBRA_INTENT_CATEGORY)")
		f.args(0, "")
		f.check(func([]string) error {
			if err := checkIntentFlags(purpose, category); err != nil {
				return err
			}
			host, _, err := net.SplitHostPort(listen)
			if err != nil {
				return fmt.Errorf("--listen %q: want HOST:PORT, e.g. 127.0.0.1:8089", listen)
			}
			if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				return fmt.Errorf("--listen %q: only loopback addresses are allowed", listen)
			}
			return checkListen("llm bridge", "listen", listen)
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		target := &url.URL{Scheme: "http", Host: service}
		proxy := httputil.NewSingleHostReverseProxy(target)
		proxy.Transport = a.HTTPClient().Transport
		proxy.FlushInterval = -1 // stream server-sent events as they come
		if purpose != "" {
			in := authz.Intent{Purpose: purpose, Category: category}
			direct := proxy.Director
			proxy.Director = func(r *http.Request) {
				direct(r)
				// A caller's own declaration is kept as it is.
				if r.Header.Get(llmgw.HeaderIntent) == "" && r.Header.Get(llmgw.HeaderIntentCategory) == "" {
					r.Header.Set(llmgw.HeaderIntent, in.HeaderValue())
					if in.Category != "" {
						r.Header.Set(llmgw.HeaderIntentCategory, in.Category)
					}
				}
			}
		}
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return listenError("llm bridge", "listen", listen, err)
		}
		fmt.Fprintf(stdout, "llm bridge on http://%s/v1 -> %s as %s\n", ln.Addr(), service, a.ID())
		srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			<-ctx.Done()
			srv.Close()
		}()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
}

func cmdLLMUsage(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var service, identity, since string
	return withAgent(ctx, "llm usage", args, stderr, func(f *flags) {
		f.StringVar(&service, "service", "llmgw", "the gateway's overlay service")
		f.StringVar(&identity, "identity", "", "only this SPIFFE ID")
		f.StringVar(&since, "since", "24h", "a duration such as 24h or a date such as 2006-01-02")
		f.args(0, "")
		f.check(func([]string) error {
			if _, err := time.ParseDuration(since); err != nil {
				if _, err := time.Parse(time.DateOnly, since); err != nil {
					return fmt.Errorf("--since %q: want a duration such as 24h or a date such as 2006-01-02", since)
				}
			}
			return nil
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		q := url.Values{"since": {since}}
		if identity != "" {
			q.Set("identity", identity)
		}
		var out any
		if err := gatewayCall(ctx, a, http.MethodGet, "http://"+service+"/v1/usage?"+q.Encode(), nil, &out); err != nil {
			return err
		}
		return printJSON(stdout, out)
	})
}
