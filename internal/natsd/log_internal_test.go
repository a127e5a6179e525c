package natsd

import (
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestWarnLevel: the warnings of a cluster forming are routine only in the first minute after the server's start;
// later, and for any other warning, the level stays warn.
func TestWarnLevel(t *testing.T) {
	now, long := serverLog{started: time.Now()}, serverLog{started: time.Now().Add(-2 * startGrace)}
	for _, tc := range []struct {
		name   string
		l      serverLog
		format string
		v      []any
		want   slog.Level
	}{
		{"no meta leader at start", now, "%v", []any{"JetStream has not established contact with a meta leader"}, slog.LevelInfo},
		{"no meta leader later", long, "%v", []any{"JetStream has not established contact with a meta leader"}, slog.LevelWarn},
		{"waiting for routes at start", now, "%s", []any{"Waiting for routing to be established..."}, slog.LevelInfo},
		{"waiting for routes later", long, "%s", []any{"Waiting for routing to be established..."}, slog.LevelWarn},
		{"meta snapshot on stop", long, "Metalayer blocking snapshot took %.3fs", []any{0.004}, slog.LevelInfo},
		{"any other warning", now, "JetStream resource limits exceeded for server", nil, slog.LevelWarn},
	} {
		if got := tc.l.warnLevel(tc.format, tc.v); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

// TestErrorLevel: a route not dialable yet and a write to a peer that closed the connection (a member stopping) are
// routine; any other failed write, and any other error, stays an error.
func TestErrorLevel(t *testing.T) {
	pipe := &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.EPIPE)}
	reset := &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.ECONNRESET)}
	other := &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.ENOSPC)}
	for _, tc := range []struct {
		name   string
		format string
		v      []any
		want   slog.Level
	}{
		{"route not dialable", "Error trying to connect to route (attempt %v): %v", []any{1, "refused"}, slog.LevelInfo},
		{"peer gone, broken pipe", "127.0.0.1:29668 - rid:9 - Error flushing: %v", []any{pipe}, slog.LevelInfo},
		{"peer gone, reset", "127.0.0.1:29668 - rid:9 - Error flushing: %v", []any{reset}, slog.LevelInfo},
		{"other failed write", "127.0.0.1:29668 - rid:9 - Error flushing: %v", []any{other}, slog.LevelError},
		{"any other error", "TLS handshake error: %v", []any{pipe}, slog.LevelError},
	} {
		if got := errorLevel(tc.format, tc.v); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}
