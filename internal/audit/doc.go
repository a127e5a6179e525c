// Package audit keeps Umbra's single audit trail: an append-only, hash-chained log of records in a NATS
// JetStream stream, with the tools to verify the chain, export it as JSON lines and read one session back.
//
// Every record carries the SHA-256 of its predecessor (Prev) and of its own canonical encoding (Hash), so
// editing, removing or reordering any record breaks the chain at a point Verify and VerifyRecords can name.
// The stream itself refuses deletes and purges, and every append is conditional on the stream's last
// sequence, so two controller replicas writing at once still produce one linear chain.
package audit
