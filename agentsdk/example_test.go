package agentsdk_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// These examples need a running Umbra network (`umbra dev` starts one), so they are compiled but not run here;
// package sdktest of the Umbra repository runs the same calls against a real controller and routers.

// Enroll once with the one-time token an administrator issued (`umbra identity create`), keep the identity,
// and connect with it from then on.
func ExampleEnroll() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, err := agentsdk.Enroll(ctx, "ut1.…") // the key is generated here; only a CSR leaves the process
	if err != nil {
		log.Fatal(err)
	}
	if err := id.Save("analyst.json"); err != nil {
		log.Fatal(err)
	}
	fmt.Println(id.SPIFFEID(), "valid until", id.ExpiresAt())
}

// Connect with a saved identity; renewals are written back to the same file.
func ExampleConnect() {
	ctx := context.Background()
	id, err := agentsdk.LoadIdentity("analyst.json")
	if err != nil {
		log.Fatal(err)
	}
	agent, err := agentsdk.Connect(ctx, id, agentsdk.WithIdentityFile("analyst.json"))
	if err != nil {
		log.Fatal(err)
	}
	defer agent.Close()
	who, err := agent.Controller().WhoAmI(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("connected as", who.SPIFFEID)
}

// Host a service with Listen and call it with Dial. Both ends run mutual TLS with their SVIDs inside the overlay
// connection, so PeerIdentity is the SPIFFE ID the other end proved, not a name the overlay reports.
func ExampleAgent_Listen() {
	ctx := context.Background()
	var host, caller *agentsdk.Agent // two connected agents; an administrator granted "quotes" to them

	ln, err := host.Listen("quotes") // opens no listening socket
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			peer, err := agentsdk.PeerIdentity(conn)
			if err == nil {
				fmt.Fprintf(conn, "quote for %s: 42\n", peer)
			}
			conn.Close()
		}
	}()

	conn, err := caller.Dial(ctx, "quotes")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	peer, err := agentsdk.PeerIdentity(conn)
	if err != nil {
		log.Fatal(err)
	}
	line, _ := io.ReadAll(conn)
	fmt.Printf("%s answered: %s", peer, line)
}

// Reuse net/http on the overlay: the URL's host is the service name.
func ExampleAgent_HTTPClient() {
	var host, caller *agentsdk.Agent // two connected agents; "inventory" granted to them

	ln, err := host.Listen("inventory")
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s has 3 widgets", r.URL.Path)
	}))

	resp, err := caller.HTTPClient().Get("http://inventory/widgets")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(string(body))
}

// A provider advertises its card and the terms it offers in a workgroup; a consumer in that workgroup discovers
// it and proposes a session. A proposal within the terms is accepted by the controller at once.
func ExampleAgent_Propose() {
	ctx := context.Background()
	var quoter, buyer *agentsdk.Agent // connected members of the workgroup acme/pricing
	pricing, err := workgroups.ParseWorkgroupID("acme/pricing")
	if err != nil {
		log.Fatal(err)
	}

	card := workgroups.AgentCard{Name: "Quoter", Version: "1", MessageTypes: []string{"quote.*"},
		Skills: []workgroups.Skill{{ID: "pricing", Name: "Pricing"}}}
	terms := workgroups.Terms{MaxDuration: workgroups.Duration(time.Hour), MaxMessages: 100,
		AllowedMessageTypes: []string{"quote.request", "quote.offer"}, MaxEnvelopeBytes: 64 << 10}
	if _, err := quoter.Advertise(ctx, card, terms, pricing); err != nil {
		log.Fatal(err)
	}

	found, err := buyer.Discover(ctx, api.DiscoverRequest{Skill: "pricing"})
	if err != nil || len(found) == 0 {
		log.Fatal("no pricing offer visible: ", err)
	}
	sess, err := buyer.Propose(ctx, found[0].ID, workgroups.Proposal{MaxMessages: 10})
	if errors.Is(err, agentsdk.ErrRejected) {
		log.Fatal("outside the advertised terms: ", err)
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Println("session", sess.ID(), sess.Info().State, "with", sess.Peer())
}

// Send and Receive envelopes in a session. The controller's relay checks each against the session's contract
// before it records and delivers it; a refused one is ErrContractViolation.
func ExampleSession_Send() {
	ctx := context.Background()
	var buyer, quoter *agentsdk.Agent // the two parties
	var id workgroups.SessionID       // from Propose, or parsed with workgroups.ParseSessionID

	mine, err := buyer.Session(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := mine.Send(ctx, "quote.request", []byte(`{"sku":"w-1"}`)); errors.Is(err, agentsdk.ErrContractViolation) {
		log.Fatal("the contract refused it: ", err)
	} else if err != nil {
		log.Fatal(err)
	}

	theirs, err := quoter.Session(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	in, err := theirs.Receive(rctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(in.Header.Type, "from", in.Header.From, string(in.Payload))
}

// Serve answers, as provider, every envelope of every accepted session until ctx ends; a reply goes back in the
// same session, correlated with the envelope it answers.
func ExampleAgent_Serve() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var quoter *agentsdk.Agent // a connected provider with an advertisement

	err := quoter.Serve(ctx, time.Second, func(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) (string, []byte, error) {
		if in.Header.Type != "quote.request" {
			return "", nil, nil // no reply
		}
		return "quote.offer", []byte(`{"price":42}`), nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
}

// An administrator uses the same SDK: Controller is the client of the controller's API, which is served only
// on the overlay and authorises every call by the caller's SVID.
func ExampleController() {
	ctx := context.Background()
	var admin *agentsdk.Agent // connected as acme's administrator (spiffe://<td>/acme/admin/admin)
	ctrl := admin.Controller()

	// A one-time enrollment token for a new workload of the organisation.
	created, err := ctrl.CreateIdentity(ctx, api.CreateIdentityRequest{Org: "acme", Kind: "agent", Name: "quoter"})
	if err != nil {
		log.Fatal(err)
	}
	quoter, err := spiffeid.FromString(created.SPIFFEID)
	if err != nil {
		log.Fatal(err)
	}

	// A workgroup shared with globex (active once globex accepts), with the new agent in it.
	wg, err := ctrl.CreateWorkgroup(ctx, "pricing", "globex")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := ctrl.AddMember(ctx, wg.ID, quoter, workgroups.RoleMember); err != nil {
		log.Fatal(err)
	}

	// Let the agent host a service, and revoke it again.
	if err := ctrl.Grant(ctx, api.GrantRequest{Service: "quotes", Bind: []string{quoter.String()}}); err != nil {
		log.Fatal(err)
	}
	if _, err := ctrl.Revoke(ctx, quoter, "left the company"); err != nil {
		log.Fatal(err)
	}
	fmt.Println("token", created.Token, "for", quoter, "in", wg.ID, wg.Status)
}
