package api

import (
	"encoding/json"
	"time"

	"github.com/umbra-mesh/umbra/workgroups"
)

// Governance paths, all served on the overlay.
const (
	PathOrgs             = "/v1/orgs"
	PathWorkgroups       = "/v1/workgroups"
	PathWorkgroupAnswer  = "/v1/workgroups/answer"
	PathWorkgroupMembers = "/v1/workgroups/members"
	PathWorkgroupDelete  = "/v1/workgroups/delete"
	PathAdvertisements   = "/v1/advertisements"
	PathDiscover         = "/v1/discover"
	PathSessions         = "/v1/sessions"
	PathAuditVerify      = "/v1/audit/verify"
	PathAuditExport      = "/v1/audit/export"
	PathAuditSession     = "/v1/audit/sessions/"
	PathAuditKey         = "/v1/audit/key"
	PathAuditArchive     = "/v1/audit/archive"
	PathEnvelopesExport  = "/v1/envelopes/export"
	PathEnvelopesArchive = "/v1/envelopes/archive"
	// EnvelopesMaxSessionsParam is the query parameter of PathEnvelopesExport bounding how many sessions one
	// export holds.
	EnvelopesMaxSessionsParam = "max_sessions"
	// AuditAfterParam is the query parameter of PathAuditVerify naming a kept checkpoint, "SEQ:HASH".
	AuditAfterParam = "after"
	// RelayService is the dark service through which every envelope travels.
	RelayService = "umbra.relay"
)

// CreateOrgRequest creates an organisation and its first administrator identity (platform admin only).
type CreateOrgRequest struct {
	Name     string `json:"name"`
	TokenTTL string `json:"token_ttl,omitempty"`
}

// CreateOrgResponse carries the enrollment token of the organisation's administrator.
type CreateOrgResponse struct {
	Org        string `json:"org"`
	AdminID    string `json:"admin_id"`
	AdminToken string `json:"admin_token"`
}

// CreateWorkgroupRequest creates a workgroup owned by the caller's organisation; with Invite it is inter-org.
type CreateWorkgroupRequest struct {
	Name   string   `json:"name"`
	Invite []string `json:"invite,omitempty"`
}

// AnswerWorkgroupRequest accepts (or declines) an invitation for the caller's organisation.
type AnswerWorkgroupRequest struct {
	Workgroup string `json:"workgroup"` // <org>/<name>
	Decline   bool   `json:"decline,omitempty"`
}

// MemberRequest adds or removes a member.
type MemberRequest struct {
	Workgroup string          `json:"workgroup"`
	Identity  string          `json:"identity"`
	Role      workgroups.Role `json:"role,omitempty"` // default member
	Remove    bool            `json:"remove,omitempty"`
}

// DeleteWorkgroupRequest deletes a workgroup (an admin of its owner organisation).
type DeleteWorkgroupRequest struct {
	Workgroup string `json:"workgroup"`
}

// WorkgroupView is a workgroup with its derived status.
type WorkgroupView struct {
	workgroups.Workgroup
	Status workgroups.WorkgroupStatus `json:"status"`
}

// AdvertiseRequest publishes the caller's agent card and terms in workgroups it belongs to.
type AdvertiseRequest struct {
	Workgroups []string             `json:"workgroups"`
	Card       workgroups.AgentCard `json:"card"`
	Terms      workgroups.Terms     `json:"terms"`
}

// DiscoverRequest filters discovery; empty fields match everything.
type DiscoverRequest struct {
	Skill string `json:"skill,omitempty"`
	Text  string `json:"text,omitempty"`
}

// ProposeRequest proposes a session on an advertisement.
type ProposeRequest struct {
	Advertisement string              `json:"advertisement"`
	Workgroup     string              `json:"workgroup,omitempty"` // default: the first shared workgroup
	Proposal      workgroups.Proposal `json:"proposal"`
}

// ProposeResponse is the session as recorded, with the admission's reason.
type ProposeResponse struct {
	Session workgroups.Session `json:"session"`
	Reason  string             `json:"reason"`
}

// SessionActionRequest accepts, rejects or closes a session.
type SessionActionRequest struct {
	Reason string `json:"reason,omitempty"`
}

// SessionView is a session with its envelope count.
type SessionView struct {
	workgroups.Session
	Envelopes uint64 `json:"envelopes"`
}

// AuditReport is the result of verifying the audit chain.
type AuditReport struct {
	Records  int    `json:"records"`
	LastSeq  uint64 `json:"last_seq"`
	LastHash string `json:"last_hash"`
	OK       bool   `json:"ok"`
	Error    string `json:"error,omitempty"`
	// Checkpoints is how many signed checkpoints verified; LastCheckpoint is the last of them, to keep for the
	// next verification (absent when there is none).
	Checkpoints    int              `json:"checkpoints"`
	LastCheckpoint *AuditCheckpoint `json:"last_checkpoint,omitempty"`
}

// AuditArchiveRequest asks the controller to trim the audit trail through a record a verified export holds
// (platform admin only): Through is "SEQ:HASH" as `umbra audit verify` printed it for that export.
type AuditArchiveRequest struct {
	Through string `json:"through"`
}

// AuditArchived answers an archive: the archived head (Seq, Hash), the checkpoint record that signs it, and the
// audit.archived record that now names them; the trail starts at FirstSeq.
type AuditArchived struct {
	Seq            uint64 `json:"seq"`
	Hash           string `json:"hash"`
	CheckpointSeq  uint64 `json:"checkpoint_seq"`
	CheckpointHash string `json:"checkpoint_hash"`
	RecordSeq      uint64 `json:"record_seq"`
	RecordHash     string `json:"record_hash"`
	FirstSeq       uint64 `json:"first_seq"`
}

// ExportedEnvelope is one line of an envelope export (JSON lines, in stream order): an envelope as the
// envelope stream holds it. Frame is the encoded envelope (header and payload) as the relay stored it.
type ExportedEnvelope struct {
	StreamSeq uint64            `json:"stream_seq"`
	Session   string            `json:"session"`
	ID        string            `json:"id"`
	To        string            `json:"to"`
	Meta      map[string]string `json:"meta,omitempty"`
	Frame     []byte            `json:"frame"`
}

// EnvelopeExportEnd is the last line of an envelope export.
type EnvelopeExportEnd struct {
	Manifest *EnvelopeManifest `json:"manifest"`
}

// EnvelopeManifest names what an envelope export holds: every envelope, up to stream sequence Through, of the
// sessions listed, each with the SHA-256 of its lines of the export (each line with its newline, in order).
// Complete is false when more removed sessions' envelopes remain than one export takes: archive this one and
// export again.
type EnvelopeManifest struct {
	Through   uint64            `json:"through"`
	Sessions  []ArchivedSession `json:"sessions"`
	Envelopes int               `json:"envelopes"`
	Bytes     int64             `json:"bytes"`
	Complete  bool              `json:"complete"`
}

// ArchivedSession is one session of an envelope export or archive.
type ArchivedSession struct {
	Session   string `json:"session"`
	Envelopes int    `json:"envelopes"`
	SHA256    string `json:"sha256"`
}

// MaxArchiveSessions is the most sessions one EnvelopeArchiveRequest names (so that it fits MaxRequestBytes); an
// export's manifest is archived in parts of at most this many.
const MaxArchiveSessions = 256

// EnvelopeArchiveRequest asks the controller to remove the envelopes of sessions an export holds (platform admin
// only), naming each session with its count and digest as the export's manifest gave them.
type EnvelopeArchiveRequest struct {
	Sessions []ArchivedSession `json:"sessions"`
}

// EnvelopesArchived answers an envelope archive: how many sessions and envelopes were removed, and how many of
// those sessions had been archived before (an interrupted archive, completed now).
type EnvelopesArchived struct {
	Sessions  int   `json:"sessions"`
	Envelopes int   `json:"envelopes"`
	Bytes     int64 `json:"bytes"`
	Completed int   `json:"completed"`
}

// AuditCheckpoint is a verified checkpoint: the record at Seq had hash Hash at the controller's Time.
type AuditCheckpoint struct {
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time"`
}

// AuditKey is the controller's checkpoint public key.
type AuditKey struct {
	KeyID     string `json:"key_id"`
	PublicKey string `json:"public_key"` // PEM "PUBLIC KEY" block (PKIX, Ed25519)
}

// SessionAudit reconstructs a session: its record, every audit record about it, every stored envelope header.
type SessionAudit struct {
	Session   workgroups.Session  `json:"session"`
	Records   []json.RawMessage   `json:"records"`
	Envelopes []workgroups.Header `json:"envelopes"`
}

// RelayHello opens a relay connection: Mode "send" or "recv" (Session required for recv).
type RelayHello struct {
	Mode    string `json:"mode"`
	Session string `json:"session,omitempty"`
}

// RelayAck answers one sent envelope.
type RelayAck struct {
	ID        string `json:"id"`
	OK        bool   `json:"ok"`
	Seq       uint64 `json:"seq,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
	Code      string `json:"code,omitempty"`
	Error     string `json:"error,omitempty"`
}

// RelayReceipt acknowledges one delivered envelope.
type RelayReceipt struct {
	Seq uint64 `json:"seq"`
}

// Relay error codes beyond the contract violation codes of package workgroups.
const (
	CodeMalformedFrame = "malformed_frame"
	CodeDuplicate      = "duplicate"
)

// Codes of proposals refused because the proposing identity holds as many sessions as one identity may (HTTP
// 429): close sessions no longer needed, or ask the operator to raise the limit.
const (
	CodeTooManySessions  = "too_many_sessions"  // open sessions as consumer
	CodeTooManyProposals = "too_many_proposals" // proposals awaiting their providers
)

// CodeProposalRateLimited refuses a proposal beyond the proposals one identity may make in a minute (HTTP 429,
// with a Retry-After header giving the seconds until the identity's window ends).
const CodeProposalRateLimited = "proposal_rate_limited"

// CodeAuditBudgetExhausted refuses a proposal or an envelope of an identity whose actions already wrote the
// audit bytes one identity may cause in a UTC day (HTTP 429, with a Retry-After header giving the seconds until
// the day ends).
const CodeAuditBudgetExhausted = "audit_budget_exhausted"

// CodeSessionPurged answers a session that ended and was removed from the session table after the controller's
// retention (HTTP 404); its history stays in the audit trail (PathAuditSession).
const CodeSessionPurged = "session_purged"

// Paths for gateways: they record into the shared audit stream and look callers up.
const (
	PathAuditRecords   = "/v1/audit/records"
	PathIdentityLookup = "/v1/identities/lookup"
	// GatewayKind is the identity kind whose holders may append audit records and look identities up.
	GatewayKind = "gateway"
)

// An audit record a gateway appends may be sent again when the gateway cannot tell whether the first try was
// stored (the overlay connection broke before the answer). A try carries HeaderRecordID, the same on every try
// of one record and different for every record, and every try after the first carries HeaderRecordAge, the
// milliseconds since the first try began. The controller stores the record once per gateway and record ID and
// answers a repeat with the record stored first, for tries up to AuditRetryWindow after the first; a later try
// is refused (409 CodeRetryTooLate), since the store no longer remembers the ID for certain then.
//
// Every try also carries HeaderRecordFirst, the time of the first try by the gateway's clock: a try that reaches
// the controller more than AuditRetryWindow plus AuditClockSkew after it (held up on the way, say in a paused
// controller's buffers) is refused too, so that no try is stored long after the gateway stopped waiting for it.
const (
	HeaderRecordID    = "Umbra-Record-Id"    // 1-64 characters of [A-Za-z0-9_-]
	HeaderRecordAge   = "Umbra-Record-Age"   // decimal milliseconds
	HeaderRecordFirst = "Umbra-Record-First" // decimal Unix milliseconds
	// AuditClockSkew is how far a gateway's clock and the controller's may differ for HeaderRecordFirst.
	AuditClockSkew = 2 * time.Minute
	// AuditRetryWindow is how long after its first try a record may be sent again.
	AuditRetryWindow = 10 * time.Second
	// CodeRetryTooLate refuses a record sent again later than AuditRetryWindow after its first try: whether the
	// first try was stored must be read from the audit trail (PathAuditRecordFind).
	CodeRetryTooLate = "retry_too_late"
)

// A gateway that kept a record whose try may have been stored, and can no longer send it again (it restarted
// after AuditRetryWindow), asks whether it was stored: POST PathAuditRecordFind with AuditRecordFind, the record
// ID and the time of the first try of it that may have been stored (HeaderRecordFirst). The controller reads the
// trail for the record stored under that ID around then. Its answer is certain from AuditFindAfter after that
// time on, since the controller stores a try only when it arrives within AuditRetryWindow of the first (by
// HeaderRecordAge, and by HeaderRecordFirst give or take AuditClockSkew) and within AuditStoreWithin of its
// arrival; asked earlier, it answers 409 CodeAskLater. When the trail no longer holds records from then
// (archived), it answers 409 CodeRetryTooLate. Not found, the record was never stored: the gateway sends it
// again, as a new try.
const (
	PathAuditRecordFind = "/v1/audit/records/find"
	// AuditStoreWithin bounds how long after a try arrives the controller may still store it.
	AuditStoreWithin = 30 * time.Second
	// AuditFindAfter is how long after a record's first try whether it was stored can be told for certain: past
	// AuditRetryWindow, AuditClockSkew and AuditStoreWithin.
	AuditFindAfter = 3 * time.Minute
	// CodeAskLater answers a question that can be answered later, not yet (PathAuditRecordFind).
	CodeAskLater = "ask_later"
)

// AuditRecordFind asks whether a record a gateway sent under ID, first tried at FirstUnixMS (HeaderRecordFirst),
// was stored.
type AuditRecordFind struct {
	ID          string `json:"id"`
	FirstUnixMS int64  `json:"first_unix_ms"`
}

// AuditRecordFound answers AuditRecordFind: the record stored under the ID, if one was.
type AuditRecordFound struct {
	Found bool   `json:"found"`
	Seq   uint64 `json:"seq,omitempty"`
	Hash  string `json:"hash,omitempty"`
}

// LookupRequest asks what the controller knows of an identity.
type LookupRequest struct {
	SPIFFEID string `json:"spiffe_id"`
}

// IdentityInfo is what a gateway learns of a caller: its organisation, kind, rights and active workgroups.
type IdentityInfo struct {
	SPIFFEID   string   `json:"spiffe_id"`
	Org        string   `json:"org"`
	Kind       string   `json:"kind"`
	Name       string   `json:"name"`
	Admin      bool     `json:"admin"`
	Revoked    bool     `json:"revoked"`
	Suspended  bool     `json:"suspended,omitempty"`
	Workgroups []string `json:"workgroups"`
}

// PathRevocations is the revocation feed: GET ?epoch=<epoch>&after=<revision>[&wait=<duration>] answers the certificates
// revoked since revision, waiting up to wait (at most 20s) for one if there is none yet.
const PathRevocations = "/v1/revocations"

// RevocationFeed is one answer of the revocation feed. Certificates are named by serial number only: the feed
// tells a host which certificates to refuse, not whose they were.
type RevocationFeed struct {
	// Epoch names this run of the feed; a revision counts within one epoch. Ask again with epoch=Epoch and
	// after=Revision; with another epoch the feed starts over from the beginning.
	Epoch    string        `json:"epoch"`
	Revision int           `json:"revision"`
	Revoked  []RevokedCert `json:"revoked"`
	// Suspended are certificates of identities suspended since revision, to refuse until they are resumed;
	// Resumed are serials to accept again. A serial is in at most one of them: its state as of Revision.
	Suspended []RevokedCert `json:"suspended,omitempty"`
	Resumed   []string      `json:"resumed,omitempty"`
}

// RevokedCert is an unexpired certificate of a revoked identity.
type RevokedCert struct {
	Serial   string    `json:"serial"` // lowercase hex, no leading zeros
	NotAfter time.Time `json:"not_after"`
}

// PathSessionEvents is the session event feed: GET ?epoch=<epoch>&after=<cursor>[&wait=<duration>] answers the
// changes since cursor of the sessions in which the caller is consumer or provider, waiting up to wait (at most
// 20s) for one if there is none yet. A controller without the feed answers 404.
const PathSessionEvents = "/v1/sessions/events"

// CodeTooManyFeeds refuses a session event feed beyond the few one identity may follow at once (HTTP 429):
// close an agent (or a Serve, OnProposal or SessionEvents loop) of this identity that no longer needs one.
const CodeTooManyFeeds = "too_many_feeds"

// SessionEvents is one answer of the session event feed.
type SessionEvents struct {
	// Epoch names the session store the cursors count in; ask again with epoch=Epoch and after=Cursor.
	Epoch string `json:"epoch"`
	// Cursor is where the next request continues from.
	Cursor uint64 `json:"cursor"`
	// Resync says the feed cannot tell what changed since the cursor asked for (a first request, another
	// store, or changes too old to be kept): list the sessions once, then follow on from Cursor.
	Resync bool           `json:"resync,omitempty"`
	Events []SessionEvent `json:"events"`
}

// SessionEvent is a session of the caller's as it was after a change: proposed, held, accepted, activated,
// closed or rejected. Several changes of one session in quick succession may arrive as its latest state only.
type SessionEvent struct {
	// Cursor is the event's place in the feed.
	Cursor uint64 `json:"cursor"`
	// Resync, set only by the SDK (agentsdk.Agent.SessionEvents) and with no Session, says that changes may
	// have been missed: list the sessions once.
	Resync  bool               `json:"resync,omitempty"`
	Session workgroups.Session `json:"session,omitzero"`
}
