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
	"github.com/umbra-mesh/umbra/internal/api"
	"github.com/umbra-mesh/umbra/internal/zitilog"
)

// connect loads an identity file, connects it, and renews its SVID first if half its lifetime has passed,
// writing the renewed SVID back to the file.
func connect(ctx context.Context, f *flags, path string, stderr io.Writer) (*agentsdk.Agent, error) {
	if path == "" {
		return nil, errors.New("--as is required")
	}
	log, level, err := f.logger(stderr)
	if err != nil {
		return nil, err
	}
	zitilog.Route(log, level)
	id, err := agentsdk.LoadIdentity(path)
	if err != nil {
		return nil, err
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
	if _, err := f.parse(args); err != nil {
		return err
	}
	if tokenFile == "" || out == "" {
		return errors.New("enroll: --token and --out are required")
	}
	var b []byte
	var err error
	if tokenFile == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 16<<10))
	} else {
		b, err = os.ReadFile(tokenFile)
	}
	if err != nil {
		return err
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
	f := newFlags("whoami", stderr)
	var as string
	f.StringVar(&as, "as", "", "identity file")
	if _, err := f.parse(args); err != nil {
		return err
	}
	a, err := connect(ctx, f, as, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
	who, err := a.Controller().WhoAmI(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, who.SPIFFEID)
	return nil
}

func cmdIdentityCreate(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("identity create", stderr)
	var as string
	var req api.CreateIdentityRequest
	f.StringVar(&as, "as", "", "administrator identity file")
	f.StringVar(&req.Org, "org", "", "organisation")
	f.StringVar(&req.Kind, "kind", "agent", "kind of workload (agent, mcp, llm, ...)")
	f.StringVar(&req.Name, "name", "", "name")
	f.BoolVar(&req.Admin, "admin", false, "make the identity an administrator")
	f.StringVar(&req.TokenTTL, "token-ttl", "", "enrollment token lifetime (default 1h)")
	if _, err := f.parse(args); err != nil {
		return err
	}
	a, err := connect(ctx, f, as, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
	resp, err := a.Controller().CreateIdentity(ctx, req)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "created %s; enrollment token valid until %s\n", resp.SPIFFEID, resp.ExpiresAt.Format(time.RFC3339))
	fmt.Fprintln(stdout, resp.Token)
	return nil
}

func cmdIdentityRevoke(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("identity revoke", stderr)
	var as, reason string
	f.StringVar(&as, "as", "", "administrator identity file")
	f.StringVar(&reason, "reason", "revoked by administrator", "reason to record")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("identity revoke: give exactly one SPIFFE ID")
	}
	id, err := spiffeid.FromString(pos[0])
	if err != nil {
		return fmt.Errorf("identity revoke: %q: %w", pos[0], err)
	}
	a, err := connect(ctx, f, as, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
	resp, err := a.Controller().Revoke(ctx, id, reason)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked %s (%d live connections cut)\n", resp.SPIFFEID, resp.CircuitsClosed)
	return nil
}

func cmdRouterCreate(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("router create", stderr)
	var as, name string
	f.StringVar(&as, "as", "", "administrator identity file")
	f.StringVar(&name, "name", "", "router name")
	if _, err := f.parse(args); err != nil {
		return err
	}
	a, err := connect(ctx, f, as, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
	tok, err := a.Controller().CreateRouter(ctx, name)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

func cmdServiceGrant(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("service grant", stderr)
	var as string
	var req api.GrantRequest
	var bind, dial multi
	f.StringVar(&as, "as", "", "administrator identity file")
	f.StringVar(&req.Service, "service", "", "service name")
	f.Var(&bind, "bind", "SPIFFE ID that may host the service (repeatable)")
	f.Var(&dial, "dial", "SPIFFE ID that may use the service (repeatable)")
	if _, err := f.parse(args); err != nil {
		return err
	}
	req.Bind, req.Dial = bind, dial
	a, err := connect(ctx, f, as, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
	if err := a.Controller().Grant(ctx, req); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "granted %s: bind %v, dial %v\n", req.Service, req.Bind, req.Dial)
	return nil
}

func cmdServiceList(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("service list", stderr)
	var as string
	f.StringVar(&as, "as", "", "identity file")
	if _, err := f.parse(args); err != nil {
		return err
	}
	a, err := connect(ctx, f, as, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
	svcs, err := a.Services()
	if err != nil {
		return err
	}
	for _, s := range svcs {
		fmt.Fprintln(stdout, s)
	}
	return nil
}

func cmdServiceServe(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("service serve", stderr)
	var as, service string
	var echo bool
	f.StringVar(&as, "as", "", "identity file")
	f.StringVar(&service, "service", "", "service to host")
	f.BoolVar(&echo, "echo", false, "answer every connection by echoing it back")
	if _, err := f.parse(args); err != nil {
		return err
	}
	if !echo {
		return errors.New("service serve: only --echo is built in; host your own services with agentsdk.Listen")
	}
	a, err := connect(ctx, f, as, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
	ln, err := a.Listen(service)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "serving %s as %s (no listening socket)\n", service, a.ID())
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
			fmt.Fprintf(stderr, "connection from %s\n", peer)
			_, _ = io.Copy(c, c)
		}()
	}
}

func cmdServiceDial(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	f := newFlags("service dial", stderr)
	var as, service string
	f.StringVar(&as, "as", "", "identity file")
	f.StringVar(&service, "service", "", "service to dial")
	if _, err := f.parse(args); err != nil {
		return err
	}
	a, err := connect(ctx, f, as, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
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
	// Half-close so the far side sees end of input, then drain what it still sends.
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
}
