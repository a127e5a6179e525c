package agentsdk

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
)

// A try of AppendAudit whose answer is lost (the connection breaks after the controller read it, no answer
// comes, or a server error) is sent again under the same record ID, with its age; a refusal is not; tries stop
// at the caller's deadline.
func TestAppendAuditSendsAgain(t *testing.T) {
	type try struct{ id, age string }
	for _, tc := range []struct {
		name    string
		answers []string // per try: "break", "hang", "503", "400", "ok"
		tries   int
		ok      bool
	}{
		{"connection breaks after the request", []string{"break", "ok"}, 2, true},
		{"server errors", []string{"503", "503", "ok"}, 3, true},
		{"no answer", []string{"hang", "ok"}, 2, true},
		{"refused", []string{"400", "ok"}, 1, false},
		{"never answered", []string{"break", "break", "break", "break", "break", "break", "break", "break", "break", "break", "break", "break"}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var tries []try
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.ReadAll(r.Body)
				mu.Lock()
				tries = append(tries, try{r.Header.Get(api.HeaderRecordID), r.Header.Get(api.HeaderRecordAge)})
				n := len(tries)
				mu.Unlock()
				answer := "break"
				if n <= len(tc.answers) {
					answer = tc.answers[n-1]
				}
				switch answer {
				case "break":
					conn, _, err := http.NewResponseController(w).Hijack()
					if err == nil {
						conn.Close()
					}
				case "hang":
					select {
					case <-r.Context().Done():
					case <-time.After(10 * time.Second):
					}
				case "503":
					w.Header().Set("Content-Type", api.ContentTypeJSON)
					w.WriteHeader(http.StatusServiceUnavailable)
					_, _ = io.WriteString(w, `{"code":"internal","message":"store unavailable"}`)
				case "400":
					w.Header().Set("Content-Type", api.ContentTypeJSON)
					w.WriteHeader(http.StatusBadRequest)
					_, _ = io.WriteString(w, `{"code":"bad_request","message":"no"}`)
				default:
					_, _ = io.WriteString(w, `{"seq":1}`)
				}
			}))
			defer srv.Close()
			c := controllerAt(srv)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if tc.name == "no answer" {
				ctx, cancel = context.WithTimeout(context.Background(), 9*time.Second)
				defer cancel()
			}
			err := c.AppendAudit(ctx, map[string]string{"kind": "mcp.outcome"})
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			var ae *APIError
			if tc.name == "refused" && (!errors.As(err, &ae) || ae.Code != api.CodeBadRequest) {
				t.Fatalf("a refusal came back as %v", err)
			}
			if tc.name == "never answered" && !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("tries ended with %v, want the deadline", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if tc.tries > 0 && len(tries) != tc.tries {
				t.Fatalf("%d tries, want %d", len(tries), tc.tries)
			}
			if len(tries) < 1 || len(tries[0].id) != 32 || tries[0].age != "" {
				t.Fatalf("first try %+v: want a record ID and no age", tries)
			}
			last := -1
			for i, tr := range tries[1:] {
				age, err := strconv.Atoi(tr.age)
				if tr.id != tries[0].id || err != nil || age <= last || time.Duration(age)*time.Millisecond > api.AuditRetryWindow {
					t.Fatalf("try %d %+v after %+v: want the same ID and a growing age within the retry window", i+2, tr, tries[0])
				}
				last = age
			}
		})
	}
}

// AppendAudit's error matches ErrNotSent only when no try reached the controller: then the record can be appended
// again later without being stored twice.
func TestAppendAuditNotSent(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close() // the request arrived; its answer is lost
		}
	}))
	defer srv.Close()
	for _, tc := range []struct {
		name    string
		reach   func(try int) bool // whether the try's connection can be made
		notSent bool
	}{
		{"never reached", func(int) bool { return false }, true},
		{"reached once, then not", func(try int) bool { return try == 2 }, false},
		{"reached every time", func(int) bool { return true }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dials := 0
			c := &Controller{client: &http.Client{Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					dials++
					if !tc.reach(dials) {
						return nil, notSentError{errors.New("service umbra.controller has no terminators")}
					}
					return (&net.Dialer{}).DialContext(ctx, "tcp", srv.Listener.Addr().String())
				}}}}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			err := c.AppendAudit(ctx, map[string]string{"kind": "mcp.outcome"})
			if err == nil || errors.Is(err, ErrNotSent) != tc.notSent {
				t.Fatalf("after %d connections: %v; want ErrNotSent %v", dials, err, tc.notSent)
			}
		})
	}
}

// A connection that is never made (its dial hangs) is known not to have been sent, and AppendAudit says so before
// its caller's deadline, which a caller that stops waiting at that deadline would otherwise miss.
func TestAppendAuditAnswersBeforeTheDeadline(t *testing.T) {
	c := &Controller{client: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			<-ctx.Done()
			return nil, notSentError{ctx.Err()}
		}}}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.AppendAudit(ctx, map[string]string{"kind": "mcp.outcome"}) }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotSent) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%v: want ErrNotSent and the deadline", err)
		}
	case <-ctx.Done():
		t.Fatal("no answer by the caller's deadline")
	}
}

// AppendAuditOnce sends the caller's record ID, and the age since the caller's first try from its first try on,
// so that a record a caller kept across its own restart is answered as a repeat, or refused as too late; an ID
// the controller would refuse is refused before anything is sent.
func TestAppendAuditOnce(t *testing.T) {
	var mu sync.Mutex
	var ids, ages, firsts []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		mu.Lock()
		ids, ages = append(ids, r.Header.Get(api.HeaderRecordID)), append(ages, r.Header.Get(api.HeaderRecordAge))
		firsts = append(firsts, r.Header.Get(api.HeaderRecordFirst))
		mu.Unlock()
		_, _ = io.WriteString(w, `{"seq":1}`)
	}))
	defer srv.Close()
	c := controllerAt(srv)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	first := time.Now().Add(-3 * time.Second)
	if err := c.AppendAuditOnce(ctx, map[string]string{"kind": "mcp.outcome"}, "held-0f3a", first, nil); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "a b", "../x", strings.Repeat("a", 65)} {
		if err := c.AppendAuditOnce(ctx, map[string]string{"kind": "mcp.outcome"}, bad, time.Time{}, nil); err == nil || !strings.Contains(err.Error(), "record ID") {
			t.Fatalf("record ID %q: %v", bad, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ids) != 1 || ids[0] != "held-0f3a" {
		t.Fatalf("sent under %q, want one try under the caller's ID", ids)
	}
	if age, err := strconv.Atoi(ages[0]); err != nil || age < 3000 || age > 4000 {
		t.Fatalf("first try's age %q, want about 3000 ms", ages[0])
	}
	if firsts[0] != strconv.FormatInt(first.UnixMilli(), 10) {
		t.Fatalf("first try sent as first tried at %q, want %d", firsts[0], first.UnixMilli())
	}
}

// droppable is a connection that the far end of the overlay can drop without a word: writes to it fail from then on.
type droppable struct {
	net.Conn
	dropped *atomic.Bool
}

func (d droppable) Write(p []byte) (int, error) {
	if d.dropped.Load() {
		return 0, errors.New("channel closed")
	}
	return d.Conn.Write(p)
}

// A kept-alive connection that the controller's end dropped (its router died) takes no request: a try whose
// request could not be written to it was not sent, and AppendAudit says so, so that the record can be held.
func TestAppendAuditOnADroppedConnection(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		_, _ = io.WriteString(w, `{"seq":1}`)
	}))
	defer srv.Close()
	var dropped atomic.Bool
	c := &Controller{client: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			if dropped.Load() {
				return nil, notSentError{errors.New("no edge router")}
			}
			conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", srv.Listener.Addr().String())
			return &meteredConn{Conn: droppable{conn, &dropped}}, err
		}}}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.AppendAudit(ctx, map[string]string{"kind": "mcp.outcome"}); err != nil {
		t.Fatal(err)
	}
	dropped.Store(true)
	if err := c.AppendAudit(ctx, map[string]string{"kind": "mcp.outcome"}); !errors.Is(err, ErrNotSent) {
		t.Fatalf("append on a dropped connection: %v; want ErrNotSent", err)
	}
}

// AppendAuditOnce's sending is called once, when a try has a connection and before any of it is written: not while
// the controller cannot be reached, and a try whose sending fails writes nothing.
func TestAppendAuditOnceSending(t *testing.T) {
	var mu sync.Mutex
	var order []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		mu.Lock()
		order = append(order, "stored")
		mu.Unlock()
		_, _ = io.WriteString(w, `{"seq":1}`)
	}))
	defer srv.Close()
	var reach atomic.Bool
	c := &Controller{client: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			if !reach.Load() {
				return nil, notSentError{errors.New("no edge router")}
			}
			conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", srv.Listener.Addr().String())
			if err != nil {
				return nil, err
			}
			return &meteredConn{Conn: conn}, nil
		}}}}
	first := time.Now().Add(-time.Second)
	var fail atomic.Bool
	sending := func(at time.Time) error {
		if !at.Equal(first) {
			t.Errorf("sending as first tried at %v, want %v", at, first)
		}
		if fail.Load() {
			return errors.New("state store unavailable")
		}
		mu.Lock()
		order = append(order, "marked")
		mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	short, stop := context.WithTimeout(ctx, time.Second)
	if err := c.AppendAuditOnce(short, map[string]string{"kind": "mcp.outcome"}, "r1", first, sending); !errors.Is(err, ErrNotSent) {
		t.Fatalf("unreachable: %v", err)
	}
	stop()
	reach.Store(true)
	fail.Store(true)
	short, stop = context.WithTimeout(ctx, time.Second)
	if err := c.AppendAuditOnce(short, map[string]string{"kind": "mcp.outcome"}, "r1", first, sending); !errors.Is(err, ErrNotSent) {
		t.Fatalf("sending fails: %v", err)
	}
	stop()
	fail.Store(false)
	if err := c.AppendAuditOnce(ctx, map[string]string{"kind": "mcp.outcome"}, "r1", first, sending); err != nil {
		t.Fatal(err)
	}
	// The connection is kept alive: a later append on it is not held back by the last one's sending.
	if err := c.AppendAudit(ctx, map[string]string{"kind": "mcp.outcome"}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(order, ",") != "marked,stored,stored" {
		t.Fatalf("%v, want marked once, before the first record stored", order)
	}
}

// FindAuditRecord asks after the record under its ID with the age of the try, and returns the controller's
// answer; an ID the controller would refuse is refused before anything is sent.
func TestFindAuditRecord(t *testing.T) {
	var got api.AuditRecordFind
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != api.PathAuditRecordFind || json.NewDecoder(r.Body).Decode(&got) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, `{"found":true,"seq":7,"hash":"ab"}`)
	}))
	defer srv.Close()
	c := controllerAt(srv)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tried := time.Now().Add(-4 * time.Minute)
	found, err := c.FindAuditRecord(ctx, "held-1", tried)
	if err != nil || !found.Found || found.Seq != 7 {
		t.Fatalf("find: %+v %v", found, err)
	}
	if got.ID != "held-1" || got.FirstUnixMS != tried.UnixMilli() {
		t.Fatalf("asked %+v, want held-1 first tried at %d", got, tried.UnixMilli())
	}
	if _, err := c.FindAuditRecord(ctx, "held 1", time.Now()); err == nil || !strings.Contains(err.Error(), "record ID") {
		t.Fatalf("a malformed ID: %v", err)
	}
}

// controllerAt is a Controller whose every request, whatever its URL, reaches srv.
func controllerAt(srv *httptest.Server) *Controller {
	return &Controller{client: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", srv.Listener.Addr().String())
		}}}}
}
