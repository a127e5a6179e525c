package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/workgroups"
)

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"iso": func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) },
	"pretty": func(raw json.RawMessage) string {
		var b bytes.Buffer
		if len(raw) == 0 || json.Indent(&b, raw, "", "  ") != nil {
			return string(raw)
		}
		return b.String()
	},
	"refused": func(r audit.Record) bool { return r.Decision == audit.DecisionDeny },
	"until":   untilNow,
	"sevs":    func() []string { return []string{"critical", "high", "medium", "low", "info"} },
	"f":       func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) },
	"usd":     func(v float64) string { return "$" + strconv.FormatFloat(v, 'f', 4, 64) },
	"ratio":   func(used, limit any) float64 { return ratio(toFloat(used), toFloat(limit)) },
}

func toFloat(v any) float64 {
	switch x := v.(type) {
	case int64:
		return float64(x)
	case float64:
		return x
	case int:
		return float64(x)
	}
	return 0
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	v := viewerOf(r).v
	ov, err := c.cfg.Source.Overview(r.Context(), v)
	if err != nil {
		c.sourceFail(w, r, err)
		return
	}
	slices.SortFunc(ov.Orgs, func(a, b Org) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(ov.Workgroups, func(a, b api.WorkgroupView) int { return strings.Compare(a.ID.String(), b.ID.String()) })
	slices.SortFunc(ov.Identities, func(a, b Identity) int { return strings.Compare(a.SPIFFEID, b.SPIFFEID) })
	c.render(w, r, http.StatusOK, "overview", "Overview", "overview", ov)
}

func (c *Console) sessions(w http.ResponseWriter, r *http.Request) {
	v := viewerOf(r).v
	ss, err := c.cfg.Source.Sessions(r.Context(), v)
	if err != nil {
		c.sourceFail(w, r, err)
		return
	}
	state := r.URL.Query().Get("state")
	if state != "" {
		ss = slices.DeleteFunc(ss, func(s api.SessionView) bool { return string(s.State) != state })
	}
	// Newest first: what an operator looks for is what just happened.
	slices.Reverse(ss)
	c.render(w, r, http.StatusOK, "sessions", "Sessions", "sessions", struct {
		State    string
		States   []string
		Sessions []api.SessionView
	}{state, []string{"proposed", "held", "accepted", "active", "closed", "rejected"}, ss})
}

// sessionPage is a session reconstructed from the audit.
type sessionPage struct {
	Session   workgroups.Session
	Timeline  []audit.Record
	Envelopes []workgroups.Header
	Refusals  []audit.Record
	Contract  string
}

func (c *Console) session(w http.ResponseWriter, r *http.Request) {
	v := viewerOf(r).v
	id := r.PathValue("id")
	if _, err := workgroups.ParseSessionID(id); err != nil {
		c.fail(w, r, v, http.StatusBadRequest, fmt.Sprintf("%q is not a session ID: they are \"ses_\" and 26 letters and digits, as the sessions page lists them", id))
		return
	}
	sa, err := c.cfg.Source.SessionAudit(r.Context(), v, id)
	if err != nil {
		c.sourceFail(w, r, err)
		return
	}
	p := sessionPage{Session: sa.Session, Envelopes: sa.Envelopes}
	for _, raw := range sa.Records {
		var rec audit.Record
		if err := json.Unmarshal(raw, &rec); err != nil {
			continue
		}
		p.Timeline = append(p.Timeline, rec)
		if rec.Decision == audit.DecisionDeny {
			p.Refusals = append(p.Refusals, rec)
		}
	}
	b, _ := json.MarshalIndent(sa.Session.Contract, "", "  ")
	p.Contract = string(b)
	c.render(w, r, http.StatusOK, "session", "Session "+id, "sessions", p)
}

// auditForm is the search form as the viewer filled it.
type auditForm struct {
	Actor, Session, Kind, Since, Until string
	Error                              string
	Page                               *AuditPage
	Newest                             []audit.Record
}

func (c *Console) auditSearch(w http.ResponseWriter, r *http.Request) {
	v := viewerOf(r).v
	q := r.URL.Query()
	f := auditForm{Actor: strings.TrimSpace(q.Get("actor")), Session: strings.TrimSpace(q.Get("session")),
		Kind: strings.TrimSpace(q.Get("kind")), Since: strings.TrimSpace(q.Get("since")), Until: strings.TrimSpace(q.Get("until"))}
	query := Query{Actor: f.Actor, Session: f.Session, Kind: f.Kind}
	var err error
	now := time.Now()
	if query.Since, err = parseWhen(f.Since, now); err != nil {
		f.Error = "since: " + err.Error()
	} else if query.Until, err = parseWhen(f.Until, now); err != nil {
		f.Error = "until: " + err.Error()
	}
	status := http.StatusOK
	if f.Error != "" {
		status = http.StatusBadRequest
	} else {
		page, err := c.cfg.Source.Audit(r.Context(), v, query)
		if err != nil {
			c.sourceFail(w, r, err)
			return
		}
		f.Page = &page
		f.Newest = slices.Clone(page.Records)
		slices.Reverse(f.Newest)
	}
	c.render(w, r, status, "audit", "Audit", "audit", f)
}

// parseWhen reads a time as a duration before now (90m), an RFC 3339 time, or what a datetime-local field sends.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04", "2006-01-02T15:04:05", time.DateOnly} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time: give a duration such as 90m, or a UTC time such as 2026-12-04T16:30", s)
}

func (c *Console) verify(w http.ResponseWriter, r *http.Request) {
	v := viewerOf(r).v
	rep, err := c.cfg.Source.Verify(r.Context(), v)
	if err != nil {
		c.sourceFail(w, r, err)
		return
	}
	status := http.StatusOK
	if !rep.OK {
		status = http.StatusConflict
	}
	c.render(w, r, status, "verify", "Audit chain", "audit", rep)
}

func (c *Console) export(w http.ResponseWriter, r *http.Request) {
	v := viewerOf(r).v
	// Refused before anything is written, so that the viewer gets a page rather than a broken download.
	if !v.Platform {
		c.sourceFail(w, r, fmt.Errorf("%w: only the platform administrator exports the audit stream", ErrForbidden))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Content-Disposition", `attachment; filename="umbra-audit-`+time.Now().UTC().Format("20060102T150405Z")+`.jsonl"`)
	if err := c.cfg.Source.Export(r.Context(), v, w); err != nil {
		// Headers are gone: the download ends short, and the log says why.
		c.log.Warn("console audit export failed", "viewer", v.ID, "err", err)
	}
}
