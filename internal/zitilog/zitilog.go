// Package zitilog routes OpenZiti's logrus/pfxlog output into a *slog.Logger.
//
// OpenZiti's controller, router and SDK all log through the process-wide logrus logger. Route replaces that
// logger's output and hooks so that nothing reaches stderr directly: every entry at or above the chosen level
// becomes an slog record on the given logger, with logrus fields as attributes. The entries that OpenZiti emits at
// warn or error during normal operation (third-party CA logins, payloads in flight when a circuit closes, periodic
// forwarding-fault reports, ...) are logged at debug or info instead, by a small table of known messages, each
// with the reason it is benign; any other warning or error keeps its level, so what an operator can act on shows.
//
// No credential reaches the logger: OpenZiti puts session tokens (JWTs, or opaque strings that are bearer
// credentials all the same) into messages and fields at every level. Route passes each message and field value
// through Redact, and replaces outright the value of every field named for a token.
package zitilog

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
)

// Redacted stands in for a credential in a log record.
const Redacted = "[REDACTED]"

// secretPattern matches the credentials that turn up inside text: JWTs (three base64url segments, the first a
// JSON object, so "eyJ"; the signature may be empty), Umbra's workload and router enrollment tokens ("uet1." and
// two segments, "urt1." and one), and the credential after "Bearer".
var secretPattern = regexp.MustCompile(`eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*|uet1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|urt1\.[A-Za-z0-9_-]+|(?i:\bbearer)\s+[A-Za-z0-9._~+/=-]+`)

// Redact replaces every JWT, Umbra enrollment token and bearer credential in s with Redacted.
func Redact(s string) string {
	if !strings.Contains(s, "eyJ") && !strings.Contains(s, "uet1.") && !strings.Contains(s, "urt1.") && !containsBearer(s) {
		return s
	}
	return secretPattern.ReplaceAllStringFunc(s, func(m string) string {
		if len(m) > len("bearer") && strings.EqualFold(m[:len("bearer")], "bearer") {
			return m[:len("bearer")] + " " + Redacted
		}
		return Redacted
	})
}

// containsBearer reports whether s holds "bearer" in any case, without the cost of the regular expression.
func containsBearer(s string) bool {
	for i := strings.IndexAny(s, "bB"); i >= 0 && i+len("bearer") <= len(s); {
		if strings.EqualFold(s[i:i+len("bearer")], "bearer") {
			return true
		}
		j := strings.IndexAny(s[i+1:], "bB")
		if j < 0 {
			return false
		}
		i += 1 + j
	}
	return false
}

// secretKey reports whether a field's name says its value is a credential: OpenZiti names its session tokens
// "token", "sessionToken", "apiSessionToken" and so on, while the safe identifiers it logs next to them end in
// "Id" ("tokenId").
func secretKey(key string) bool {
	k := strings.ToLower(key)
	switch k {
	case "authorization", "zt-session", "password", "secret", "jwt":
		return true
	}
	return strings.HasSuffix(k, "token") || strings.HasSuffix(k, "jwt")
}

// redactAttr turns a logrus field into an attribute that carries no credential. Nested fields become groups;
// anything but a plain number, bool, time or duration is rendered to text first, since a struct or an error can
// hold a token inside, and the text is redacted.
func redactAttr(key string, v any) slog.Attr {
	if m, ok := v.(logrus.Fields); ok {
		v = map[string]any(m)
	}
	if m, ok := v.(map[string]any); ok {
		attrs := make([]any, 0, len(m))
		for k, x := range m {
			attrs = append(attrs, redactAttr(k, x))
		}
		return slog.Group(key, attrs...)
	}
	if secretKey(key) && v != nil {
		return slog.String(key, Redacted)
	}
	switch x := v.(type) {
	case nil, bool, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, float32, float64,
		time.Duration, time.Time:
		return slog.Any(key, x)
	case string:
		return slog.String(key, Redact(x))
	case []byte:
		return slog.String(key, Redact(string(x)))
	case error, fmt.Stringer:
		// fmt recovers from a nil receiver's panic.
		return slog.String(key, Redact(fmt.Sprint(x)))
	default:
		return slog.String(key, Redact(fmt.Sprintf("%+v", x)))
	}
}

// A known entry is one OpenZiti logs above debug in a healthy network, with nothing in it for an operator to act
// on. Route logs it at level instead of OpenZiti's own; every other entry keeps OpenZiti's level, so a warning or
// an error nobody has classified still shows.
type known struct {
	// msg is a fragment of the message (or, with err empty, of the message and its error joined by a space).
	msg string
	// err, if set, is a fragment the entry's error must hold as well: the same message with another cause is
	// not routine.
	err string
	// level is the level the entry is logged at.
	level slog.Level
}

// routine is the table of known entries. Each says why it is benign; add one only with a reason that holds in
// every deployment.
var routine = []known{
	// A workload presenting an SVID is first checked against OpenZiti's own CA, then against the SPIFFE CA
	// registered as a third-party CA: the first check fails for every workload login.
	{msg: "error verifying client certificate via static root pool", level: slog.LevelDebug},
	{msg: "static trust anchor pool", level: slog.LevelDebug},
	// A circuit closed by one end while the other still had payloads in flight: those payloads have no reader.
	{msg: "closing while buffer contains unacked payloads", level: slog.LevelDebug},
	{msg: "payload buffer closed", level: slog.LevelDebug},
	{msg: "failure to buffer payload", err: "write closed", level: slog.LevelDebug},
	// A message for a circuit whose edge side has just closed ("failed to dispatch to fabric"): its queue,
	// OpenZiti's "sequencer", is gone, and so is whoever would read the message.
	{msg: "sequencer closed", level: slog.LevelDebug},
	// Answers, results and fault reports for a control or edge channel that closed meanwhile: the peer went away
	// or reconnected, and whatever it asked for is asked again or no longer wanted.
	{msg: "failed to send result", err: "channel closed", level: slog.LevelDebug},
	{msg: "error sending fault", err: "channel closed", level: slog.LevelDebug},
	// A router reports its network interfaces periodically; one report lost to a closing control channel is sent
	// again by the next (the router keeps the interfaces as unreported until one succeeds).
	{msg: "failed to send update router interfaces request to controller", err: "channel closed", level: slog.LevelInfo},
	// A heartbeat on a control channel whose controller is gone (it died, or restarts; in a cluster the router
	// works on through the others): one a second until the channel is back. The reconnection attempts report
	// the outage as errors of their own ("reconnection attempt [#N] failed").
	{msg: "pulse failed to send heartbeat", err: "timeout waiting to put message in send queue", level: slog.LevelInfo},
	// A workload that closed its connection to a router while the router was still writing to it (an agent
	// closing, or exiting): the router notices by a reset connection and cleans up. A reset on a control channel
	// or a router link is followed by a reconnection, whose failure is an error of its own.
	{msg: "write error", err: "connection reset by peer", level: slog.LevelInfo},
	{msg: "write error", err: "broken pipe", level: slog.LevelInfo},
	{msg: "unable to send close msg to edge client", err: "connection reset by peer", level: slog.LevelDebug},
	{msg: "unable to send close msg to edge client", err: "broken pipe", level: slog.LevelDebug},
	// A payload for a workload whose edge channel closed while the circuit still carried data to it (the
	// hosting or dialing workload closed its connection, or left): the router closes its side of the circuit,
	// which is what the close asked for. The same write failing for another reason keeps its level.
	{msg: "write failed (channel closed), closing xgress", level: slog.LevelDebug},
	// The same close for a workload whose edge channel the router had already closed (the workload closed it
	// first, or left): there is nobody left to tell.
	{msg: "unable to send close msg to edge client", err: "channel closed", level: slog.LevelDebug},
	// A dial with a service session the controller has since replaced or dropped (a policy change, a new API
	// session, a revocation): the controller refuses the circuit, the router passes the refusal on, and the
	// workload's SDK authenticates afresh and dials again (agentsdk's isSessionLost). A workload that stays
	// refused sees the error itself.
	{msg: "invalid session", err: "invalid session", level: slog.LevelInfo},
	{msg: "responded with error", err: "invalid session", level: slog.LevelInfo},
	{msg: "failed to dial fabric", err: "invalid session", level: slog.LevelInfo},
	// A router's control channel closed by the other end: the controller restarting, or this router stopping
	// (its close races with the controller's). The router reconnects on its own; a failure to reconnect is
	// logged as an error of its own ("unable to connect controller").
	{msg: "rx error. closed peer and starting reconnection process", err: "EOF", level: slog.LevelInfo},
	// A router tells the controller about circuits it no longer forwards (every 15 s while there are any): that
	// is how circuits closed at one end are removed everywhere else.
	{msg: "reported forwarding faults", level: slog.LevelInfo},
	// A hosted service's terminator that the SDK side removed while the router was deleting it: the controller
	// has deleted it, which is all that was wanted.
	{msg: "terminator was replaced after being put into deleting state", level: slog.LevelDebug},
	// The controller's answer to a terminator create for a bind its host ended meanwhile (a listener closed, or
	// closed by agentsdk because the overlay kept ending its binds): the router holds no terminator for it any
	// more. Kept at info: one the controller made meanwhile is checked against the router when it next connects.
	{msg: "no terminator found for id", level: slog.LevelInfo},
	// A bind with a service session of an API session that ended (the SDK authenticated again after a
	// suspension was lifted, say): the router refuses it, the SDK logs the refusal three times and binds again,
	// and agentsdk stops that after a few turns and hosts the service in a new overlay session.
	{msg: "does not match service session api session id", level: slog.LevelInfo},
	// A listener bound to a wildcard address (0.0.0.0 or ::, as in containers) has no single network interface;
	// OpenZiti wants one only to label link metrics.
	{msg: "unable to get interface for address", err: "no network interface found for 0.0.0.0", level: slog.LevelDebug},
	{msg: "unable to get interface for address", err: "no network interface found for ::", level: slog.LevelDebug},
	// The management listener (127.0.0.1, this process only) serves two APIs and OpenZiti lets none be marked
	// the default for unknown paths; it picks the last, which is fine.
	{msg: "no default handlers were found", level: slog.LevelDebug},
	// Connections and listeners closed while the process or a component stops.
	{msg: "use of closed network connection", level: slog.LevelDebug},
	{msg: "database not open", level: slog.LevelDebug},
	{msg: "has been shutdown", level: slog.LevelDebug},
	{msg: "error accepting", level: slog.LevelDebug},
	// A client that dropped its TLS connection half-way (a port probe, a dial given up): the client sees its own
	// error.
	{msg: "handshake failed", level: slog.LevelDebug},
	// OpenZiti's embedded store, used as Umbra configures it.
	{msg: "store doesn't implement the NamedIndexStore", level: slog.LevelDebug},
	// A dial of a service nobody hosts right now, or before any router is up: the dialing workload gets the
	// error and decides.
	{msg: "has no terminators", level: slog.LevelDebug},
	{msg: "NO_EDGE_ROUTERS_AVAILABLE", level: slog.LevelDebug},
	// A create of an entity whose name another create took first, in a cluster: two members creating the same
	// shared policy at once, or a create made again after an unanswered try that was applied late. Every member's
	// raft apply refuses the second create and its requester is answered that the name is taken (Umbra's
	// controller then looks the entity up, or knows it made it). An entry refused on apply for another cause
	// keeps its level.
	{msg: "applying log resulted in error", err: "name must be unique", level: slog.LevelInfo},
	// A dial or bind on an overlay context that is closing (a command stopping after an error, an agent moving
	// to a new overlay session): the SDK's connection multiplexer is closed, and the caller gets the error.
	{msg: "mux is closed", level: slog.LevelDebug},
}

// shutdown lists whole messages OpenZiti logs above debug while stopping normally. "channel closed" is the SDK's
// dial whose router channel closed under it (the context closing, or the router gone): the dialer gets the same
// error and decides.
var shutdown = map[string]bool{"exited": true, "exiting": true, "disconnected": true, "channel closed": true}

// Route sends the process-wide logrus output to logger from level on. It replaces earlier routes: OpenZiti's
// logger is process-wide, so the last caller wins.
func Route(logger *slog.Logger, level slog.Level) {
	std := logrus.StandardLogger()
	std.SetOutput(io.Discard)
	std.SetLevel(toLogrus(level))
	hooks := make(logrus.LevelHooks)
	hooks.Add(&hook{logger: logger, min: level})
	std.ReplaceHooks(hooks)
}

// Routed reports whether the process-wide logrus output is already routed by Route. A library that logs through
// OpenZiti on its host's behalf (the agent SDK) routes only when its host has not, so that it never overrides the
// host's logger or level.
func Routed() bool {
	for _, h := range logrus.StandardLogger().Hooks[logrus.ErrorLevel] {
		if _, ok := h.(*hook); ok {
			return true
		}
	}
	return false
}

type hook struct {
	logger *slog.Logger
	min    slog.Level
}

func (h *hook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *hook) Fire(e *logrus.Entry) error {
	level := classify(e)
	if level < h.min {
		return nil
	}
	ctx := e.Context
	if ctx == nil {
		ctx = context.Background()
	}
	if !h.logger.Enabled(ctx, level) {
		return nil
	}
	attrs := make([]slog.Attr, 0, len(e.Data)+1)
	attrs = append(attrs, slog.String("source", "openziti"))
	for k, v := range e.Data {
		attrs = append(attrs, redactAttr(k, v))
	}
	h.logger.LogAttrs(ctx, level, Redact(e.Message), attrs...)
	return nil
}

// classify is the level an entry is logged at: OpenZiti's own, or lower for a known routine entry.
func classify(e *logrus.Entry) slog.Level {
	level := fromLogrus(e.Level)
	if level <= slog.LevelDebug {
		return level
	}
	if shutdown[e.Message] {
		return slog.LevelDebug
	}
	var cause string
	if v, ok := e.Data[logrus.ErrorKey]; ok && v != nil {
		cause = fmt.Sprint(v)
	}
	text := e.Message + " " + cause
	for _, k := range routine {
		var match bool
		if k.err == "" {
			match = strings.Contains(text, k.msg)
		} else {
			match = strings.Contains(e.Message, k.msg) && strings.Contains(cause, k.err)
		}
		if match {
			return min(level, k.level)
		}
	}
	return level
}

func fromLogrus(l logrus.Level) slog.Level {
	switch l {
	case logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel:
		return slog.LevelError
	case logrus.WarnLevel:
		return slog.LevelWarn
	case logrus.InfoLevel:
		return slog.LevelInfo
	default:
		return slog.LevelDebug
	}
}

func toLogrus(l slog.Level) logrus.Level {
	switch {
	case l >= slog.LevelError:
		return logrus.ErrorLevel
	case l >= slog.LevelWarn:
		return logrus.WarnLevel
	case l >= slog.LevelInfo:
		return logrus.InfoLevel
	default:
		return logrus.TraceLevel
	}
}
