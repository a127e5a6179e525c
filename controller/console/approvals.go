package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// approvalsPage is the approvals page's data.
type approvalsPage struct {
	Approvals
	Pending, Decided []HeldCall
	Diffs            map[string][]diffLine // by version digest
	Notice, Error    string
}

// gatewayStatus is the status a page answers with when a gateway refused or failed.
func gatewayStatus(err error) (int, string) {
	var ge *GatewayError
	switch {
	case errors.As(err, &ge) && ge.Status >= 400 && ge.Status < 500:
		return ge.Status, ge.Error()
	case errors.As(err, &ge):
		return http.StatusBadGateway, ge.Error()
	case errors.Is(err, errNoGateway):
		return http.StatusNotFound, "this console bridge was started without that gateway: give its overlay service to `umbra ui` (--mcp-gateway, --llm-gateway)"
	}
	return http.StatusBadGateway, err.Error()
}

func (c *Console) approvals(w http.ResponseWriter, r *http.Request) {
	c.renderApprovals(w, r, http.StatusOK, "", "")
}

// renderApprovals lists the held calls and the versions awaiting a decision, with a notice of what was just
// done or the gateway's refusal of it.
func (c *Console) renderApprovals(w http.ResponseWriter, r *http.Request, status int, notice, refusal string) {
	p := approvalsPage{Notice: notice, Error: refusal, Diffs: map[string][]diffLine{}}
	a, err := c.cfg.Gateways.Approvals(r.Context())
	if err != nil {
		st, msg := gatewayStatus(err)
		if status == http.StatusOK {
			status = st
		}
		if p.Error != "" {
			p.Error += "; and then " + msg
		} else {
			p.Error = msg
		}
	}
	p.Approvals = a
	for _, hc := range a.Calls {
		if hc.Status == "pending" {
			p.Pending = append(p.Pending, hc)
		} else {
			p.Decided = append(p.Decided, hc)
		}
	}
	slices.SortFunc(p.Pending, func(a, b HeldCall) int { return a.Deadline.Compare(b.Deadline) })
	slices.SortFunc(p.Decided, func(a, b HeldCall) int { return b.Created.Compare(a.Created) })
	if len(p.Decided) > 50 {
		p.Decided = p.Decided[:50]
	}
	for _, v := range a.Versions {
		p.Diffs[v.Digest] = lineDiff(prettyJSON(v.Previous), prettyJSON(v.Definition))
	}
	c.render(w, r, status, "approvals", "Approvals", "approvals", p)
}

// reasonOf reads the decision's reason from a form: required, one line, at most 500 bytes.
func reasonOf(r *http.Request) (string, error) {
	reason := strings.Join(strings.Fields(r.PostFormValue("reason")), " ")
	switch {
	case reason == "":
		return "", errors.New("give a reason for the decision: it goes into the audit trail under your identity")
	case len(reason) > 500:
		return "", fmt.Errorf("the reason is %d bytes long; keep it under 500", len(reason))
	}
	return reason, nil
}

func verbOf(r *http.Request) (approve bool, ok bool) {
	switch r.PathValue("verb") {
	case "approve":
		return true, true
	case "deny":
		return false, true
	}
	return false, false
}

func (c *Console) decideCall(w http.ResponseWriter, r *http.Request) {
	approve, ok := verbOf(r)
	if !ok {
		c.fail(w, r, viewerOf(r).v, http.StatusNotFound, "a held call is approved or denied: /approvals/calls/ID/approve or /deny")
		return
	}
	reason, err := reasonOf(r)
	if err != nil {
		c.renderApprovals(w, r, http.StatusBadRequest, "", err.Error())
		return
	}
	id := r.PathValue("id")
	hc, err := c.cfg.Gateways.DecideCall(r.Context(), id, r.PostFormValue("digest"), reason, approve)
	if err != nil {
		st, msg := gatewayStatus(err)
		c.renderApprovals(w, r, st, "", msg)
		return
	}
	c.log.Info("console: held call decided", "viewer", viewerOf(r).v.ID, "approval", id, "approve", approve)
	c.renderApprovals(w, r, http.StatusOK, fmt.Sprintf("Call %s (%s by %s): %s by you. The gateway recorded it in the audit.", hc.ID, hc.Tool, hc.Caller, hc.Status), "")
}

func (c *Console) decideVersion(w http.ResponseWriter, r *http.Request) {
	approve, ok := verbOf(r)
	if !ok {
		c.fail(w, r, viewerOf(r).v, http.StatusNotFound, "a version is approved or denied: /approvals/versions/approve or /deny")
		return
	}
	reason, err := reasonOf(r)
	if err != nil {
		c.renderApprovals(w, r, http.StatusBadRequest, "", err.Error())
		return
	}
	ref := VersionRef{Kind: r.PostFormValue("kind"), Backend: r.PostFormValue("backend"), Tool: r.PostFormValue("tool"), Digest: r.PostFormValue("digest")}
	if err := c.cfg.Gateways.DecideVersion(r.Context(), ref, reason, approve); err != nil {
		st, msg := gatewayStatus(err)
		c.renderApprovals(w, r, st, "", msg)
		return
	}
	verb := "refused"
	if approve {
		verb = "approved"
	}
	c.renderApprovals(w, r, http.StatusOK, fmt.Sprintf("The %s %s of backend %s (version %s) is %s.", ref.Kind, ref.Tool, ref.Backend, short(ref.Digest), verb), "")
}

func short(digest string) string {
	if len(digest) > 16 {
		return digest[:16] + "…"
	}
	return digest
}

func prettyJSON(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var b bytes.Buffer
	if json.Indent(&b, raw, "", "  ") != nil {
		return string(raw)
	}
	return b.String()
}

// diffLine is one line of a diff: Op is " " (in both), "-" (only in the old) or "+" (only in the new).
type diffLine struct {
	Op, Text string
}

// maxDiffLines bounds the lines of each side lineDiff compares line by line; longer texts are shown whole, the
// old removed and the new added.
const maxDiffLines = 2000

// lineDiff is the line diff of a and b (a longest common subsequence of lines). Lines are compared without a
// trailing comma, so that a JSON member that became the last one, or stopped being it, is not a change.
func lineDiff(a, b string) []diffLine {
	split := func(s string) []string {
		if s == "" {
			return nil
		}
		return strings.Split(strings.TrimRight(s, "\n"), "\n")
	}
	x, y := split(a), split(b)
	if len(x) > maxDiffLines || len(y) > maxDiffLines {
		var out []diffLine
		for _, l := range x {
			out = append(out, diffLine{"-", l})
		}
		for _, l := range y {
			out = append(out, diffLine{"+", l})
		}
		return out
	}
	same := func(i, j int) bool { return strings.TrimSuffix(x[i], ",") == strings.TrimSuffix(y[j], ",") }
	// lcs[i][j] is the length of the longest common subsequence of x[i:] and y[j:].
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if same(i, j) {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []diffLine
	i, j := 0, 0
	for i < len(x) && j < len(y) {
		switch {
		case same(i, j):
			out = append(out, diffLine{" ", y[j]})
			i, j = i+1, j+1
		case lcs[i+1][j] >= lcs[i][j+1]:
			out = append(out, diffLine{"-", x[i]})
			i++
		default:
			out = append(out, diffLine{"+", y[j]})
			j++
		}
	}
	for ; i < len(x); i++ {
		out = append(out, diffLine{"-", x[i]})
	}
	for ; j < len(y); j++ {
		out = append(out, diffLine{"+", y[j]})
	}
	return out
}

// untilNow says how long until t, for a deadline.
func untilNow(t time.Time) string {
	d := time.Until(t).Round(time.Second)
	if d <= 0 {
		return "past"
	}
	return "in " + d.String()
}
