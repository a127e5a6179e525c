package workgroups_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/umbra-mesh/umbra/workgroups"
)

// A consumer proposes within the advertised terms, the contract accepts on
// the provider's behalf, and the relay checks envelopes against it.
func Example() {
	random := rand.NewChaCha8([32]byte{1}) // crypto/rand.Reader in production
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	consumer := spiffeid.RequireFromString("spiffe://acme.example/acme/agent/buyer")
	provider := spiffeid.RequireFromString("spiffe://globex.example/globex/agent/quoter")
	controller := spiffeid.RequireFromString("spiffe://umbra.example/umbra/controller/main")
	trade, _ := workgroups.ParseWorkgroupID("acme/trade")

	adID, _ := workgroups.NewAdvertisementID(random)
	ad := workgroups.Advertisement{
		ID:         adID,
		Provider:   provider,
		Workgroups: []workgroups.WorkgroupID{trade},
		Card:       workgroups.AgentCard{Name: "Quoter", Version: "1", MessageTypes: []string{"quote.*"}},
		Terms: workgroups.Terms{
			MaxDuration:         workgroups.Duration(time.Hour),
			MaxMessages:         10,
			AllowedMessageTypes: []string{"quote.*"},
			MaxEnvelopeBytes:    4096,
		},
	}

	sid, _ := workgroups.NewSessionID(random)
	session, adm, err := workgroups.Propose(sid, ad, consumer, trade, workgroups.Proposal{MaxMessages: 4}, controller, now)
	if err != nil {
		panic(err)
	}
	fmt.Println(adm.Verdict, session.State, session.Contract.MaxMessages)

	// Over the terms: rejected, with the reason.
	_, adm, _ = workgroups.Propose(sid, ad, consumer, trade, workgroups.Proposal{MaxMessages: 50}, controller, now)
	fmt.Println(adm.Verdict+":", adm.Reason())

	// An envelope on the wire.
	envID, _ := workgroups.NewEnvelopeID(random)
	payload := []byte(`{"item":"widget"}`)
	h := workgroups.Header{
		ID: envID, Session: session.ID, From: consumer, To: provider,
		Type: "quote.request", Time: now, ContentType: "application/json",
	}.WithPayload(payload)
	var wire bytes.Buffer
	if err := workgroups.EncodeFrame(&wire, h, payload); err != nil {
		panic(err)
	}
	got, _, err := workgroups.DecodeFrame(&wire, workgroups.FrameLimits{})
	if err != nil {
		panic(err)
	}
	fmt.Println(workgroups.CheckSend(session, got, consumer, 0, now.Add(time.Minute)))

	// The same header from a connection that proved another identity.
	fmt.Println(workgroups.CheckSend(session, got, provider, 0, now.Add(time.Minute)))

	// Output:
	// accept accepted 4
	// reject: max_messages: asked 50, offered at most 10
	// <nil>
	// workgroups: contract violation: sender_forged: header from spiffe://acme.example/acme/agent/buyer, connection proved spiffe://globex.example/globex/agent/quoter
}
