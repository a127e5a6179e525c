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
	"github.com/umbra-mesh/umbra/controller/console"
)

// cmdUI opens the web console on a loopback port, bridged over the overlay as the given administrator: the
// console is a dark service of the controller, and sees every request as coming from that identity.
func cmdUI(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var listen string
	return withAgent(ctx, "ui", args, stderr, func(f *flags) {
		f.StringVar(&listen, "listen", "127.0.0.1:8088", "loopback HOST:PORT to serve the console on")
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
		h, err := console.NewBridge(console.BridgeConfig{Transport: a.HTTPClient().Transport, Addr: ln.Addr().String(),
			Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
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
