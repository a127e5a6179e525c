package zitictrl

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// TestRaftLoggerWritesIntoSlog: the raft library's records reach the controller's logger as records of their
// level with their fields, below the logger's level they are not written at all, and a token in one is redacted.
func TestRaftLoggerWritesIntoSlog(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn}))
	l := raftLogger(log)
	if !l.IsWarn() || l.IsInfo() {
		t.Fatalf("level: warn %v, info %v; want warn and not info", l.IsWarn(), l.IsInfo())
	}
	l.Info("entering follower state", "follower", "c2")
	l.Warn("heartbeat timeout reached, starting election", "last-leader-addr", "tls:127.0.0.1:6262", "term", 4)
	l.Named("snapshot").Error("failed to contact", "server-id", "c3", "token", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig")

	var recs []map[string]any
	for line := range strings.Lines(out.String()) {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		recs = append(recs, r)
	}
	if len(recs) != 2 {
		t.Fatalf("%d records, want the warning and the error: %s", len(recs), out.String())
	}
	if r := recs[0]; r["level"] != "WARN" || r["msg"] != "heartbeat timeout reached, starting election" || r["component"] != "raft" ||
		r["last-leader-addr"] != "tls:127.0.0.1:6262" || r["term"] != "4" {
		t.Fatalf("the warning: %v", r)
	}
	if r := recs[1]; r["level"] != "ERROR" || r["component"] != "raft.snapshot" || r["server-id"] != "c3" || r["token"] != "[REDACTED]" {
		t.Fatalf("the error: %v", r)
	}
}
