package agentsdk_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/internal/api"
)

// enrollmentToken asks the administrator for a one-time token, as `umbra identity create` does.
func enrollmentToken(org, kind, name string) string {
	resp, err := env.Admin().Controller().CreateIdentity(context.Background(), api.CreateIdentityRequest{Org: org, Kind: kind, Name: name})
	if err != nil {
		log.Fatal(err)
	}
	return resp.Token
}

// grant lets host serve service and caller use it, as `umbra service grant` does.
func grant(service string, host, caller *agentsdk.Agent) {
	err := env.Admin().Controller().Grant(context.Background(), api.GrantRequest{
		Service: service, Bind: []string{host.ID().String()}, Dial: []string{caller.ID().String()}})
	if err != nil {
		log.Fatal(err)
	}
}

func connectNew(name string) *agentsdk.Agent {
	ctx := context.Background()
	id, err := agentsdk.Enroll(ctx, enrollmentToken("example", "agent", name))
	if err != nil {
		log.Fatal(err)
	}
	a, err := agentsdk.Connect(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	return a
}

// Enroll with a one-time token, connect, and ask the controller who we are.
func ExampleEnroll() {
	ctx := context.Background()
	id, err := agentsdk.Enroll(ctx, enrollmentToken("example", "agent", "analyst"))
	if err != nil {
		log.Fatal(err)
	}
	agent, err := agentsdk.Connect(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	defer agent.Close()
	who, err := agent.Controller().WhoAmI(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(who.SPIFFEID)
	// Output: spiffe://umbra.local/example/agent/analyst
}

// Host a service with Listen and call it with Dial; each side learns the other's verified SPIFFE ID.
func ExampleAgent_Listen() {
	ctx := context.Background()
	host, caller := connectNew("quoter"), connectNew("buyer")
	defer host.Close()
	defer caller.Close()
	grant("quotes", host, caller)

	ln, err := host.Listen("quotes")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		peer, _ := agentsdk.PeerIdentity(conn)
		fmt.Fprintf(conn, "quote for %s: 42\n", peer.Path())
	}()

	conn, err := caller.Dial(ctx, "quotes")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	peer, _ := agentsdk.PeerIdentity(conn)
	line, _ := io.ReadAll(conn)
	fmt.Printf("from %s: %s", peer.Path(), line)
	// Output: from /example/agent/quoter: quote for /example/agent/buyer: 42
}

// Serve HTTP on the overlay and call it with the agent's HTTP client: the URL's host is the service name.
func ExampleAgent_HTTPClient() {
	host, caller := connectNew("api-server"), connectNew("api-client")
	defer host.Close()
	defer caller.Close()
	grant("inventory", host, caller)

	ln, err := host.Listen("inventory")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s has 3 widgets", r.URL.Path)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	resp, err := caller.HTTPClient().Get("http://inventory/widgets")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(strings.TrimSpace(string(body)))
	// Output: /widgets has 3 widgets
}
