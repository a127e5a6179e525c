// Package zitilog routes OpenZiti's logrus/pfxlog output into a *slog.Logger.
//
// OpenZiti's controller, router and SDK all log through the process-wide logrus logger. Route replaces that
// logger's output and hooks so that nothing reaches stderr directly: every entry at or above the chosen level
// becomes an slog record on the given logger, with logrus fields as attributes. A few entries that OpenZiti emits
// at warn or error during normal operation (third-party CA logins, buffered payloads on close) are demoted to debug.
package zitilog

import (
	"context"
	"io"
	"log/slog"
	"strings"

	"github.com/sirupsen/logrus"
)

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
		if err, ok := v.(error); ok {
			v = err.Error()
		}
		attrs = append(attrs, slog.Any(k, v))
	}
	h.logger.LogAttrs(ctx, level, e.Message, attrs...)
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
