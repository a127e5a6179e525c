package a2a

import (
	"bytes"
	"net/http"
)

// recorder is a minimal http.ResponseWriter.
type recorder struct {
	h http.Header
	b bytes.Buffer
}

func (r *recorder) Header() http.Header {
	if r.h == nil {
		r.h = http.Header{}
	}
	return r.h
}
func (r *recorder) Write(b []byte) (int, error) { return r.b.Write(b) }
func (r *recorder) WriteHeader(int)             {}
