package a2a

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	a2ago "github.com/a2aproject/a2a-go/a2a"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/workgroups"
)

// CardPath is where A2A clients look for an agent's card.
const CardPath = "/.well-known/agent-card.json"

// ProxyConfig configures a Proxy.
type ProxyConfig struct {
	// Agent is the consumer's connected agent. Required.
	Agent *agentsdk.Agent
	// Advertisement is the provider's advertisement, as Agent.Discover returned it. Required: its card becomes
	// the A2A agent card, and the session is proposed on it.
	Advertisement workgroups.Advertisement
	// Proposal is what the first call proposes (zero: the advertisement's terms).
	Proposal workgroups.Proposal
	// Session, if not zero, is an existing session of Agent's with the provider, used instead of proposing one.
	Session workgroups.SessionID
	// URL is the proxy's own base URL as the card gives it (default: http:// and the Host the card was asked
	// from, so a client that found the card calls back where it found it).
	URL string
	// CallTimeout bounds each call, from the request to the last answer envelope. Default 2 minutes.
	CallTimeout time.Duration
	// Logger receives state changes and failures; nil discards them.
	Logger *slog.Logger
}

// Proxy is an A2A JSON-RPC endpoint (an http.Handler) for one provider on the overlay: it serves the provider's
// card at CardPath and carries every call as an envelope on one session with the provider, proposed on the
// first call. Serve it on a loopback address only: whoever reaches it speaks as Agent.
type Proxy struct {
	cfg    ProxyConfig
	runCtx context.Context
	cancel context.CancelFunc
	loops  sync.WaitGroup

	mu   sync.Mutex
	sess *agentsdk.Session
	// seq is the highest sequence number seen in the session (sent or received): what the contract's
	// max_messages has left.
	seq     uint64
	ended   error // why the session can take no more calls
	waiters map[string]*waiter
}

// waiter receives the answers to one call.
type waiter struct {
	ch   chan agentsdk.Envelope
	done chan struct{}
}

// NewProxy checks cfg and returns a Proxy. It contacts nobody: the session is proposed on the first call.
func NewProxy(cfg ProxyConfig) (*Proxy, error) {
	if cfg.Agent == nil {
		return nil, errors.New("a2a: proxy: no agent: connect one with agentsdk.Connect")
	}
	if cfg.Advertisement.ID.IsZero() && cfg.Session.IsZero() {
		return nil, errors.New("a2a: proxy: no advertisement: pass the provider's advertisement from Discover")
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Proxy{cfg: cfg, runCtx: ctx, cancel: cancel, waiters: map[string]*waiter{}}, nil
}

// Close stops receiving on the session and fails the calls in flight. It leaves the session open: close it with
// Session().Close, or let its contract end it.
func (p *Proxy) Close() error {
	p.cancel()
	p.loops.Wait()
	return nil
}

// Session returns the session the proxy uses, or nil before the first call.
func (p *Proxy) Session() *agentsdk.Session {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sess
}

// Card returns the A2A agent card of the provider, with base as the URL of its JSON-RPC endpoint.
func (p *Proxy) Card(base string) *a2ago.AgentCard {
	c := p.cfg.Advertisement.Card
	card := &a2ago.AgentCard{
		Name:               c.Name,
		Description:        c.Description,
		URL:                base,
		Version:            c.Version,
		ProtocolVersion:    "0.3.0",
		PreferredTransport: a2ago.TransportProtocolJSONRPC,
		Capabilities:       a2ago.AgentCapabilities{Streaming: true},
		DefaultInputModes:  []string{"text/plain", "application/json"},
		DefaultOutputModes: []string{"text/plain", "application/json"},
		Skills:             []a2ago.AgentSkill{},
	}
	if card.Description == "" {
		card.Description = c.Name
	}
	for _, s := range c.Skills {
		tags := s.Tags
		if tags == nil {
			tags = []string{}
		}
		card.Skills = append(card.Skills, a2ago.AgentSkill{ID: s.ID, Name: s.Name, Description: s.Description,
			Tags: tags, Examples: s.Examples})
	}
	return card
}

// ServeHTTP serves the card (GET CardPath) and JSON-RPC calls (POST to any other path).
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == CardPath || r.URL.Path == "/.well-known/agent.json":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "the agent card is read with GET", http.StatusMethodNotAllowed)
			return
		}
		base := p.cfg.URL
		if base == "" {
			base = "http://" + r.Host + "/"
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(p.Card(base))
	case r.Method == http.MethodPost:
		p.call(w, r)
	default:
		http.Error(w, "A2A calls are JSON-RPC requests sent with POST; the card is at "+CardPath, http.StatusMethodNotAllowed)
	}
}

// answer writes the answers of one call: a JSON body, or server-sent events for a streaming method.
type answer struct {
	w       http.ResponseWriter
	stream  bool
	started bool
}

func (a *answer) write(payload []byte) error {
	if !a.stream {
		a.w.Header().Set("Content-Type", "application/json")
		_, err := a.w.Write(payload)
		return err
	}
	if !a.started {
		a.w.Header().Set("Content-Type", "text/event-stream")
		a.w.Header().Set("Cache-Control", "no-cache")
		a.w.WriteHeader(http.StatusOK)
		a.started = true
	}
	return writeEvent(a.w, payload)
}

func (p *Proxy) call(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	out := &answer{w: w, stream: strings.Contains(r.Header.Get("Accept"), "text/event-stream")}
	if err != nil {
		_ = out.write(errorResponse(nil, codeParseError, "parse error", "reading the request failed: "+err.Error(), nil))
		return
	}
	if len(body) > maxBody {
		_ = out.write(errorResponse(nil, codeInvalidRequest, "invalid request", "the request is longer than 4 MiB", nil))
		return
	}
	req, err := parseRequest(body)
	if err != nil {
		_ = out.write(errorResponse(nil, codeParseError, "parse error", err.Error(), nil))
		return
	}
	out.stream = streaming(req.Method)
	typ, err := MessageType(req.Method)
	if err != nil {
		_ = out.write(errorResponse(req.ID, codeMethodNotFound, "method not found", err.Error(), nil))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), p.cfg.CallTimeout)
	defer cancel()
	sess, err := p.session(ctx)
	if err != nil {
		_ = out.write(errorResponse(req.ID, codeServerError, "server error", "umbra: no session with the provider: "+err.Error(), nil))
		return
	}
	id, err := workgroups.NewEnvelopeID(rand.Reader)
	if err != nil {
		_ = out.write(errorResponse(req.ID, codeInternalError, "internal error", err.Error(), nil))
		return
	}
	wt := p.wait(id.String())
	defer p.unwait(id.String(), wt)

	// A call needs room for itself and its answer: one that could only be the session's last message would run
	// at the provider with its answer refused.
	budget := sess.Info().Contract.MaxMessages
	if used := p.seen(0); budget > 0 && used+2 > budget {
		_ = out.write(p.refusal(req, typ, sess.ID(), &agentsdk.RelayError{Code: string(workgroups.ViolationMaxMessages),
			Message: fmt.Sprintf("%d of the session's %d messages are used, and a call needs two (itself and its answer); not sent: propose a new session", used, budget)}))
		return
	}
	h := workgroups.Header{ID: id, Session: sess.ID(), From: p.cfg.Agent.ID(), To: sess.Peer(), Type: typ,
		Time: time.Now().UTC(), ContentType: "application/json"}
	seq, err := sess.SendEnvelope(ctx, h.WithPayload(body), body)
	if err != nil {
		_ = out.write(p.refusal(req, typ, sess.ID(), err))
		return
	}
	if p.seen(seq); budget > 0 && seq >= budget {
		_ = out.write(p.refusal(req, typ, sess.ID(), &agentsdk.RelayError{Code: string(workgroups.ViolationMaxMessages),
			Message: fmt.Sprintf("the call was recorded as message %d of %d, the session's last, so its answer cannot come back", seq, budget)}))
		return
	}
	for {
		select {
		case env := <-wt.ch:
			switch env.Header.Type {
			case typ + EventSuffix:
				if !out.stream {
					p.cfg.Logger.Warn("an event answered a call that does not stream; dropped", "envelope", env.Header.ID.String())
					continue
				}
				if err := out.write(env.Payload); err != nil {
					return // the client went away
				}
			case typ + ResultSuffix:
				if len(env.Payload) > 0 {
					_ = out.write(env.Payload)
				} else if !out.stream {
					_ = out.write(errorResponse(req.ID, codeInternalError, "internal error", "umbra: the provider's answer was empty", nil))
				} else if !out.started {
					out.w.Header().Set("Content-Type", "text/event-stream")
					out.w.WriteHeader(http.StatusOK)
				}
				return
			default:
				p.cfg.Logger.Warn("an answer of an unexpected type; dropped", "envelope", env.Header.ID.String(), "type", env.Header.Type)
			}
		case <-wt.done:
			p.mu.Lock()
			why := p.ended
			p.mu.Unlock()
			if why == nil {
				why = errors.New("the proxy closed")
			}
			_ = out.write(errorResponse(req.ID, codeServerError, "server error", "umbra: "+why.Error(), nil))
			return
		case <-ctx.Done():
			if r.Context().Err() != nil {
				return // the client went away
			}
			detail := fmt.Sprintf("umbra: no answer from the provider within %s (is it serving the session, and does the contract allow %s%s?)",
				p.cfg.CallTimeout, typ, ResultSuffix)
			_ = out.write(errorResponse(req.ID, codeServerError, "server error", detail, nil))
			return
		}
	}
}

// refusal is the JSON-RPC error for a call the relay did not take.
func (p *Proxy) refusal(req request, typ string, sid workgroups.SessionID, err error) []byte {
	var re *agentsdk.RelayError
	if errors.As(err, &re) {
		detail := fmt.Sprintf("umbra: the session's contract refused %s (envelope type %s): %s: %s", req.Method, typ, re.Code, re.Message)
		return errorResponse(req.ID, codeServerError, "server error", detail,
			map[string]any{"umbra_code": re.Code, "umbra_session": sid.String()})
	}
	return errorResponse(req.ID, codeServerError, "server error", "umbra: the relay did not take the call: "+err.Error(), nil)
}

// session returns the proxy's session, proposing it on first use, and starts receiving its answers.
func (p *Proxy) session(ctx context.Context) (*agentsdk.Session, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sess != nil {
		return p.sess, nil
	}
	if p.ended != nil {
		return nil, p.ended
	}
	var s *agentsdk.Session
	var err error
	if !p.cfg.Session.IsZero() {
		s, err = p.cfg.Agent.Session(ctx, p.cfg.Session)
	} else {
		s, err = p.cfg.Agent.Propose(ctx, p.cfg.Advertisement.ID, p.cfg.Proposal)
	}
	if err != nil {
		return nil, err
	}
	p.cfg.Logger.Info("A2A session open", "session", s.ID().String(), "provider", s.Peer().String())
	p.sess = s
	p.loops.Add(1)
	go func() {
		defer p.loops.Done()
		p.receive(s)
	}()
	return s, nil
}

// receive hands every envelope of s to the call it answers, until the proxy closes or the session ends.
func (p *Proxy) receive(s *agentsdk.Session) {
	delay := 100 * time.Millisecond
	for {
		env, err := s.Receive(p.runCtx)
		if err != nil {
			switch {
			case p.runCtx.Err() != nil:
				p.end(errors.New("the proxy closed"))
				return
			case errors.Is(err, agentsdk.ErrSessionClosed) || errors.Is(err, agentsdk.ErrClosed):
				p.cfg.Logger.Info("A2A session ended", "session", s.ID().String(), "err", err)
				p.end(fmt.Errorf("session %s ended: %w", s.ID(), err))
				return
			}
			p.cfg.Logger.Debug("receiving failed, retrying", "session", s.ID().String(), "err", err)
			select {
			case <-time.After(delay):
			case <-p.runCtx.Done():
			}
			delay = min(2*delay, 5*time.Second)
			continue
		}
		delay = 100 * time.Millisecond
		p.seen(env.Header.Seq)
		p.mu.Lock()
		wt := p.waiters[env.Header.CorrelationID]
		p.mu.Unlock()
		if wt == nil {
			p.cfg.Logger.Debug("an answer to no call in flight; dropped", "envelope", env.Header.ID.String(), "type", env.Header.Type)
			continue
		}
		select {
		case wt.ch <- env:
		case <-wt.done:
		case <-p.runCtx.Done():
		}
	}
}

// seen records sequence number seq as used and returns the highest one seen.
func (p *Proxy) seen(seq uint64) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq = max(p.seq, seq)
	return p.seq
}

// end records why the session takes no more calls and fails the calls in flight.
func (p *Proxy) end(why error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ended = why
	for k, wt := range p.waiters {
		close(wt.done)
		delete(p.waiters, k)
	}
}

func (p *Proxy) wait(corr string) *waiter {
	wt := &waiter{ch: make(chan agentsdk.Envelope, 16), done: make(chan struct{})}
	p.mu.Lock()
	p.waiters[corr] = wt
	p.mu.Unlock()
	return wt
}

func (p *Proxy) unwait(corr string, wt *waiter) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.waiters[corr] == wt {
		delete(p.waiters, corr)
		close(wt.done)
	}
}
