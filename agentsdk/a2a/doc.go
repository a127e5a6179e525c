// Package a2a carries the A2A protocol (github.com/a2aproject/a2a-go, JSON-RPC binding) over Umbra sessions, so
// that stock A2A clients and servers talk to each other across organisations under a session's contract.
//
// Every A2A call is an envelope. Its type is the A2A method in envelope form ("message/send" is
// "a2a.message.send", see MessageType), so the contract's allowed_message_types allows or refuses each method,
// and the relay counts, checks and records every call like any envelope. The envelope's payload is the
// JSON-RPC request as the client sent it. The provider answers with envelopes correlated to the request (the
// correlation ID is the request envelope's ID): zero or more "<type>.event" envelopes, one per streamed event,
// then exactly one "<type>.result" envelope, whose payload is the JSON-RPC response (or the last streamed event;
// empty if the stream ended after its events).
//
// The provider mounts a Server on its sessions; it hands each call to an A2A JSON-RPC endpoint, in-process
// (an http.Handler such as a2asrv.NewJSONRPCHandler) or at a URL:
//
//	h := a2asrv.NewJSONRPCHandler(a2asrv.NewHandler(executor))
//	srv := a2a.NewServer(h, a2a.ServerConfig{})
//	err := agent.Serve(ctx, 0, srv.Handle)
//
// The consumer serves a Proxy on a loopback address. It publishes the provider's card where A2A clients look
// for it (/.well-known/agent-card.json, with the proxy's own URL), and carries every JSON-RPC call as an
// envelope on one session, proposed on first use under the advertisement's terms:
//
//	p, err := a2a.NewProxy(a2a.ProxyConfig{Agent: agent, Advertisement: ad})
//	go http.Serve(loopbackListener, p)
//	card, err := agentcard.DefaultResolver.Resolve(ctx, "http://127.0.0.1:8090")
//	client, err := a2aclient.NewFromCard(ctx, card)
//
// A call the contract refuses (type_not_allowed, max_messages, expired, envelope_too_large, session_closed)
// reaches the A2A client as a JSON-RPC error (code -32000, server error) whose data names the contract rule.
package a2a
