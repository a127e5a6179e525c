package guard

import "unicode/utf8"

// Stream sizes.
const (
	// DefaultWindow is how much text a Stream holds back by default. A finding split across pieces is caught
	// as long as no more than this much of it arrives before it becomes recognisable.
	DefaultWindow = 256
	// maxHold bounds what a Stream holds back while a finding keeps growing (a private key with no end line).
	maxHold = 64 << 10
	// contextBytes of already emitted text are kept so that word boundaries at the start of the window read right.
	contextBytes = 32
)

// Stream scans text that arrives in pieces. It holds back the last Window bytes, and any finding that reaches
// the end of what has arrived (it may still grow), so that a finding split across pieces is caught before any
// of it is passed on. A Stream is used by one goroutine.
type Stream struct {
	s        *Scanner
	window   int
	context  string // the tail of what was emitted
	pending  string // arrived, not yet emitted
	findings []Finding
	blocked  bool
	done     int // bytes of input finalised (emitted, redacted or dropped)
}

// NewStream returns a Stream holding back window bytes (0 means DefaultWindow).
func (s *Scanner) NewStream(window int) *Stream {
	if window <= 0 {
		window = DefaultWindow
	}
	return &Stream{s: s, window: window}
}

// Findings returns everything found so far. Their offsets count bytes of the input written to the stream.
func (st *Stream) Findings() []Finding { return st.findings }

// Consumed returns how many bytes of the input written so far have been judged: everything before that offset
// has been emitted (redacted as the policy says) or dropped; the rest is held back.
func (st *Stream) Consumed() int { return st.done }

// Blocked reports whether a blocking finding was seen. A blocked stream emits nothing more.
func (st *Stream) Blocked() bool { return st.blocked }

// Write adds a piece and returns the text that may be passed on now (redacted as the policy says).
func (st *Stream) Write(piece string) string {
	if st.blocked {
		return ""
	}
	if !st.s.Enabled() {
		return piece
	}
	st.pending += piece
	if len(st.pending) > maxHold {
		return st.Flush()
	}
	full := st.context + st.pending
	off := len(st.context)
	fs := st.s.Scan(full, false)
	cut := max(len(full)-st.window, off)
	for _, f := range fs {
		if f.Start < cut && f.End > cut {
			cut = f.Start // a finding crossing the cut (one reaching the end may still grow) waits whole
		}
	}
	cut = max(cut, off)
	for cut > off && cut < len(full) && !utf8.RuneStart(full[cut]) {
		cut--
	}
	return st.emit(full, off, cut, fs)
}

// Flush passes on everything held back; call it when the text is complete.
func (st *Stream) Flush() string {
	if st.blocked || st.pending == "" {
		return ""
	}
	full := st.context + st.pending
	return st.emit(full, len(st.context), len(full), st.s.Scan(full, false))
}

// emit finalises full[off:cut] with the findings that lie inside it.
func (st *Stream) emit(full string, off, cut int, fs []Finding) string {
	var final []Finding
	for _, f := range fs {
		if f.Start >= off && f.End <= cut {
			f.Start, f.End = f.Start-off, f.End-off
			final = append(final, f)
		}
	}
	out, blocked := apply(full[off:cut], final, false)
	for _, f := range final {
		f.Start, f.End = f.Start+st.done, f.End+st.done
		st.findings = append(st.findings, f)
	}
	st.done += cut - off
	st.pending = full[cut:]
	if blocked {
		st.blocked = true
		st.pending = ""
		return ""
	}
	ctx := st.context + out
	if len(ctx) > contextBytes {
		ctx = ctx[len(ctx)-contextBytes:]
	}
	st.context = ctx
	return out
}
