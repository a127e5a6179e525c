package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/console"
	"github.com/umbra-mesh/umbra/internal/gatewayadmin"
)

// cmdUI opens the web console on a loopback port, bridged over the overlay as the given administrator: the
// console is a dark service of the controller, and sees every request as coming from that identity. The
// approvals and LLM usage pages are served by the bridge itself, from the gateways' administration APIs.
func cmdUI(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var listen, mcpGateway, llmGateway string
	return withAgent(ctx, "ui", args, stderr, func(f *flags) {
		f.StringVar(&listen, "listen", "127.0.0.1:8088", "loopback HOST:PORT to serve the console on")
		f.StringVar(&mcpGateway, "mcp-gateway", "mcpgw", "the MCP gateway's overlay service, for the approvals page (empty: none)")
		f.StringVar(&llmGateway, "llm-gateway", "llmgw", "the LLM gateway's overlay service, for the usage page (empty: none)")
		f.args(0, "")
		f.check(func([]string) error {
			if err := console.CheckLoopback(listen); err != nil {
				return fmt.Errorf("--listen %w", err)
			}
			return checkListen("ui", "listen", listen)
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return listenError("ui", "listen", listen, err)
		}
		// The approvals and usage pages are served here, reaching the gateways as this identity: its decisions are
		// its own, made with its SVID and recorded in the audit under it.
		org := gatewayadmin.OrgOf(a.ID())
		h, err := console.NewBridge(console.BridgeConfig{Transport: a.HTTPClient().Transport, Addr: ln.Addr().String(),
			Logger:   slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
			Gateways: &console.GatewayClient{HTTP: a.HTTPClient(), MCP: mcpGateway, LLM: llmGateway},
			Viewer:   console.Viewer{ID: a.ID().String(), Org: org, Platform: org == api.PlatformAdminOrg}})
		if err != nil {
			ln.Close()
			return err
		}
		fmt.Fprintf(stdout, "umbra console on http://%s/ -> overlay service %s as %s\n", ln.Addr(), console.ServiceName, a.ID())
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
