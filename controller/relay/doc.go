// Package relay is the enforcement point for A2A envelopes: it serves the controller's relay service, checks
// every envelope against its session and contract, appends it to the envelope store, acknowledges it once its
// audit record is durable, and delivers it to the recipient in order, at least once.
//
// A Relay trusts nothing a peer writes: the sender is the SPIFFE ID the connection proved (Config.PeerIdentity;
// in production agentsdk.PeerIdentity over mutual TLS inside the overlay), and frames are decoded under hard
// limits (FrameLimits) before any contract is consulted. What it needs from the rest of the controller it names
// in small interfaces of its own: Sessions, Envelopes, RecordGate, Refusals, Memberships, Identities and
// Authorizer. The controller adapts its stores to them; tests use an embedded NATS server and fakes.
//
// # Per envelope
//
// A send connection carries frames, each answered by one api.RelayAck line. For each envelope the relay reads
// the session (always from the store, so a close or an expiry takes effect on the next envelope), checks the
// contract (workgroups.CheckSend), asks the authoriser, appends the envelope and waits for the record gate.
// The session's envelope count is not read per envelope: each connection keeps the count the store reported
// for the session's last append, and the store's compare-and-set confirms it (Envelope.Stamp is given the
// position the store is about to commit; when it is not the one the checks assumed, because another writer
// appended meanwhile, nothing is written and the envelope is checked again with a count read afresh). The
// sender's memberships come from a cache that may lag the store by a moment; a refusal is confirmed against
// the store before it is answered, so a membership just granted is never refused.
//
// # Delivery
//
// A receive connection names one session; only its parties are served. An envelope is written to the
// recipient only once its audit record is durable (RecordGate), and acknowledged to the store only once the
// recipient returned a receipt for it, so an unconfirmed envelope is delivered again.
package relay
