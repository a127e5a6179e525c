// Package envstore is the durable envelope stream: it appends relayed envelopes to NATS JetStream with an exact
// per-session count, de-duplicates retries, and hands each recipient its envelopes in order, at least once.
//
// The store does not interpret envelopes. It keeps the encoded frame as the message body and a few headers:
// the envelope id, the recipient, and the session's running count. Each session is one subject,
// "<lower(stream)>.<session>", in one file-backed stream that has no age, size or count limits: envelopes are
// kept until an operator removes them, because the audit trail reconstructs sessions from them.
//
// # Exact counts
//
// Every stored envelope carries the count of envelopes its session holds including itself. The last message on
// the session subject therefore tells, in one read, both the subject sequence to expect and the count, so the two
// can never describe different moments. Append publishes with the expected last subject sequence: JetStream
// refuses the write if anything was appended to the session since, from this process or another controller
// replica. On refusal the store re-reads the session and tries again, a bounded number of times (ErrConflict
// after that). The limit is checked against the count just before publishing, so concurrent appends never
// store more than max. A per-session mutex keeps one process's appends from racing each other into refusals;
// correctness does not depend on it, which is why the per-session state can be forgotten or evicted at any time.
// An envelope that carries its own position (Envelope.Stamp) is encoded inside that loop, for the position about
// to be compare-and-set: the position is decided once, by the store, and is right without any lock held by the
// caller.
//
// # Retries
//
// The message id JetStream de-duplicates on is the session and the envelope id, so an id reused in another
// session can never make a genuine envelope look like a retry and be dropped. A retry within the duplicate
// window (Options.DuplicateWindow) is acknowledged with the sequence of the original and writes nothing. A retry
// of the session's last envelope after the session reached its limit is still reported as a duplicate; a retry
// of an earlier one at that point gets ErrLimit.
//
// # Delivery and order
//
// A Receiver is a durable pull consumer per (session, recipient) with explicit acks and at most one
// unacknowledged envelope (MaxAckPending 1). JetStream hands out envelope N+1 only after N is acknowledged;
// an unacknowledged envelope is redelivered after Options.AckWait, or at once when the Receiver is closed or
// Next is called again, and nothing overtakes it meanwhile. This costs one round trip per envelope per
// recipient, which is small next to an agent's own work, and avoids re-sequencing in the client. Envelopes in
// the session addressed to someone else are acknowledged for this cursor and skipped.
//
// # Durability
//
// Append returns only after JetStream acknowledged the write. Whether an acknowledged write survives power loss
// is a server setting: run the server with SyncAlways (natsd.Config.SyncAlways) so that it fsyncs before it
// acknowledges.
package envstore
