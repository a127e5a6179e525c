package natsd

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// serverLog hands the embedded server's log lines to an slog.Logger: its notices (the start-up banner, routes
// and JetStream coming up) at debug, its warnings and errors (a route or client whose TLS handshake failed, a
// JetStream cluster without a leader, a store it cannot write) at their own levels, except the few lines a
// healthy cluster logs as it starts and stops (warnLevel, errorLevel). Its debug and trace lines are not asked
// for. A fatal line is logged as an error: the server's own logger would end the process, and here the process
// is not the server's. Its lines are not passed through zitilog.Redact: the server is given no credential it
// could log (routes and clients authenticate by certificate, the system account's password is held hashed).
type serverLog struct {
	log     *slog.Logger
	started time.Time
}

func (l serverLog) Noticef(format string, v ...any) { l.emit(slog.LevelDebug, format, v) }
func (l serverLog) Warnf(format string, v ...any)   { l.emit(l.warnLevel(format, v), format, v) }
func (l serverLog) Errorf(format string, v ...any)  { l.emit(errorLevel(format, v), format, v) }
func (l serverLog) Fatalf(format string, v ...any)  { l.emit(slog.LevelError, format, v) }
func (l serverLog) Debugf(format string, v ...any)  { l.emit(slog.LevelDebug, format, v) }
func (l serverLog) Tracef(format string, v ...any)  { l.emit(slog.LevelDebug-4, format, v) }

func (l serverLog) emit(level slog.Level, format string, v []any) {
	ctx := context.Background()
	if !l.log.Enabled(ctx, level) {
		return
	}
	l.log.LogAttrs(ctx, level, fmt.Sprintf(format, v...))
}

// startGrace is how long after its start a clustered server's warnings that it has no routes or no JetStream
// meta leader yet are routine: the members of a cluster come up one after another. Later they are warnings.
const startGrace = time.Minute

// A routineWarning is a warning the server logs in a healthy deployment; it is logged at info.
type routineWarning struct {
	// fragment is a part of the message.
	fragment string
	// atStart limits it to startGrace after the server's start.
	atStart bool
}

// routineWarnings, each with the reason it is routine.
var routineWarnings = []routineWarning{
	// A cluster forming: the server's raft groups wait for routes, and its first health check runs before the
	// meta leader's election.
	{fragment: "Waiting for routing to be established", atStart: true},
	{fragment: "JetStream has not established contact with a meta leader", atStart: true},
	// The meta layer's snapshot, which the server takes when it stops (and when the layer's log grows).
	{fragment: "Metalayer blocking snapshot"},
	// A raft group started while the server stops, after its system account is gone.
	{fragment: "Error subscribing to forwarded proposals: system account not setup"},
}

// warnLevel is the level of the server's warning: info for a routine one, warn otherwise.
func (l serverLog) warnLevel(format string, v []any) slog.Level {
	msg := format
	if len(v) > 0 {
		msg = fmt.Sprintf(format, v...)
	}
	for _, w := range routineWarnings {
		if strings.Contains(msg, w.fragment) && (!w.atStart || time.Since(l.started) < startGrace) {
			return slog.LevelInfo
		}
	}
	return slog.LevelWarn
}

// routeConnectFailed is the server's line for a route it could not dial. It logs the first failed attempt of each
// route as an error, then one an hour, while it keeps trying every second.
const routeConnectFailed = "Error trying to connect to route"

// flushFailed is the server's line for a write to a route, gateway or leaf connection that failed; the server
// then closes the connection. A write to a peer that closed its end fails "broken pipe" or "connection reset by
// peer": that peer stopped or restarted, and the server dials the route again.
const flushFailed = "Error flushing: "

// peerClosed are the endings of a write to a connection its peer closed.
var peerClosed = []string{"broken pipe", "connection reset by peer"}

// errorLevel is the level of the server's error line of that format and those values: info for a route it could
// not dial, which is how every cluster starts (its members come up one after another) and how a member that is
// down shows, and which the server keeps trying; info for a write to a peer that closed the connection (a member
// stopping); error for the rest. A member that stays down shows in `umbra cluster status`.
func errorLevel(format string, v []any) slog.Level {
	if strings.HasPrefix(format, routeConnectFailed) {
		return slog.LevelInfo
	}
	if strings.Contains(format, flushFailed) {
		msg := fmt.Sprintf(format, v...)
		for _, ending := range peerClosed {
			if strings.HasSuffix(msg, ending) {
				return slog.LevelInfo
			}
		}
	}
	return slog.LevelError
}
