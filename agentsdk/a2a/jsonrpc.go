package a2a

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// JSON-RPC error codes used when the call never reached the provider's A2A endpoint.
const (
	codeParseError     = -32700
	codeInvalidRequest = -32600
	codeMethodNotFound = -32601
	codeInternalError  = -32603
	// codeServerError is the JSON-RPC "implementation-defined server error": the contract or the network
	// refused or lost the call. The error's data says which rule.
	codeServerError = -32000
)

// maxBody bounds a JSON-RPC request or response body; the contract's max_envelope_bytes is usually smaller.
const maxBody = 4 << 20

// request is the part of a JSON-RPC request this package reads: the rest travels as sent.
type request struct {
	JSONRPC string          `json:"jsonrpc"`
	Method  string          `json:"method"`
	ID      json.RawMessage `json:"id,omitempty"`
}

func parseRequest(body []byte) (request, error) {
	var r request
	if err := json.Unmarshal(body, &r); err != nil {
		return r, fmt.Errorf("the body is not a JSON-RPC request: %w", err)
	}
	if r.JSONRPC != "2.0" || r.Method == "" {
		return r, errors.New(`the body is not a JSON-RPC 2.0 request (want "jsonrpc":"2.0" and a method)`)
	}
	return r, nil
}

// rpcError is a JSON-RPC error object.
type rpcError struct {
	Code    int            `json:"code"`
	Message string         `json:"message"`
	Data    map[string]any `json:"data,omitempty"`
}

// errorResponse encodes a JSON-RPC error response to the request with id. detail goes into data.error, which the
// a2a-go client puts in front of the error it returns.
func errorResponse(id json.RawMessage, code int, message, detail string, extra map[string]any) []byte {
	if len(id) == 0 {
		id = json.RawMessage("null")
	}
	data := map[string]any{"error": detail}
	for k, v := range extra {
		data[k] = v
	}
	b, _ := json.Marshal(struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   rpcError        `json:"error"`
	}{"2.0", id, rpcError{Code: code, Message: message, Data: data}})
	return b
}

// readEvents calls yield with the data of each server-sent event in r, in order, until r ends or yield fails.
func readEvents(r io.Reader, yield func(data []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxBody)
	var data bytes.Buffer
	have := false
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if have {
				if err := yield(bytes.Clone(data.Bytes())); err != nil {
					return err
				}
			}
			data.Reset()
			have = false
			continue
		}
		v, ok := strings.CutPrefix(line, "data:")
		if !ok {
			continue // id:, event:, retry: and comments carry nothing across
		}
		if have {
			data.WriteByte('\n')
		}
		data.WriteString(strings.TrimPrefix(v, " "))
		have = true
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if have {
		return yield(data.Bytes())
	}
	return nil
}

// writeEvent writes data as one server-sent event and flushes it.
func writeEvent(w http.ResponseWriter, data []byte) error {
	var b bytes.Buffer
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		b.WriteString("data: ")
		b.Write(line)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	if _, err := w.Write(b.Bytes()); err != nil {
		return err
	}
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	return nil
}
