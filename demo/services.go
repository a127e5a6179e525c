package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/gatewayhost"
	"github.com/umbra-mesh/umbra/internal/samplemodel"
	"github.com/umbra-mesh/umbra/internal/sampletools"
	"github.com/umbra-mesh/umbra/llmgw"
	"github.com/umbra-mesh/umbra/llmgw/guard"
	"github.com/umbra-mesh/umbra/mcpgw"
)

// Upstream is a real model provider the LLM gateway uses instead of the sample model server.
type Upstream struct {
	Provider string // "openai" (default), "anthropic" or "openai-compatible"
	BaseURL  string // empty: the provider's public API
	APIKey   string
	Model    string // the provider's model name
}

// group runs goroutines and collects their first error.
type group struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func (g *group) go_(name string, fn func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := fn(); err != nil {
			g.mu.Lock()
			g.errs = append(g.errs, fmt.Errorf("%s: %w", name, err))
			g.mu.Unlock()
		}
	}()
}

func (g *group) wait() error {
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return errors.Join(g.errs...)
}

// ServeModel hosts the sample model server as a dark service until ctx ends.
func ServeModel(ctx context.Context, a *agentsdk.Agent, service, model string) error {
	ln, err := a.Listen(service)
	if err != nil {
		return fmt.Errorf("demo: host %s: %w", service, err)
	}
	srv := &http.Server{Handler: samplemodel.Handler(model), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// TextkitServer is the sample MCP server the demo uses for word counts.
func TextkitServer() *mcp.Server { return sampletools.NewServer("textkit") }

// hostDirectory answers the gateways' caller look-ups from the controller.
type hostDirectory struct{ host *gatewayhost.Host }

func (d hostDirectory) mcp(ctx context.Context, id spiffeid.ID) (mcpgw.Principal, error) {
	info, err := d.host.Lookup(ctx, id)
	if err != nil {
		return mcpgw.Principal{}, err
	}
	return mcpgw.Principal{ID: id, Org: info.Org, Admin: info.Admin, Revoked: info.Revoked, Workgroups: info.Workgroups}, nil
}

func (d hostDirectory) llm(ctx context.Context, id spiffeid.ID) (llmgw.Principal, error) {
	info, err := d.host.Lookup(ctx, id)
	if err != nil {
		return llmgw.Principal{}, err
	}
	return llmgw.Principal{ID: id, Org: info.Org, Admin: info.Admin, Workgroups: info.Workgroups}, nil
}

type mcpDirectory struct{ hostDirectory }

func (d mcpDirectory) Lookup(ctx context.Context, id spiffeid.ID) (mcpgw.Principal, error) {
	return d.mcp(ctx, id)
}

type llmDirectory struct{ hostDirectory }

func (d llmDirectory) Lookup(ctx context.Context, id spiffeid.ID) (llmgw.Principal, error) {
	return d.llm(ctx, id)
}

// runMCPGateway hosts the MCP gateway with the scenario's backends and policies until ctx ends. Its audit
// records are flushed before it returns.
func runMCPGateway(ctx context.Context, identityFile, dataDir string, log *slog.Logger, ready chan<- struct{}) error {
	host, err := gatewayhost.Start(ctx, identityFile, dataDir, log)
	if err != nil {
		return err
	}
	defer host.Close()
	cfg := mcpgw.Config{Policies: MCPPolicies, Directory: mcpDirectory{hostDirectory{host}}, Auditor: host, State: host.JS,
		Self: host.Agent.ID(), Service: ServiceMCPGateway, Logger: log}
	for _, b := range MCPBackends {
		service := b.Service
		cfg.Backends = append(cfg.Backends, mcpgw.Backend{Name: b.Name, Trusted: true, Kind: "overlay", Service: service,
			Connect: func(ctx context.Context) (mcp.Transport, error) {
				conn, err := host.Agent.Dial(ctx, service)
				if err != nil {
					return nil, err
				}
				return &mcp.IOTransport{Reader: conn, Writer: conn}, nil
			}})
	}
	g, err := mcpgw.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- g.Run(ctx) }()
	select {
	case <-g.Ready():
	case err := <-runErr:
		return err
	}
	// Ready only once the service is hosted on the overlay.
	ln, err := host.Listen(ctx, ServiceMCPGateway)
	if err != nil {
		if ctx.Err() != nil {
			err = nil // stopped before the service was hosted
		}
		cancel()
		return errors.Join(err, <-runErr)
	}
	close(ready)
	err = host.ServeListener(ctx, ln, g.Handler())
	cancel()
	return errors.Join(err, <-runErr)
}

// runLLMGateway hosts the LLM gateway until ctx ends: the sample model on the overlay, or up if given.
func runLLMGateway(ctx context.Context, identityFile, dataDir string, td spiffeid.TrustDomain, up *Upstream, log *slog.Logger, ready chan<- struct{}) error {
	host, err := gatewayhost.Start(ctx, identityFile, dataDir, log)
	if err != nil {
		return err
	}
	defer host.Close()
	ep := llmgw.Endpoint{Provider: "openai-compatible", BaseURL: "http://" + ServiceModel + "/v1", Model: SampleModel,
		HTTPClient: host.Agent.HTTPClient(), Service: ServiceModel}
	if up != nil {
		ep = llmgw.Endpoint{Provider: up.Provider, BaseURL: up.BaseURL, APIKey: up.APIKey, Model: up.Model}
	}
	g, err := llmgw.New(llmgw.Config{
		Models:   []llmgw.Model{{Name: ModelName, Endpoints: []llmgw.Endpoint{ep}}},
		Policies: LLMPolicies,
		Budgets: []llmgw.Budget{{Identity: Forecaster.ID(td).String(), TokensPerDay: ForecasterTokensPerDay},
			{Org: OrgNorthwind, TokensPerDay: 200000, RequestsPerMinute: 120}, {Org: OrgHelix, TokensPerDay: 200000, RequestsPerMinute: 120}},
		Guardrails: llmgw.Guardrails{PII: guard.Redact, Secrets: guard.Block, Injection: guard.Log},
		Directory:  llmDirectory{hostDirectory{host}}, Auditor: host, State: host.JS, Logger: log, Self: host.Agent.ID(),
		Service: ServiceLLMGateway,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- g.Run(ctx) }()
	// Ready only once the service is hosted on the overlay.
	ln, err := host.Listen(ctx, ServiceLLMGateway)
	if err != nil {
		if ctx.Err() != nil {
			err = nil // stopped before the service was hosted
		}
		cancel()
		return errors.Join(err, <-runErr)
	}
	close(ready)
	err = host.ServeListener(ctx, ln, g.Handler())
	cancel()
	return errors.Join(err, <-runErr)
}
