package demo

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/internal/audit"
)

// Summary is what a round did, as the audit trail records it: the only source of these numbers is the export.
type Summary struct {
	Round int
	// Sessions are the round's sessions in the order they were proposed.
	Sessions []SessionSummary
	// Envelopes is the number of envelopes the relay accepted and stored; EnvelopeIDs are their IDs, in the
	// order they were recorded.
	Envelopes   int
	EnvelopeIDs []string
	// Refusals counts what the network refused, by surface and reason: "a2a type_not_allowed",
	// "a2a max_messages", "a2a expired", "a2a propose: not visible to the caller", "mcp call not permitted: forbade … by POLICY",
	// "mcp tool quarantined", "mcp definition changed after approval; quarantined", "llm budget_exceeded", ...
	Refusals map[string]int
	// MCPCalls and LLMCalls are the tool and model calls forwarded to a backend, each counted once, by the record
	// the gateway writes before forwarding it (mcp.call, mcp.prompt, mcp.read, llm.call), not by its outcome.
	MCPCalls, LLMCalls int
	// AuditRecords is the number of records the round added; AuditVerified says the whole chain verified.
	AuditRecords  int
	AuditVerified bool
	// AuditExport is the path of the exported trail (JSON lines); Brief the path of the planner's brief.
	AuditExport, Brief string
}

// SessionSummary is one session as the audit trail tells it.
type SessionSummary struct {
	ID                  string
	Consumer, Provider  string // org/name
	Workgroup           string
	Envelopes, Refused  int
	State, CloseReason  string
	MaxMessages         uint64
	MaxDuration         string
	AllowedMessageTypes []string
}

var closedAs = regexp.MustCompile(`is closed \(([a-z_]+)\)`)

// Tally summarises the records with a sequence number above after. It does not verify the chain.
func Tally(records []audit.Record, after uint64) Summary {
	sum := Summary{Refusals: map[string]int{}}
	byID := map[string]*SessionSummary{}
	var order []string
	session := func(id string) *SessionSummary {
		s, ok := byID[id]
		if !ok {
			s = &SessionSummary{ID: id}
			byID[id] = s
			order = append(order, id)
		}
		return s
	}
	for _, r := range records {
		if r.Seq <= after {
			continue
		}
		sum.AuditRecords++
		switch r.Kind {
		case "session.transition":
			var d struct {
				To          string `json:"to"`
				Consumer    string `json:"consumer"`
				Provider    string `json:"provider"`
				CloseReason string `json:"close_reason"`
				Contract    struct {
					MaxMessages  uint64   `json:"max_messages"`
					MaxDuration  string   `json:"max_duration"`
					AllowedTypes []string `json:"allowed_message_types"`
				} `json:"contract"`
			}
			if json.Unmarshal(r.Data, &d) != nil {
				continue
			}
			s := session(r.Session)
			s.Consumer, s.Provider, s.Workgroup, s.State = labelOf(d.Consumer), labelOf(d.Provider), r.Workgroup, d.To
			s.MaxMessages, s.MaxDuration, s.AllowedMessageTypes = d.Contract.MaxMessages, d.Contract.MaxDuration, d.Contract.AllowedTypes
			if d.CloseReason != "" {
				s.CloseReason = d.CloseReason
			}
		case "envelope.accepted":
			var h struct {
				ID string `json:"id"`
			}
			_ = json.Unmarshal(r.Data, &h) // an undecodable header shows as an empty ID, which reconciling rejects
			sum.Envelopes++
			sum.EnvelopeIDs = append(sum.EnvelopeIDs, h.ID)
			session(r.Session).Envelopes++
		case "envelope.rejected":
			if r.Session != "" {
				session(r.Session).Refused++
			}
			code, detail, _ := strings.Cut(r.Reason, ": ")
			if m := closedAs.FindStringSubmatch(detail); code == "session_closed" && m != nil {
				code = m[1] // refused because the session had closed: say why it closed
			}
			sum.Refusals["a2a "+code]++
		case "session.propose", "session.accept":
			if r.Decision == audit.DecisionDeny {
				sum.Refusals["a2a propose: "+r.Reason]++
			}
		case "mcp.call", "mcp.prompt", "mcp.read":
			sum.MCPCalls++
		case "mcp.denied", "mcp.tool_quarantined":
			sum.Refusals["mcp "+r.Reason]++
		case "llm.call":
			sum.LLMCalls++
		case "mcp.outcome", "llm.outcome":
			// how a call counted above ended
		default:
			if strings.HasPrefix(r.Kind, "llm.") && r.Decision == audit.DecisionDeny {
				sum.Refusals["llm "+strings.TrimPrefix(r.Kind, "llm.")]++
			}
		}
	}
	for _, id := range order {
		sum.Sessions = append(sum.Sessions, *byID[id])
	}
	return sum
}

// labelOf turns spiffe://td/org/kind/name into org/name.
func labelOf(raw string) string {
	id, err := spiffeid.FromString(raw)
	if err != nil {
		return raw
	}
	return label(id)
}

// ReadExport reads and verifies an audit export (JSON lines, as `umbra audit export` writes it).
func ReadExport(r io.Reader) ([]audit.Record, error) {
	records, err := audit.ReadJSONLines(r)
	if err != nil {
		return nil, err
	}
	if err := audit.VerifyRecords(records); err != nil {
		return records, err
	}
	return records, nil
}

// Print writes the summary as a readable block.
func (s Summary) Print(w io.Writer) {
	fmt.Fprintf(w, "\n== Summary of round %d (from the audit trail)\n", s.Round)
	fmt.Fprintf(w, "%d sessions, %d envelopes accepted, %d MCP tool calls, %d LLM calls, %d refusals\n\n",
		len(s.Sessions), s.Envelopes, s.MCPCalls, s.LLMCalls, s.refusalCount())
	fmt.Fprintf(w, "  %-12s  %-22s %-22s %-28s %9s %7s  %s\n", "session", "consumer", "provider", "workgroup", "envelopes", "refused", "closed")
	for _, ss := range s.Sessions {
		closed := ss.CloseReason
		if closed == "" {
			closed = "(" + ss.State + ")"
		}
		fmt.Fprintf(w, "  %-12s  %-22s %-22s %-28s %5d/%-3d %7d  %s\n", short(ss.ID), ss.Consumer, ss.Provider, ss.Workgroup,
			ss.Envelopes, ss.MaxMessages, ss.Refused, closed)
	}
	fmt.Fprintf(w, "\n  refusals by reason:\n")
	keys := make([]string, 0, len(s.Refusals))
	for k := range s.Refusals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "    %3d  %s\n", s.Refusals[k], k)
	}
	verified := "VERIFIED"
	if !s.AuditVerified {
		verified = "NOT VERIFIED"
	}
	fmt.Fprintf(w, "\n  audit chain: %s; this round added %d records\n", verified, s.AuditRecords)
	if s.AuditExport != "" {
		fmt.Fprintf(w, "  audit export: %s\n", s.AuditExport)
	}
	if s.Brief != "" {
		fmt.Fprintf(w, "  brief:        %s\n", s.Brief)
	}
}

func (s Summary) refusalCount() int {
	n := 0
	for _, v := range s.Refusals {
		n += v
	}
	return n
}
