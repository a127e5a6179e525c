package a2a_test

import (
	"context"
	"log"
	"net"
	"net/http"

	a2ago "github.com/a2aproject/a2a-go/a2a"
	"github.com/a2aproject/a2a-go/a2asrv"
	"github.com/a2aproject/a2a-go/a2asrv/eventqueue"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/a2a"
	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// hello is an A2A agent written with a2a-go: it answers every message with "hello".
type hello struct{}

func (hello) Execute(ctx context.Context, rc *a2asrv.RequestContext, q eventqueue.Queue) error {
	return q.Write(ctx, a2ago.NewMessage(a2ago.MessageRoleAgent, a2ago.TextPart{Text: "hello"}))
}

func (hello) Cancel(context.Context, *a2asrv.RequestContext, eventqueue.Queue) error { return nil }

// The provider answers the A2A calls of all its sessions with a stock a2a-go server, in-process: no socket.
func ExampleServer() {
	ctx := context.Background()
	id, err := agentsdk.LoadIdentity("hello.json")
	if err != nil {
		log.Fatal(err)
	}
	agent, err := agentsdk.Connect(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	defer agent.Close()
	srv := a2a.NewServer(a2asrv.NewJSONRPCHandler(a2asrv.NewHandler(hello{})), a2a.ServerConfig{})
	if err := agent.Serve(ctx, 0, srv.Handle); err != nil {
		log.Fatal(err)
	}
}

// The consumer serves a provider it discovered to A2A clients on a loopback address: they find the card at
// http://127.0.0.1:8090/.well-known/agent-card.json and call it as any A2A agent.
func ExampleProxy() {
	ctx := context.Background()
	id, err := agentsdk.LoadIdentity("buyer.json")
	if err != nil {
		log.Fatal(err)
	}
	agent, err := agentsdk.Connect(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	defer agent.Close()
	ads, err := agent.Discover(ctx, api.DiscoverRequest{Skill: "hello"})
	if err != nil || len(ads) == 0 {
		log.Fatalf("no A2A agent to talk to: %v", err)
	}
	p, err := a2a.NewProxy(a2a.ProxyConfig{Agent: agent, Advertisement: ads[0]})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:8090")
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(ln, p))
}
