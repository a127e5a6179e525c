// Package audit keeps Umbra's single audit trail: an append-only, hash-chained log of records in a NATS
// JetStream stream, with the tools to verify the chain, export it as JSON lines and read one session back.
//
// Every record carries the SHA-256 of its predecessor (Prev) and of its own canonical encoding (Hash), so
// editing, removing or reordering any record breaks the chain at a point Verify and VerifyRecords can name.
// The stream itself refuses deletes and purges, and every append is conditional on the stream's last
// sequence, so two controller replicas writing at once still produce one linear chain.
//
// A chain alone proves only that it is consistent with itself: a whole chain rewritten, or an older copy of
// the stream restored, verifies just as well. Checkpoints anchor it. AppendCheckpoint appends an
// audit.checkpoint record in which the controller signs, with an Ed25519 key of its own, the sequence and hash
// of the record right before it (CheckpointMessage is the exact byte string signed). VerifyAnchored, offline
// on an export or Log.VerifyAnchored on the stream, checks every checkpoint against the public key and the
// chain, and that the chain still holds each Anchor (SEQ:HASH) a verifier kept from an earlier verification.
package audit
