// Package envstore is the durable envelope stream: it appends relayed envelopes to NATS JetStream with an exact
// per-session count, stores each envelope id once per session, hands each recipient its envelopes in order, at
// least once, and lets one follower read every envelope of every session in stream order.
//
// The store does not interpret envelopes. It keeps the encoded frame as the message body and a few headers:
// the envelope id, the recipient, the session's running count and the envelope's Meta values
// ("Umbra-Meta-<key>"). Each envelope has its own subject, "<lower(stream)>.<session>.<id token>", where the
// token is the id in unpadded URL-safe base64, in one file-backed stream that has no age, size or count limits:
// envelopes are kept until an operator removes them, because the audit trail reconstructs sessions from them.
//
// # Exact counts
//
// Every stored envelope carries the count of envelopes its session holds including itself. The last message on
// the session's subjects ("<lower(stream)>.<session>.*") therefore tells, in one read, both the sequence to
// expect and the count, so the two can never describe different moments. Append publishes to the envelope's
// own subject with the expected last sequence of the session's subjects (JetStream's
// Nats-Expected-Last-Subject-Sequence-Subject names the wildcard): JetStream refuses the write if anything was
// appended to the session since, from this process or another controller replica. On refusal the store
// re-reads the session and tries again, a bounded number of times (ErrConflict after that). The limit is
// checked against the count just before publishing, so concurrent appends never store more than max. A
// per-session mutex keeps one process's appends from racing each other into refusals; correctness does not
// depend on it, which is why the per-session state can be forgotten or evicted at any time. An envelope that
// carries its own position (Envelope.Stamp) is encoded inside that loop, for the position about to be
// compare-and-set: the position is decided once, by the store, and is right without any lock held by the
// caller.
//
// # Retries
//
// An envelope id is stored once per session, for as long as the session's envelopes are kept: across Store
// re-opens, server restarts and any time window. Inside the compare-and-set loop, after reading the state it
// is about to compare against, Append looks up the id's subject. If the id is there, Append writes nothing and
// reports a duplicate with the original's stream sequence and the session's current count; this holds at the
// session's limit too, for any stored id. If it is not there, an original written since the read would have
// moved the session, so the publish is refused and the next attempt finds it: two Appends of one id racing
// from two controllers store it once. The id is scoped to its session, so an id reused in another session
// can never make a genuine envelope look like a retry and be dropped. JetStream's own de-duplication (message
// id "<session>/<id>", Options.DuplicateWindow) is kept as a cheap first answer, but nothing depends on it.
//
// The look-up costs one read per append: a round trip to the server (about 70 µs on a loopback connection),
// small next to an fsync. The compare-and-set on the wildcard costs the server time in proportion to the
// number of envelopes in the session (it finds the last of the session's subjects), about 50 µs per thousand
// envelopes on a small machine; sessions are bounded by their contracts' message limits.
//
// Reads must see what the stream leader has stored, so the stream keeps direct gets off.
//
// # Data from before per-envelope subjects
//
// Earlier versions stored all of a session's envelopes on "<lower(stream)>.<session>". The stream keeps that
// subject ("<lower(stream)>.*" next to "<lower(stream)>.*.*"), and every read covers both: Count continues from
// the last count recorded there, All, Get, Follow and Receiver return those envelopes (a Receiver's durable
// cursor is widened in place and keeps its position), and their ids are read once per session into memory so
// that replays of them are duplicates too. Nothing is appended there any more. Writers of the earlier version
// must be stopped before this one appends: they neither see its compare-and-set nor its ids.
//
// # Delivery and order
//
// A Receiver is a durable pull consumer per (session, recipient) with explicit acks and at most one
// unacknowledged envelope (MaxAckPending 1). JetStream hands out envelope N+1 only after N is acknowledged;
// an unacknowledged envelope is redelivered after Options.AckWait (which Receiver.InProgress restarts while the
// recipient has not confirmed it yet), or at once when the Receiver is closed or Next is called again, and
// nothing overtakes it meanwhile. This costs one round trip per envelope per
// recipient, which is small next to an agent's own work, and avoids re-sequencing in the client. Envelopes in
// the session addressed to someone else are acknowledged for this cursor and skipped.
//
// Follow reads the whole stream from a given sequence through an ordered consumer, which keeps no state on the
// server: the follower remembers the last sequence it handled and starts after it next time. The consumer is
// re-created from the next sequence if it misses anything, so envelopes come in stream order with none skipped.
//
// # Durability
//
// Append returns only after JetStream acknowledged the write. Appends to different sessions that are ready at
// the same moment are published together: pipelined, or on a replicated stream as one atomic batch (one sync for
// all) when there are enough of them (commit.go). Whether an acknowledged write survives power loss
// is a server setting: run the server with SyncAlways (natsd.Config.SyncAlways) so that it fsyncs before it
// acknowledges.
package envstore
