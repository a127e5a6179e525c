package webhook

import (
	"context"
	"crypto/ed25519"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// receiver is a loopback endpoint that answers the first fail requests with status, then 204, and hands each
// request it accepts to got.
func receiver(t *testing.T, fail int, status int) (*httptest.Server, chan *http.Request, chan []byte, *atomic.Int32) {
	t.Helper()
	reqs, bodies := make(chan *http.Request, 16), make(chan []byte, 16)
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		b, _ := io.ReadAll(r.Body)
		if int(n) <= fail {
			w.WriteHeader(status)
			return
		}
		reqs <- r
		bodies <- b
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv, reqs, bodies, &calls
}

func run(t *testing.T, s *Sender) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestDeliverSignedWithRetries(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	for _, tt := range []struct {
		name   string
		secret []byte
	}{{"hmac", []byte("s3cret")}, {"ed25519", nil}} {
		t.Run(tt.name, func(t *testing.T) {
			srv, reqs, bodies, calls := receiver(t, 2, http.StatusServiceUnavailable)
			s, err := New(Config{URL: srv.URL, Secret: tt.secret, Key: key, Backoff: 10 * time.Millisecond, Timeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			run(t, s)
			body := []byte(`{"rule":"rate"}`)
			if !s.Send(body) {
				t.Fatal("queue full at the first send")
			}
			select {
			case r := <-reqs:
				b := <-bodies
				if err := Verify(tt.secret, key.Public().(ed25519.PublicKey), r.Header.Get(HeaderTimestamp), b, r.Header.Get(HeaderSignature)); err != nil {
					t.Fatalf("signature %q: %v", r.Header.Get(HeaderSignature), err)
				}
				if err := Verify(tt.secret, key.Public().(ed25519.PublicKey), r.Header.Get(HeaderTimestamp), []byte(`{"rule":"none"}`), r.Header.Get(HeaderSignature)); err == nil {
					t.Fatal("the signature verified for another body")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("not delivered within 10s")
			}
			if calls.Load() != 3 {
				t.Fatalf("%d attempts, want 3 (two 503s, then accepted)", calls.Load())
			}
		})
	}
}

func TestGivesUpAndNeverBlocks(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	// An endpoint that always fails: three attempts, then the body is given up.
	srv, _, _, calls := receiver(t, 1000, http.StatusBadGateway)
	s, err := New(Config{URL: srv.URL, Key: key, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, s)
	s.Send([]byte(`{}`))
	for deadline := time.Now().Add(10 * time.Second); s.Stats().Failed == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not given up within 10s")
		}
	}
	if calls.Load() != 3 {
		t.Fatalf("%d attempts, want 3", calls.Load())
	}
	// A refusal for good (4xx) is not retried.
	srv4, _, _, calls4 := receiver(t, 1000, http.StatusForbidden)
	s4, _ := New(Config{URL: srv4.URL, Key: key, Backoff: time.Millisecond})
	run(t, s4)
	s4.Send([]byte(`{}`))
	for deadline := time.Now().Add(10 * time.Second); s4.Stats().Failed == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not given up within 10s")
		}
	}
	if calls4.Load() != 1 {
		t.Fatalf("%d attempts after a 403, want 1", calls4.Load())
	}
	// With the worker stuck on an endpoint that does not answer, Send still returns at once, and drops past the
	// queue.
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(hang.Close)
	// Runs before hang.Close, which waits for every handler: a request the client gave up on may not have been
	// noticed by the server yet.
	t.Cleanup(func() { close(release) })
	sh, _ := New(Config{URL: hang.URL, Key: key, Queue: 2, Timeout: 200 * time.Millisecond})
	run(t, sh)
	start := time.Now()
	for range 10 {
		sh.Send([]byte(`{}`))
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("ten sends took %s with the endpoint hanging", d)
	}
	if st := sh.Stats(); st.Dropped < 7 {
		t.Fatalf("stats %+v: want at least 7 of 10 dropped with a queue of 2", st)
	}
}

func TestNew(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	for _, c := range []Config{{URL: "ftp://x", Key: key}, {URL: "http://", Key: key}, {URL: "http://127.0.0.1:1"}} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%q) accepted", c.URL)
		}
	}
}
