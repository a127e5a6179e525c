package demo

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// waitLimit bounds how long an agent waits for another party (an offer to appear, a reply, a tool): in the
// containerised demo every workload starts on its own.
const waitLimit = 3 * time.Minute

// node is one agent of the scenario: its identity, its connection to the overlay and what it has seen.
type node struct {
	w    Workload
	a    *agentsdk.Agent
	feed *Feed
	td   spiffeid.TrustDomain
	out  string // where the planner writes the brief
	ad   workgroups.Advertisement
	pace time.Duration
	seen *ledger // nil outside the embedded demo

	httpOnce sync.Once
	http     *http.Client

	mcpMu sync.Mutex
	mcp   *mcp.ClientSession
}

func newNode(w Workload, a *agentsdk.Agent, feed *Feed, out string, seen *ledger) *node {
	return &node{w: w, a: a, feed: feed, td: tdOf(a), out: out, seen: seen}
}

func (n *node) say(format string, args ...any) { n.feed.Event(n.w.Label(), format, args...) }

// pause waits n.pace between the steps of a round, so that people can follow the feed.
func (n *node) pause(ctx context.Context) error {
	if n.pace <= 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(n.pace):
		return nil
	}
}

// label names a SPIFFE ID the way the feed does: org/name.
func label(id spiffeid.ID) string {
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) == 3 {
		return segs[0] + "/" + segs[2]
	}
	return id.String()
}

func (n *node) close() {
	n.mcpMu.Lock()
	if n.mcp != nil {
		n.mcp.Close()
		n.mcp = nil
	}
	n.mcpMu.Unlock()
}

// advertise publishes the node's offer, if it has one.
func (n *node) advertise(ctx context.Context) error {
	o, ok := offers[n.w]
	if !ok {
		return nil
	}
	var in []workgroups.WorkgroupID
	for _, s := range o.workgroups {
		id, err := workgroups.ParseWorkgroupID(s)
		if err != nil {
			return err
		}
		in = append(in, id)
	}
	var ad workgroups.Advertisement
	err := n.retry(ctx, func() (err error) {
		ad, err = n.a.Advertise(ctx, o.card, o.terms, in...)
		return err
	})
	if err != nil {
		return err
	}
	n.ad = ad
	n.say("advertised %q in %s: %d messages, %s, types %s", o.card.Name, strings.Join(o.workgroups, " and "),
		o.terms.MaxMessages, o.terms.MaxDuration, strings.Join(o.terms.AllowedMessageTypes, " "))
	return nil
}

// find waits until discovery shows provider's advertisement with skill.
func (n *node) find(ctx context.Context, skill string, provider Workload) (workgroups.Advertisement, error) {
	ctx, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	for {
		ads, err := n.a.Discover(ctx, api.DiscoverRequest{Skill: skill})
		if err == nil {
			for _, ad := range ads {
				if ad.Provider == provider.ID(n.td) {
					return ad, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return workgroups.Advertisement{}, fmt.Errorf("%s: no offer %q from %s appeared: %w", n.w.Label(), skill, provider.Label(), ctx.Err())
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// transient reports whether err is worth retrying: the overlay lost a connection (a router went away), as
// opposed to an answer (a refusal by the controller, the relay or a gateway).
func transient(ctx context.Context, err error) bool {
	var ae *agentsdk.APIError
	var re *agentsdk.RelayError
	return err != nil && ctx.Err() == nil && !errors.As(err, &ae) && !errors.As(err, &re) && !errors.Is(err, errRefused)
}

// Retry pacing after a transient failure: the first retry comes soon (when a router dies, the services it
// carried are hosted through another router within a second), later ones back off to retryPauseLimit so that a
// controller that is away is not asked in a tight loop.
const (
	retryPause      = 100 * time.Millisecond
	retryPauseLimit = time.Second
)

// retry calls fn until it succeeds, fails with an answer, or waitLimit passes.
func (n *node) retry(ctx context.Context, fn func() error) error {
	deadline := time.Now().Add(waitLimit)
	pause := retryPause
	for {
		err := fn()
		if !transient(ctx, err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
		pause = min(2*pause, retryPauseLimit)
	}
}

// propose opens a session on ad.
func (n *node) propose(ctx context.Context, ad workgroups.Advertisement, p workgroups.Proposal, why string) (*agentsdk.Session, error) {
	var s *agentsdk.Session
	err := n.retry(ctx, func() (err error) {
		s, err = n.a.Propose(ctx, ad.ID, p)
		return err
	})
	if err != nil {
		n.say("proposal to %s refused: %v", label(ad.Provider), err)
		return nil, err
	}
	info := s.Info()
	c := info.Contract
	n.say("session %s with %s opened in %s (%s): %d messages, %s, types %s", short(info.ID.String()), label(info.Provider),
		info.Workgroup, why, c.MaxMessages, c.MaxDuration, strings.Join(c.AllowedMessageTypes, " "))
	return s, nil
}

// send sends v as one envelope and reports it, or the refusal. If the overlay loses the connection it sends the
// same envelope again (same ID) until the relay answers: the relay records an envelope at most once.
func (n *node) send(ctx context.Context, s *agentsdk.Session, typ string, v any) error {
	return n.sendCorrelated(ctx, s, typ, v, "")
}

// sendCorrelated is send with a correlation ID (the envelope answered).
func (n *node) sendCorrelated(ctx context.Context, s *agentsdk.Session, typ string, v any, correlation string) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	id, err := workgroups.NewEnvelopeID(rand.Reader)
	if err != nil {
		return err
	}
	h := workgroups.Header{ID: id, Session: s.ID(), From: n.a.ID(), To: s.Peer(), Type: typ, Time: time.Now().UTC(),
		ContentType: "application/json", CorrelationID: correlation}.WithPayload(b)
	var seq uint64
	err = n.retry(ctx, func() (err error) {
		seq, err = s.SendEnvelope(ctx, h, b)
		return err
	})
	var re *agentsdk.RelayError
	if errors.As(err, &re) {
		n.say("REFUSED  %s to %s in session %s: %s (%s)", typ, label(s.Peer()), short(s.ID().String()), re.Code, re.Message)
		return err
	}
	if err != nil {
		return fmt.Errorf("%s: send %s: %w", n.w.Label(), typ, err)
	}
	n.seen.ack(h.ID)
	n.say("-> %-17s %-22s envelope #%d of session %s (%d bytes)", label(s.Peer()), typ, seq, short(s.ID().String()), len(b))
	return nil
}

// reply answers in with v.
func (n *node) reply(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope, typ string, v any) error {
	return n.sendCorrelated(ctx, s, typ, v, in.Header.ID.String())
}

// next waits for the next envelope of s, reconnecting to the relay when the overlay loses the connection (the
// relay delivers again what was not confirmed, and the session drops what it has already returned).
func (n *node) next(ctx context.Context, s *agentsdk.Session) (agentsdk.Envelope, error) {
	pause := retryPause
	for {
		env, err := s.Receive(ctx)
		if err == nil {
			n.seen.deliver(env.Header.ID)
		}
		if !transient(ctx, err) {
			return env, err
		}
		select {
		case <-ctx.Done():
			return env, ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, retryPauseLimit)
	}
}

// receive waits for the next envelope of s, which must be of type want, and decodes it into v.
func (n *node) receive(ctx context.Context, s *agentsdk.Session, want string, v any) error {
	rctx, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	env, err := n.next(rctx, s)
	if err != nil {
		return fmt.Errorf("%s: waiting for %s in session %s: %w", n.w.Label(), want, short(s.ID().String()), err)
	}
	if env.Header.Type != want {
		return fmt.Errorf("%s: got %s in session %s, want %s", n.w.Label(), env.Header.Type, short(s.ID().String()), want)
	}
	return json.Unmarshal(env.Payload, v)
}

// closeSession closes s as finished.
func (n *node) closeSession(ctx context.Context, s *agentsdk.Session) error {
	if err := n.retry(ctx, func() error { return s.Close(ctx, "done") }); err != nil {
		return err
	}
	n.say("session %s with %s closed", short(s.ID().String()), label(s.Peer()))
	return nil
}

// serve answers envelopes in the sessions n provides, until ctx ends. It is agentsdk's Serve, except that a
// session whose relay connection breaks is received from again rather than dropped.
func (n *node) serve(ctx context.Context, h func(ctx context.Context, s *agentsdk.Session, in agentsdk.Envelope) error) {
	var mu sync.Mutex // guards serving
	serving := map[workgroups.SessionID]bool{}
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(400 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, state := range []workgroups.State{workgroups.StateAccepted, workgroups.StateActive} {
			views, err := n.a.Sessions(ctx, state)
			if err != nil {
				break
			}
			for _, v := range views {
				mu.Lock()
				busy := serving[v.ID]
				mu.Unlock()
				if v.Provider != n.a.ID() || busy {
					continue
				}
				s, err := n.a.Session(ctx, v.ID)
				if err != nil {
					continue
				}
				mu.Lock()
				serving[v.ID] = true
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						in, err := n.next(ctx, s)
						if err != nil {
							if ctx.Err() == nil {
								// Served again at the next look, if the session is still open.
								n.say("stopped receiving in session %s: %v", short(v.ID.String()), err)
								mu.Lock()
								delete(serving, v.ID)
								mu.Unlock()
							}
							return
						}
						if err := h(ctx, s, in); err != nil && ctx.Err() == nil {
							n.say("could not answer %s: %v", in.Header.Type, err)
						}
					}
				}()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// decode decodes an envelope's payload.
func decode(in agentsdk.Envelope, v any) error { return json.Unmarshal(in.Payload, v) }

// errRefused marks a call a gateway refused.
var errRefused = errors.New("refused by the gateway")

// tools returns the node's MCP session with the MCP gateway.
func (n *node) tools(ctx context.Context) (*mcp.ClientSession, error) {
	n.mcpMu.Lock()
	defer n.mcpMu.Unlock()
	if n.mcp != nil {
		return n.mcp, nil
	}
	var err error
	for deadline := time.Now().Add(waitLimit); ; {
		if n.mcp, err = n.a.MCPSession(ctx, ServiceMCPGateway); err == nil {
			return n.mcp, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("%s: MCP gateway: %w", n.w.Label(), err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// dropTools forgets a broken MCP session.
func (n *node) dropTools(cs *mcp.ClientSession) {
	n.mcpMu.Lock()
	defer n.mcpMu.Unlock()
	if n.mcp == cs {
		n.mcp.Close()
		n.mcp = nil
	}
}

// toolNames lists the tools the gateway offers this node now.
func (n *node) toolNames(ctx context.Context) ([]string, error) {
	cs, err := n.tools(ctx)
	if err != nil {
		return nil, err
	}
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		n.dropTools(cs)
		return nil, err
	}
	var names []string
	for _, t := range res.Tools {
		names = append(names, t.Name)
	}
	return names, nil
}

// waitTool waits until the gateway offers (present) or stops offering (!present) a tool.
func (n *node) waitTool(ctx context.Context, name string, present bool, limit time.Duration) error {
	for deadline := time.Now().Add(limit); ; {
		names, err := n.toolNames(ctx)
		if err == nil && slices.Contains(names, name) == present {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: tool %s present=%v not reached after %s (tools %v, err %v)", n.w.Label(), name, !present, limit, names, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// call calls an MCP tool through the gateway, once the gateway offers it, and decodes its structured result
// into out.
func (n *node) call(ctx context.Context, tool string, args map[string]any, out any) error {
	if err := n.waitTool(ctx, tool, true, waitLimit); err != nil {
		return err
	}
	return n.callAnyway(ctx, tool, args, out)
}

// callAnyway calls an MCP tool whether or not the gateway offers it.
func (n *node) callAnyway(ctx context.Context, tool string, args map[string]any, out any) error {
	cs, err := n.tools(ctx)
	if err != nil {
		return err
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
	var rpcErr *jsonrpc.Error
	if err != nil && !errors.As(err, &rpcErr) && ctx.Err() == nil {
		// The connection to the gateway broke (a router went away): a new MCP session, and the call again.
		n.dropTools(cs)
		if err := n.waitTool(ctx, tool, true, waitLimit); err != nil {
			return err
		}
		if cs, err = n.tools(ctx); err != nil {
			return err
		}
		res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
	}
	if err != nil {
		n.say("mcp  %-22s REFUSED by the MCP gateway: %v", tool, err)
		return fmt.Errorf("%s: %w: %v", tool, errRefused, err)
	}
	if res.IsError {
		msg := ""
		for _, c := range res.Content {
			if t, ok := c.(*mcp.TextContent); ok {
				msg += t.Text
			}
		}
		return fmt.Errorf("%s failed: %s", tool, msg)
	}
	b, err := json.Marshal(res.StructuredContent)
	if err != nil {
		return err
	}
	n.say("mcp  %-22s ok (%d bytes)", tool, len(b))
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// httpClient is the node's HTTP client over the overlay.
func (n *node) httpClient() *http.Client {
	n.httpOnce.Do(func() { n.http = n.a.HTTPClient() })
	return n.http
}

// complete asks the model behind the LLM gateway, with the official OpenAI client over the overlay.
func (n *node) complete(ctx context.Context, system, prompt string) (string, error) {
	client := openai.NewClient(option.WithBaseURL("http://"+ServiceLLMGateway+"/v1/"), option.WithHTTPClient(n.httpClient()),
		option.WithAPIKey("unused"), option.WithMaxRetries(0))
	params := openai.ChatCompletionNewParams{Model: ModelName, Messages: []openai.ChatCompletionMessageParamUnion{
		openai.SystemMessage(system), openai.UserMessage(prompt)}}
	for deadline := time.Now().Add(waitLimit); ; {
		comp, err := client.Chat.Completions.New(ctx, params)
		var apiErr *openai.Error
		switch {
		case err == nil && len(comp.Choices) > 0:
			n.say("llm  %-22s ok (%d tokens)", ModelName, comp.Usage.TotalTokens)
			return comp.Choices[0].Message.Content, nil
		case errors.As(err, &apiErr) && apiErr.StatusCode/100 == 4:
			n.say("llm  %-22s REFUSED by the LLM gateway: %d %s", ModelName, apiErr.StatusCode, apiErr.Code)
			return "", fmt.Errorf("%w: %d %s", errRefused, apiErr.StatusCode, apiErr.Code)
		case err == nil:
			err = errors.New("no choices in the answer")
		}
		// The gateway may still be connecting to the model server.
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("%s: LLM gateway: %w", n.w.Label(), err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// countdown is closed after n calls of done.
type countdown struct {
	mu   sync.Mutex
	left int
	ch   chan struct{}
}

func newCountdown(n int) *countdown {
	c := &countdown{left: n, ch: make(chan struct{})}
	if n <= 0 {
		close(c.ch)
	}
	return c
}

func (c *countdown) done() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.left > 0 {
		c.left--
		if c.left == 0 {
			close(c.ch)
		}
	}
}

// wait waits for the countdown or ctx.
func (c *countdown) wait(ctx context.Context) error {
	select {
	case <-c.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
