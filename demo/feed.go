package demo

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Feed is the live, human-readable account of the demo: one line per event, stamped with the time and the
// workload that acted. It is safe for concurrent use.
type Feed struct {
	mu sync.Mutex
	w  io.Writer
}

// NewFeed writes to w (nil discards).
func NewFeed(w io.Writer) *Feed {
	if w == nil {
		w = io.Discard
	}
	return &Feed{w: w}
}

// Event writes one line: time, who, what.
func (f *Feed) Event(who, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	f.mu.Lock()
	defer f.mu.Unlock()
	fmt.Fprintf(f.w, "%s  %-22s %s\n", time.Now().Format("15:04:05.000"), who, msg)
}

// Section writes a heading.
func (f *Feed) Section(title string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fmt.Fprintf(f.w, "\n== %s\n", title)
}

// Text writes lines as they are.
func (f *Feed) Text(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if !strings.HasSuffix(msg, "\n") {
		msg += "\n"
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fmt.Fprint(f.w, msg)
}

// short abbreviates an ID for the feed; the audit trail has it in full.
func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Write writes p as it is, so that a Feed can be an io.Writer.
func (f *Feed) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.w.Write(p)
}
