// Package webhook delivers signed JSON bodies to one HTTP endpoint, off the caller's path: Send queues a body and
// returns at once; a worker posts each with a deadline per attempt and a bounded number of attempts, and drops
// what it cannot deliver, or what finds the queue full, counting it.
//
// Every request carries Umbra-Timestamp (Unix seconds) and Umbra-Signature over the string
// "<timestamp>.<body>": "hmac-sha256=<hex>" with a shared secret, or "ed25519=<base64>" with the sender's
// Ed25519 key when no secret is configured. A receiver checks it with Verify, and refuses old timestamps.
package webhook

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The headers of a delivery.
const (
	HeaderTimestamp = "Umbra-Timestamp"
	HeaderSignature = "Umbra-Signature"
)

// Config configures a Sender.
type Config struct {
	// URL receives each body in a POST. Required: http or https.
	URL string
	// Secret, if set, signs with HMAC-SHA256. Otherwise Key signs.
	Secret []byte
	// Key signs with Ed25519 when there is no Secret. One of the two is required.
	Key ed25519.PrivateKey
	// Timeout bounds one attempt. Default 5s.
	Timeout time.Duration
	// Attempts bounds the attempts per body. Default 3.
	Attempts int
	// Backoff is the wait before the second attempt, doubled before each next one. Default 1s.
	Backoff time.Duration
	// Queue is how many bodies may wait; a body that finds it full is dropped. Default 256.
	Queue int
	// Client posts the bodies. Default: a client of its own.
	Client *http.Client
	// Logger receives deliveries given up. Default: discard.
	Logger *slog.Logger
	// Outcome, if set, is told what became of each body: "delivered", "failed" or "dropped" (Stats counts the
	// same). It must return at once.
	Outcome func(outcome string)
}

// Stats counts what happened to the bodies sent.
type Stats struct {
	Delivered int64 // answered with a 2xx
	Failed    int64 // given up after the attempts, or refused for good by the endpoint
	Dropped   int64 // found the queue full
}

// Sender delivers bodies to the endpoint. Run it; Send from anywhere.
type Sender struct {
	cfg   Config
	queue chan []byte
	stats struct{ delivered, failed, dropped atomic.Int64 }
}

// New checks cfg and returns a Sender.
func New(cfg Config) (*Sender, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("webhook: %q is not an http or https URL", cfg.URL)
	}
	if len(cfg.Secret) == 0 && len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("webhook: give a secret (HMAC-SHA256) or an Ed25519 key to sign with")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 3
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = time.Second
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 256
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Outcome == nil {
		cfg.Outcome = func(string) {}
	}
	return &Sender{cfg: cfg, queue: make(chan []byte, cfg.Queue)}, nil
}

// Send queues body and returns at once; false if the queue was full and body was dropped.
func (s *Sender) Send(body []byte) bool {
	select {
	case s.queue <- body:
		return true
	default:
		s.stats.dropped.Add(1)
		s.cfg.Outcome("dropped")
		return false
	}
}

// Stats returns the counts so far.
func (s *Sender) Stats() Stats {
	return Stats{Delivered: s.stats.delivered.Load(), Failed: s.stats.failed.Load(), Dropped: s.stats.dropped.Load()}
}

// Run delivers the queued bodies, one at a time, until ctx ends.
func (s *Sender) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case body := <-s.queue:
			if err := s.deliver(ctx, body); err != nil {
				if ctx.Err() != nil {
					return
				}
				s.stats.failed.Add(1)
				s.cfg.Outcome("failed")
				s.cfg.Logger.Warn("webhook delivery given up", "url", s.cfg.URL, "err", err)
				continue
			}
			s.stats.delivered.Add(1)
			s.cfg.Outcome("delivered")
		}
	}
}

// deliver posts body until an attempt succeeds, the endpoint refuses it for good, or the attempts run out.
func (s *Sender) deliver(ctx context.Context, body []byte) error {
	wait := s.cfg.Backoff
	var err error
	for attempt := 1; ; attempt++ {
		var retry bool
		if retry, err = s.post(ctx, body); err == nil || !retry || attempt == s.cfg.Attempts {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait *= 2
	}
}

// post makes one attempt; retry says whether another may succeed.
func (s *Sender) post(ctx context.Context, body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, Sign(s.cfg.Secret, s.cfg.Key, ts, body))
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return true, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode/100 == 2:
		return false, nil
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode >= 500:
		return true, fmt.Errorf("webhook: %s answered %s", s.cfg.URL, resp.Status)
	}
	return false, fmt.Errorf("webhook: %s refused the delivery: %s", s.cfg.URL, resp.Status)
}

// Sign is the Umbra-Signature value of body sent at timestamp ts: with secret if it is set, else with key.
func Sign(secret []byte, key ed25519.PrivateKey, ts string, body []byte) string {
	msg := signed(ts, body)
	if len(secret) > 0 {
		m := hmac.New(sha256.New, secret)
		m.Write(msg)
		return "hmac-sha256=" + hex.EncodeToString(m.Sum(nil))
	}
	return "ed25519=" + base64.StdEncoding.EncodeToString(ed25519.Sign(key, msg))
}

// Verify checks an Umbra-Signature value sig of body sent at ts: against secret for an HMAC signature, against
// pub for an Ed25519 one.
func Verify(secret []byte, pub ed25519.PublicKey, ts string, body []byte, sig string) error {
	scheme, value, _ := strings.Cut(sig, "=")
	msg := signed(ts, body)
	switch scheme {
	case "hmac-sha256":
		got, err := hex.DecodeString(value)
		if err != nil || len(secret) == 0 {
			return errors.New("webhook: hmac-sha256 signature without a secret to check it, or not hex")
		}
		m := hmac.New(sha256.New, secret)
		m.Write(msg)
		if !hmac.Equal(got, m.Sum(nil)) {
			return errors.New("webhook: the HMAC-SHA256 signature does not match")
		}
		return nil
	case "ed25519":
		got, err := base64.StdEncoding.DecodeString(value)
		if err != nil || len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, msg, got) {
			return errors.New("webhook: the Ed25519 signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("webhook: unknown signature scheme %q", scheme)
}

func signed(ts string, body []byte) []byte {
	return append([]byte(ts+"."), body...)
}
