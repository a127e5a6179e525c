package sse

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestReader(t *testing.T) {
	in := ": keep-alive\r\n\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\n" +
		"data: line one\ndata: line two\n\n" +
		"event: ignored-without-data\n\n" +
		"id: 7\nretry: 10\ndata:no-space\n\n" +
		"data: [DONE]"
	r := NewReader(strings.NewReader(in))
	want := []Event{{"message_start", []byte(`{"a":1}`)}, {"", []byte("line one\nline two")}, {"", []byte("no-space")}, {"", []byte("[DONE]")}}
	for i, w := range want {
		ev, err := r.Next()
		if err != nil || ev.Name != w.Name || string(ev.Data) != string(w.Data) {
			t.Fatalf("event %d: %+v %v, want %+v", i, ev, err, w)
		}
	}
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("end: %v", err)
	}
}

func TestReaderBrokenStream(t *testing.T) {
	r := NewReader(strings.NewReader("event: content_block_delta\n"))
	if _, err := r.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("stream cut inside an event: %v", err)
	}
	r = NewReader(strings.NewReader("data: " + strings.Repeat("x", MaxEventBytes+1) + "\n\n"))
	if _, err := r.Next(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge event: %v", err)
	}
}

func TestWriter(t *testing.T) {
	rec := httptest.NewRecorder()
	w := NewWriter(rec)
	if w.Started() {
		t.Error("started before writing")
	}
	if err := w.Write("ping", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := w.Write("", []byte("[DONE]")); err != nil {
		t.Fatal(err)
	}
	if err := w.Write("", []byte("two\nlines")); err == nil {
		t.Error("a line break in data was written")
	}
	if got := rec.Body.String(); got != "event: ping\ndata: {}\n\ndata: [DONE]\n\n" || rec.Header().Get("Content-Type") != "text/event-stream" || !rec.Flushed {
		t.Errorf("wrote %q", got)
	}
}
