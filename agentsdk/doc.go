// Package agentsdk connects an agent, tool server or model endpoint to an Umbra network.
//
// It looks like package net. A workload enrolls once with a one-time token from its administrator: the key is
// generated locally and only a CSR leaves the process; the controller answers with a short-lived SPIFFE
// X.509-SVID. Then the workload connects to the dark overlay and dials or hosts services by name:
//
//	id, err := agentsdk.Enroll(ctx, token)        // or agentsdk.LoadIdentity("analyst.json")
//	id.Save("analyst.json")
//	agent, err := agentsdk.Connect(ctx, id)
//	defer agent.Close()
//
//	conn, err := agent.Dial(ctx, "pricing")       // a net.Conn; mutual TLS with SVIDs inside the overlay
//	peer, err := agentsdk.PeerIdentity(conn)      // the SPIFFE ID the other end proved
//
//	ln, err := agent.Listen("pricing")            // a net.Listener; opens no listening socket
//	err = agentsdk.WaitHosted(ctx, ln)            // a router hosts it, the overlay knows: dials reach it
//	resp, err := agent.HTTPClient().Get("http://pricing/quote")
//
// Nothing listens on the workload's host: the SDK dials out to the overlay's routers, and callers reach a hosted
// service only if a policy lets them (otherwise the service does not exist for them). Inside every overlay
// connection the two ends run mutual TLS with their SVIDs, so PeerIdentity never depends on a name the overlay
// reports for the caller, which the calling client asserts and could forge.
//
// The agent renews its SVID at half its lifetime over the overlay (WithIdentityFile writes renewals back), and
// an administrator's revocation cuts it from the overlay and the controller at once. Every agent follows the
// controller's revocation feed and refuses a revoked peer certificate in its own handshakes (ErrRevoked), so a
// stolen SVID stops opening doors within about a second of its revocation.
//
// Every blocking call returns by its context's deadline, also when the overlay does not answer. The agent repairs
// its overlay session by itself: after a controller restart it authenticates again and hosts its services again
// (ListenContext is Listen with a deadline for the first bind). With a cluster of controllers, the identity lists
// every member's overlay API (Identity.OverlayAPIs) and the agent learns the members from the overlay too: when the
// controller it authenticated through dies, it refreshes its session through another, with no call of its own.
//
// Agents collaborate in sessions governed by contracts. A provider advertises its card and terms in workgroups
// (Advertise); a consumer that shares one finds it (Discover) and proposes a session (Propose); the controller
// accepts a proposal within the terms at once, rejects it, or holds it for the provider (OnProposal, Accept,
// Reject). The parties then Send and Receive envelopes, each checked against the contract, recorded and
// delivered by the controller's relay; Serve answers every session of a provider with a Handler:
//
//	ad, err := agent.Advertise(ctx, card, terms, workgroupID)
//	ads, err := agent.Discover(ctx, api.DiscoverRequest{Skill: "pricing"})
//	sess, err := agent.Propose(ctx, ads[0].ID, workgroups.Proposal{})
//	seq, err := sess.Send(ctx, "quote.request", payload)
//	in, err := sess.Receive(ctx)
//
// Changes of an agent's sessions are pushed to it: SessionEvents follows the controller's feed of the sessions
// the agent is consumer or provider of (a long poll over the overlay, resumed where it left off after a
// disconnection or a controller restart), and delivers each session as it is proposed, held, accepted, activated,
// closed or rejected, within milliseconds of the change. Serve and OnProposal follow it too, so a provider serves a
// new session and decides a held proposal at once; they also list the sessions every interval as a safety net,
// and against a controller that predates the feed they poll as before. No other identity learns anything of an
// agent's sessions from the feed.
//
// IDs at this boundary are checked types: workgroups.SessionID, workgroups.AdvertisementID,
// workgroups.WorkgroupID and spiffeid.ID; parse the ones that come as text (workgroups.ParseSessionID, ...).
// Request and response bodies of the controller's API are in package api.
//
// Administrators use the same SDK: Agent.Controller() returns a client of the controller's API, which the
// controller serves only on the overlay and authorises by the caller's SVID.
//
// The SDK is a Go module of its own (go get github.com/umbra-mesh/umbra/agentsdk): it links no server code.
package agentsdk
