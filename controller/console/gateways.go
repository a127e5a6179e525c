package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Gateways is what the console reads from, and asks of, the MCP and LLM gateways: held calls and definitions
// awaiting a decision at the MCP gateway, usage and budgets at the LLM gateway. The gateways decide who may see
// and do what; the console shows their answers, and their refusals as they word them (GatewayError).
type Gateways interface {
	// Approvals lists the held calls the viewer may decide (pending ones and those decided lately), and the tool,
	// prompt and resource versions awaiting a decision (nil, with VersionsErr set, when the gateway refuses them).
	Approvals(ctx context.Context) (Approvals, error)
	// DecideCall approves or denies the held call id, whose arguments digest the viewer reviewed.
	DecideCall(ctx context.Context, id, digest, reason string, approve bool) (HeldCall, error)
	// DecideVersion approves or refuses a tool, prompt or resource version.
	DecideVersion(ctx context.Context, v VersionRef, reason string, approve bool) error
	// Usage is the LLM usage the viewer may read since the time given (a duration such as 24h or a date).
	Usage(ctx context.Context, since string) (Usage, error)
}

// GatewayError is a gateway's refusal or failure, in its own one-line words.
type GatewayError struct {
	Gateway string // "MCP gateway mcpgw"
	Status  int    // HTTP status; 0 when the gateway could not be reached
	Message string
}

func (e *GatewayError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("the %s is unreachable over the overlay: %s", e.Gateway, e.Message)
	}
	return fmt.Sprintf("the %s answered %d: %s", e.Gateway, e.Status, e.Message)
}

// HeldCall is an MCP tool call waiting for (or having had) an administrator's decision.
type HeldCall struct {
	ID            string          `json:"id"`
	Caller        string          `json:"caller"`
	Tool          string          `json:"tool"`
	ArgsDigest    string          `json:"args_digest"`
	PolicyVersion string          `json:"policy_version"`
	Backend       string          `json:"backend"`
	Arguments     json.RawMessage `json:"arguments,omitempty"` // canonical, secrets redacted
	Reason        string          `json:"reason,omitempty"`    // why it needs approval
	Status        string          `json:"status"`
	Created       time.Time       `json:"created"`
	Deadline      time.Time       `json:"deadline"`
	DecidedBy     string          `json:"decided_by,omitempty"`
	DecidedAt     time.Time       `json:"decided_at"`
}

// VersionRef names a tool, prompt or resource version at a backend.
type VersionRef struct {
	Kind, Backend, Tool, Digest string
}

// ToolVersion is a tool, prompt or resource definition awaiting a decision: new, or changed since it was
// approved (quarantined).
type ToolVersion struct {
	Kind       string          `json:"kind"`
	Name       string          `json:"name"`
	Backend    string          `json:"backend"`
	Tool       string          `json:"tool"`
	State      string          `json:"state"`
	Digest     string          `json:"digest"`
	Approved   string          `json:"approved,omitempty"`
	Definition json.RawMessage `json:"definition"`
	Previous   json.RawMessage `json:"previous,omitempty"`
	Findings   []struct {
		Rule   string `json:"rule"`
		Field  string `json:"field,omitempty"`
		Detail string `json:"detail"`
	} `json:"findings,omitempty"`
	Since time.Time `json:"since"`
}

// Approvals is what the approvals page shows.
type Approvals struct {
	Gateway     string
	Calls       []HeldCall
	Versions    []ToolVersion
	VersionsErr string // the gateway's refusal to list versions (only its own organisation's administrators may)
}

// UsageEntry is one subject's LLM usage on one day.
type UsageEntry struct {
	Subject      string  `json:"subject"` // id:<SPIFFE ID> or org:<organisation>
	Day          string  `json:"day"`
	Requests     int64   `json:"requests"`
	InputTokens  int64   `json:"input_tokens"`
	OutputTokens int64   `json:"output_tokens"`
	CostUSD      float64 `json:"cost_usd"`
	Models       map[string]struct {
		Requests     int64   `json:"requests"`
		InputTokens  int64   `json:"input_tokens"`
		OutputTokens int64   `json:"output_tokens"`
		CostUSD      float64 `json:"cost_usd"`
	} `json:"models,omitempty"`
}

// Budget is a subject's day and month budget; zero fields are unlimited.
type Budget struct {
	TokensPerDay   int64   `json:"tokens_per_day"`
	TokensPerMonth int64   `json:"tokens_per_month"`
	CostPerDay     float64 `json:"cost_per_day"`
	CostPerMonth   float64 `json:"cost_per_month"`
}

// Usage is what the usage page shows.
type Usage struct {
	Gateway string
	Since   string
	Entries []UsageEntry
	Budgets map[string]Budget // by subject
}

// GatewayClient reaches the gateways' administration APIs over the overlay as the viewer: HTTP is the viewer's
// agentsdk client, so that every read and decision is the viewer's own, made with its SVID.
type GatewayClient struct {
	HTTP *http.Client
	// MCP and LLM are the gateways' overlay services (as `umbra mcp approvals` and `umbra llm usage` take them);
	// empty leaves that page saying there is no such gateway.
	MCP, LLM string
}

var _ Gateways = (*GatewayClient)(nil)

// errNoGateway is answered for a page whose gateway the bridge was not given.
var errNoGateway = errors.New("no gateway")

func (g *GatewayClient) call(ctx context.Context, gateway, method, u string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.HTTP.Do(req)
	if err != nil {
		msg := err.Error()
		var ue *url.Error
		if errors.As(err, &ue) {
			msg = ue.Err.Error()
		}
		return &GatewayError{Gateway: gateway, Message: msg + " (is it running, and may this identity dial it?)"}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return &GatewayError{Gateway: gateway, Message: err.Error()}
	}
	if resp.StatusCode/100 != 2 {
		// Both gateways answer {"error":{"message":...}}.
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
			msg = e.Error.Message
		}
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		return &GatewayError{Gateway: gateway, Status: resp.StatusCode, Message: msg}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return &GatewayError{Gateway: gateway, Status: resp.StatusCode, Message: "unreadable answer: " + err.Error()}
	}
	return nil
}

func (g *GatewayClient) mcpName() string { return "MCP gateway " + g.MCP }

// Approvals lists the held calls (pending and recently decided) and the versions awaiting a decision.
func (g *GatewayClient) Approvals(ctx context.Context) (Approvals, error) {
	out := Approvals{Gateway: g.MCP}
	if g.MCP == "" {
		return out, errNoGateway
	}
	base := "http://" + g.MCP + "/admin/"
	var calls struct {
		Approvals []HeldCall `json:"approvals"`
	}
	if err := g.call(ctx, g.mcpName(), http.MethodGet, base+"approvals?all=1", nil, &calls); err != nil {
		return out, err
	}
	out.Calls = calls.Approvals
	var vs struct {
		Versions []ToolVersion `json:"versions"`
	}
	if err := g.call(ctx, g.mcpName(), http.MethodGet, base+"tool-versions", nil, &vs); err != nil {
		var ge *GatewayError
		if !errors.As(err, &ge) || ge.Status != http.StatusForbidden {
			return out, err
		}
		out.VersionsErr = ge.Message
	}
	out.Versions = vs.Versions
	return out, nil
}

// DecideCall approves or denies a held call.
func (g *GatewayClient) DecideCall(ctx context.Context, id, digest, reason string, approve bool) (HeldCall, error) {
	var out HeldCall
	if g.MCP == "" {
		return out, errNoGateway
	}
	verb := "deny"
	if approve {
		verb = "approve"
	}
	err := g.call(ctx, g.mcpName(), http.MethodPost, "http://"+g.MCP+"/admin/approvals/"+url.PathEscape(id)+"/"+verb,
		map[string]string{"Digest": digest, "Reason": reason}, &out)
	return out, err
}

// DecideVersion approves or refuses a version.
func (g *GatewayClient) DecideVersion(ctx context.Context, v VersionRef, reason string, approve bool) error {
	if g.MCP == "" {
		return errNoGateway
	}
	verb := "deny"
	if approve {
		verb = "approve"
	}
	var out any
	return g.call(ctx, g.mcpName(), http.MethodPost, "http://"+g.MCP+"/admin/tool-versions/"+verb,
		map[string]string{"Kind": v.Kind, "Backend": v.Backend, "Tool": v.Tool, "Digest": v.Digest, "Reason": reason}, &out)
}

// Usage reads the usage the viewer may see.
func (g *GatewayClient) Usage(ctx context.Context, since string) (Usage, error) {
	out := Usage{Gateway: g.LLM, Since: since}
	if g.LLM == "" {
		return out, errNoGateway
	}
	var resp struct {
		Data    []UsageEntry      `json:"data"`
		Budgets map[string]Budget `json:"budgets"`
	}
	if err := g.call(ctx, "LLM gateway "+g.LLM, http.MethodGet, "http://"+g.LLM+"/v1/usage?"+url.Values{"since": {since}}.Encode(), nil, &resp); err != nil {
		return out, err
	}
	out.Entries, out.Budgets = resp.Data, resp.Budgets
	return out, nil
}
