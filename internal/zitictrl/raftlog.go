package zitictrl

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/umbra-mesh/umbra/internal/zitilog"
)

// The overlay's raft library (hashicorp/raft) logs through hclog, and OpenZiti gives it a logrus logger of its own
// that writes to stderr at info level, past the routing of zitilog: a cluster member printed every election and
// heartbeat to the user's terminal. raftLogger gives it one that writes into the controller's slog logger instead,
// at the levels that logger enables.

// raftLogger is an hclog logger whose records become records of log: its level is the lowest log enables, so
// nothing is formatted only to be dropped.
func raftLogger(log *slog.Logger) hclog.Logger {
	level := hclog.Off
	for _, l := range []struct {
		slog  slog.Level
		hclog hclog.Level
	}{{slog.LevelError, hclog.Error}, {slog.LevelWarn, hclog.Warn}, {slog.LevelInfo, hclog.Info}, {slog.LevelDebug, hclog.Debug}} {
		if log.Enabled(context.Background(), l.slog) {
			level = l.hclog
		}
	}
	return hclog.New(&hclog.LoggerOptions{Name: "raft", Level: level, JSONFormat: true, Output: &raftLogWriter{log: log},
		DisableTime: true})
}

// raftLogWriter turns the JSON lines of an hclog logger into slog records.
type raftLogWriter struct {
	log *slog.Logger
}

func (w *raftLogWriter) Write(p []byte) (int, error) {
	for line := range bytes.Lines(p) {
		w.line(bytes.TrimSpace(line))
	}
	return len(p), nil
}

// line logs one JSON line: "@message" is the message, "@level" the level, "@module" the logger's name, and every
// other key an attribute (the credentials zitilog knows redacted, as in OpenZiti's own lines).
func (w *raftLogWriter) line(line []byte) {
	if len(line) == 0 {
		return
	}
	var vals map[string]any
	if err := json.Unmarshal(line, &vals); err != nil {
		w.log.Warn(zitilog.Redact(string(line)), "component", "raft")
		return
	}
	level := slog.LevelInfo
	switch vals["@level"] {
	case "trace", "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	msg, _ := vals["@message"].(string)
	module, _ := vals["@module"].(string)
	attrs := []any{"component", cmp.Or(module, "raft")}
	keys := make([]string, 0, len(vals))
	for k := range vals {
		if !strings.HasPrefix(k, "@") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		attrs = append(attrs, k, zitilog.Redact(fmt.Sprint(vals[k])))
	}
	w.log.Log(context.Background(), level, zitilog.Redact(msg), attrs...)
}
