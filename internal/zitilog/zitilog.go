// Package zitilog routes OpenZiti's logrus/pfxlog output into a *slog.Logger.
//
// OpenZiti's controller, router and SDK all log through the process-wide logrus logger. Route replaces that
// logger's output and hooks so that nothing reaches stderr directly: every entry at or above the chosen level
// becomes an slog record on the given logger, with logrus fields as attributes. A few entries that OpenZiti emits
// at warn or error during normal operation (third-party CA logins, buffered payloads on close) are demoted to debug.
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

// routine lists message fragments that OpenZiti logs above debug during normal operation.
var routine = []string{
	"error verifying client certificate via static root pool",
	"closing while buffer contains unacked payloads",
	"payload buffer closed",
	"use of closed network connection",
	"database not open",
	"handshake failed",
	"static trust anchor pool",
	"store doesn't implement the NamedIndexStore",
	"has been shutdown",
	"error accepting",
	"has no terminators",
	"NO_EDGE_ROUTERS_AVAILABLE",
}

// shutdown lists messages OpenZiti logs above debug while stopping normally.
var shutdown = map[string]bool{"exited": true, "exiting": true, "disconnected": true}

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

type hook struct {
	logger *slog.Logger
	min    slog.Level
}

func (h *hook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *hook) Fire(e *logrus.Entry) error {
	level := fromLogrus(e.Level)
	if level > slog.LevelDebug && isRoutine(e) {
		level = slog.LevelDebug
	}
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

func isRoutine(e *logrus.Entry) bool {
	text := e.Message
	if err, ok := e.Data[logrus.ErrorKey].(error); ok {
		text += " " + err.Error()
	}
	if shutdown[e.Message] {
		return true
	}
	for _, r := range routine {
		if strings.Contains(text, r) {
			return true
		}
	}
	return false
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
