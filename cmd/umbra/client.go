package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// connect loads an identity file, connects it, and renews its SVID first if half its lifetime has passed,
// writing the renewed SVID back to the file.
func connect(ctx context.Context, f *flags, path string, stderr io.Writer) (*agentsdk.Agent, error) {
	if path == "" {
		return nil, usagef(f.Name(), "--as is required")
	}
	log, err := f.logging(stderr)
	if err != nil {
		return nil, err
	}
	id, err := agentsdk.LoadIdentity(path)
	if err != nil {
		return nil, identityError(f.Name(), path, err)
	}
	a, err := agentsdk.Connect(ctx, id, agentsdk.WithLogger(log), agentsdk.WithIdentityFile(path))
	if err != nil {
		return nil, err
	}
	if time.Now().After(id.RenewAt()) {
		if err := a.Renew(ctx); err != nil {
			log.Warn("renewing SVID failed", "err", err)
		}
	}
	return a, nil
}

func cmdEnroll(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("enroll", stderr)
	var tokenFile, out string
	f.StringVar(&tokenFile, "token", "", "enrollment token file, or - for stdin (required)")
	f.StringVar(&out, "out", "", "identity file to write (required)")
	f.require("token", "out")
	f.args(0, "")
	if _, err := f.parse(args); err != nil {
		return err
	}
	var b []byte
	var err error
	if tokenFile == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 16<<10))
	} else {
		b, err = os.ReadFile(tokenFile)
	}
	if err != nil {
		return usagef("enroll", "--token %s: %s", tokenFile, fileProblem(err))
	}
	if _, err := os.Stat(out); err == nil {
		return fmt.Errorf("enroll: %s already exists; refusing to overwrite an identity", out)
	}
	id, err := agentsdk.Enroll(ctx, strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	if err := id.Save(out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "enrolled %s (SVID valid until %s), identity written to %s\n", id.SPIFFEID(), id.ExpiresAt().Format(time.RFC3339), out)
	return nil
}

func cmdWhoAmI(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	return withAgent(ctx, "whoami", args, stderr, func(f *flags) { f.args(0, "") }, func(a *agentsdk.Agent, _ []string) error {
		who, err := a.Controller().WhoAmI(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, who.SPIFFEID)
		return nil
	})
}

func cmdIdentityCreate(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var req api.CreateIdentityRequest
	return withAgent(ctx, "identity create", args, stderr, func(f *flags) {
		f.StringVar(&req.Org, "org", "", "organisation")
		f.StringVar(&req.Kind, "kind", "agent", "kind of workload (agent, mcp, llm, gateway, ...)")
		f.StringVar(&req.Name, "name", "", "name")
		f.BoolVar(&req.Admin, "admin", false, "make the identity an administrator")
		f.StringVar(&req.TokenTTL, "token-ttl", "", "enrollment token lifetime (default 1h)")
		f.require("org", "name")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		resp, err := a.Controller().CreateIdentity(ctx, req)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "created %s; enrollment token valid until %s\n", resp.SPIFFEID, resp.ExpiresAt.Format(time.RFC3339))
		fmt.Fprintln(stdout, resp.Token)
		return nil
	})
}

func cmdIdentityRevoke(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var reason string
	return withAgent(ctx, "identity revoke", args, stderr, func(f *flags) {
		f.StringVar(&reason, "reason", "revoked by administrator", "reason to record")
		f.args(1, "the SPIFFE ID to revoke")
		f.check(checkSPIFFEID)
	}, func(a *agentsdk.Agent, pos []string) error {
		raw, err := one(pos, "SPIFFE ID")
		if err != nil {
			return err
		}
		id, err := spiffeid.FromString(raw)
		if err != nil {
			return fmt.Errorf("identity revoke: %q: %w", raw, err)
		}
		resp, err := a.Controller().Revoke(ctx, id, reason)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked %s (%d live connections cut)\n", resp.SPIFFEID, resp.CircuitsClosed)
		return nil
	})
}

func cmdRouterCreate(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var name string
	return withAgent(ctx, "router create", args, stderr, func(f *flags) {
		f.StringVar(&name, "name", "", "router name")
		f.require("name")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		tok, err := a.Controller().CreateRouter(ctx, name)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, tok)
		return nil
	})
}

func cmdServiceGrant(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var req api.GrantRequest
	var bind, dial multi
	return withAgent(ctx, "service grant", args, stderr, func(f *flags) {
		f.StringVar(&req.Service, "service", "", "service name")
		f.Var(&bind, "bind", "SPIFFE ID that may host the service (repeatable)")
		f.Var(&dial, "dial", "SPIFFE ID that may use the service (repeatable)")
		f.require("service")
		f.args(0, "")
		f.check(func([]string) error {
			for _, raw := range append(append([]string{}, bind...), dial...) {
				if _, err := spiffeid.FromString(raw); err != nil {
					return fmt.Errorf("%q is not a SPIFFE ID (spiffe://TRUST-DOMAIN/ORG/KIND/NAME)", raw)
				}
			}
			return nil
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		req.Bind, req.Dial = bind, dial
		if err := a.Controller().Grant(ctx, req); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "granted %s: bind %v, dial %v\n", req.Service, req.Bind, req.Dial)
		return nil
	})
}

func cmdServiceList(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	return withAgent(ctx, "service list", args, stderr, func(f *flags) { f.args(0, "") }, func(a *agentsdk.Agent, _ []string) error {
		svcs, err := a.Services()
		if err != nil {
			return err
		}
		for _, s := range svcs {
			fmt.Fprintln(stdout, s)
		}
		return nil
	})
}

func cmdServiceServe(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var service string
	var echo bool
	return withAgent(ctx, "service serve", args, stderr, func(f *flags) {
		f.StringVar(&service, "service", "", "service to host")
		f.BoolVar(&echo, "echo", false, "answer every connection by echoing it back")
		f.require("service")
		f.args(0, "")
		f.check(func([]string) error {
			if !echo {
				return errors.New("only --echo is built in; host your own services with agentsdk.Listen")
			}
			return nil
		})
	}, func(a *agentsdk.Agent, _ []string) error {
		ln, err := listenHosted(ctx, a, service)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "serving %s as %s (no listening socket)\n", service, a.ID())
		return serveConns(ctx, ln, func(c net.Conn, peer spiffeid.ID) {
			fmt.Fprintf(stderr, "connection from %s\n", peer)
			_, _ = io.Copy(c, c)
		})
	})
}

// listenHosted hosts service and returns once a router hosts it, so that the line a command prints next ("serving
// ...") means a dial reaches it.
func listenHosted(ctx context.Context, a *agentsdk.Agent, service string) (net.Listener, error) {
	ln, err := a.ListenContext(ctx, service)
	if err != nil {
		return nil, err
	}
	if err := agentsdk.WaitHosted(ctx, ln); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// serveConns accepts overlay connections until ctx ends and handles each, with its verified peer, in its own
// goroutine; it waits for the handlers before returning.
func serveConns(ctx context.Context, ln net.Listener, handle func(c net.Conn, peer spiffeid.ID)) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			peer, err := agentsdk.PeerIdentity(c)
			if err != nil {
				return
			}
			handle(c, peer)
		}()
	}
}

func cmdServiceDial(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var service string
	return withAgent(ctx, "service dial", args, stderr, func(f *flags) {
		f.StringVar(&service, "service", "", "service to dial")
		f.require("service")
		f.args(0, "")
	}, func(a *agentsdk.Agent, _ []string) error {
		c, err := a.Dial(ctx, service)
		if err != nil {
			return err
		}
		defer c.Close()
		peer, err := agentsdk.PeerIdentity(c)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "connected to %s, served by %s\n", service, peer)
		done := make(chan error, 1)
		go func() {
			_, err := io.Copy(stdout, c)
			done <- err
		}()
		if _, err := io.Copy(c, stdin); err != nil {
			return err
		}
		// Half-close so the far side sees the end of input, then drain what it still sends.
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, net.ErrClosed) {
				return err
			}
		case <-time.After(10 * time.Second):
		case <-ctx.Done():
		}
		return nil
	})
}
