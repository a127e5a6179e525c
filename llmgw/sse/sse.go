// Package sse reads and writes server-sent events, the framing that OpenAI and Anthropic use for streamed responses.
package sse

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// MaxEventBytes bounds one event (all its data lines together).
const MaxEventBytes = 4 << 20

// ErrTooLarge reports an event longer than MaxEventBytes.
var ErrTooLarge = errors.New("sse: event too large")

// Event is one server-sent event.
type Event struct {
	Name string // the "event:" field; "" when absent
	Data []byte // the "data:" lines joined by "\n"
}

// Reader reads events from a stream.
type Reader struct {
	r *bufio.Reader
}

// NewReader returns a Reader reading from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 64<<10)}
}

// Next returns the next event with data. It returns io.EOF at a clean end of stream and
// io.ErrUnexpectedEOF when the stream ends inside an event.
func (s *Reader) Next() (Event, error) {
	var ev Event
	var data bytes.Buffer
	started, hasData := false, false
	for {
		line, err := s.readLine()
		if err != nil {
			if errors.Is(err, io.EOF) {
				if hasData {
					// A final event without its blank line: servers that close right after writing it
					// still meant it.
					ev.Data = data.Bytes()
					return ev, nil
				}
				if started {
					return Event{}, io.ErrUnexpectedEOF
				}
				return Event{}, io.EOF
			}
			return Event{}, err
		}
		if len(line) == 0 {
			if hasData {
				ev.Data = data.Bytes()
				return ev, nil
			}
			ev, started = Event{}, false
			continue
		}
		if line[0] == ':' {
			continue // comment, used as keep-alive
		}
		started = true
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			ev.Name = string(value)
		case "data":
			if data.Len()+len(value) > MaxEventBytes {
				return Event{}, ErrTooLarge
			}
			if hasData {
				data.WriteByte('\n')
			}
			data.Write(value)
			hasData = true
		}
	}
}

// readLine returns one line without its terminator (\n, \r\n or \r).
func (s *Reader) readLine() ([]byte, error) {
	var line []byte
	for {
		frag, err := s.r.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > MaxEventBytes {
			return nil, ErrTooLarge
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) && len(line) > 0 {
			break
		}
		return nil, err
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	return line, nil
}

// Writer writes events to an HTTP response, flushing after each one.
type Writer struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool
}

// NewWriter returns a Writer on w. Headers are sent with the first event.
func NewWriter(w http.ResponseWriter) *Writer {
	return &Writer{w: w, rc: http.NewResponseController(w)}
}

// Started reports whether the response headers have been sent.
func (s *Writer) Started() bool { return s.started }

// Start sends the response headers for an event stream.
func (s *Writer) Start() {
	if s.started {
		return
	}
	s.started = true
	h := s.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	s.w.WriteHeader(http.StatusOK)
}

// Write sends one event. A name of "" leaves out the event field. Data must not contain newlines
// (compact JSON never does).
func (s *Writer) Write(name string, data []byte) error {
	s.Start()
	if bytes.ContainsAny(data, "\r\n") {
		return fmt.Errorf("sse: data contains a line break")
	}
	var buf bytes.Buffer
	if name != "" {
		buf.WriteString("event: ")
		buf.WriteString(name)
		buf.WriteByte('\n')
	}
	buf.WriteString("data: ")
	buf.Write(data)
	buf.WriteString("\n\n")
	if _, err := s.w.Write(buf.Bytes()); err != nil {
		return err
	}
	if err := s.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}
