package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/a2a"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// cmdA2ABridge serves one provider's A2A agent on a loopback port for A2A clients in any language: the card at
// /.well-known/agent-card.json and every JSON-RPC call carried as an envelope on one session. It refuses any
// address that is not loopback: whoever reaches the port speaks as the identity.
func cmdA2ABridge(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var listen, adFlag, sessFlag string
	var timeout time.Duration
	var fl *flags
	var adID workgroups.AdvertisementID
	var sid workgroups.SessionID
	return withAgent(ctx, "a2a bridge", args, stderr, func(f *flags) {
		fl = f
		f.StringVar(&adFlag, "ad", "", "the provider's advertisement ID (see umbra discover)")
		f.StringVar(&sessFlag, "session", "", "an existing session with the provider to use (default: propose one on the first call)")
		f.StringVar(&listen, "listen", "127.0.0.1:8090", "loopback HOST:PORT to serve on")
		f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long a call waits for the provider's answer")
		f.require("ad")
		f.args(0, "")
		f.check(func([]string) error {
			if err := loopbackOnly(listen); err != nil {
				return err
			}
			var err error
			if adID, err = parseAdvertisementID(adFlag); err != nil {
				return fmt.Errorf("--ad: %w", err)
			}
			if sessFlag != "" {
				if sid, err = parseSessionID(sessFlag); err != nil {
					return fmt.Errorf("--session: %w", err)
				}
			}
			if timeout <= 0 {
				return fmt.Errorf("--timeout %s: want a positive duration such as 2m", timeout)
			}
			return checkListen("a2a bridge", "listen", listen)
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		log, err := fl.logging(stderr)
		if err != nil {
			return err
		}
		ads, err := a.Discover(ctx, api.DiscoverRequest{})
		if err != nil {
			return err
		}
		var ad workgroups.Advertisement
		for _, x := range ads {
			if x.ID == adID {
				ad = x
			}
		}
		if ad.ID.IsZero() {
			return fmt.Errorf("advertisement %s is not among those %s may discover: copy one from `umbra discover`", adID, a.ID())
		}
		proxy, err := a2a.NewProxy(a2a.ProxyConfig{Agent: a, Advertisement: ad, Session: sid, CallTimeout: timeout, Logger: log})
		if err != nil {
			return err
		}
		defer proxy.Close()
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return listenError("a2a bridge", "listen", listen, err)
		}
		fmt.Fprintf(stdout, "a2a bridge on http://%s/ (card at %s) -> %q of %s as %s\n", ln.Addr(), a2a.CardPath,
			ad.Card.Name, ad.Provider, a.ID())
		return serveUntilDone(ctx, ln, proxy)
	})
}

// cmdA2AServe answers, as provider, the A2A calls of every session of this identity by posting each one to an
// A2A JSON-RPC server of an agent in any language (on a loopback address, typically), and sends its answers back.
func cmdA2AServe(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var endpoint string
	var interval time.Duration
	var fl *flags
	return withAgent(ctx, "a2a serve", args, stderr, func(f *flags) {
		fl = f
		f.StringVar(&endpoint, "endpoint", "", "URL of the agent's A2A JSON-RPC endpoint, e.g. http://127.0.0.1:9999/")
		f.DurationVar(&interval, "interval", time.Second, "how often new sessions are picked up")
		f.require("endpoint")
		f.args(0, "")
		f.check(func([]string) error {
			if _, err := a2a.NewServerURL(endpoint, nil, a2a.ServerConfig{}); err != nil {
				return fmt.Errorf("--endpoint %q: want the http:// URL of an A2A JSON-RPC server", endpoint)
			}
			if interval <= 0 {
				return fmt.Errorf("--interval %s: want a positive duration such as 1s", interval)
			}
			return nil
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		log, err := fl.logging(stderr)
		if err != nil {
			return err
		}
		srv, err := a2a.NewServerURL(endpoint, nil, a2a.ServerConfig{Logger: log})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "answering A2A calls to %s with %s\n", a.ID(), endpoint)
		if err := a.Serve(ctx, interval, srv.Handle); err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	})
}

// loopbackOnly refuses a --listen address that is not loopback.
func loopbackOnly(listen string) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want HOST:PORT, e.g. 127.0.0.1:8090", listen)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--listen %q: only loopback addresses are allowed", listen)
	}
	return nil
}

// serveUntilDone serves h on ln until ctx ends.
func serveUntilDone(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
