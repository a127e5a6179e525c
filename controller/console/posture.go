package console

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// posturePage is the posture page's data.
type posturePage struct {
	PostureView
	Counts        map[string]int // findings per severity
	Notice, Error string
}

func (c *Console) posture(w http.ResponseWriter, r *http.Request) {
	c.renderPosture(w, r, http.StatusOK, "", "")
}

func (c *Console) renderPosture(w http.ResponseWriter, r *http.Request, status int, notice, refusal string) {
	v := viewerOf(r).v
	pv, err := c.cfg.Source.Posture(r.Context(), v)
	if err != nil {
		c.sourceFail(w, r, err)
		return
	}
	p := posturePage{PostureView: pv, Counts: map[string]int{}, Notice: notice, Error: refusal}
	for _, f := range pv.Report.Findings {
		p.Counts[f.Severity]++
	}
	c.render(w, r, status, "posture", "Posture", "posture", p)
}

// refusalOf is the one-line message of a Source's refusal of an action, and the status to answer with; ok is
// false for an internal error, which sourceFail answers.
func refusalOf(err error) (int, string, bool) {
	for _, e := range []struct {
		sentinel error
		status   int
	}{{ErrInvalid, http.StatusBadRequest}, {ErrForbidden, http.StatusForbidden}, {ErrNotFound, http.StatusNotFound}} {
		if errors.Is(err, e.sentinel) {
			return e.status, strings.TrimPrefix(err.Error(), e.sentinel.Error()+": "), true
		}
	}
	return 0, "", false
}

func (c *Console) baseline(w http.ResponseWriter, r *http.Request) {
	b, err := c.cfg.Source.RecordBaseline(r.Context(), viewerOf(r).v)
	if err != nil {
		if st, msg, ok := refusalOf(err); ok {
			c.renderPosture(w, r, st, "", msg)
			return
		}
		c.sourceFail(w, r, err)
		return
	}
	c.renderPosture(w, r, http.StatusOK, fmt.Sprintf("Baseline of %s recorded (%d items): drift is measured against it from now on.", b.Scope, b.Items), "")
}

// suspend is the kill switch: suspend (or resume) an identity, with a reason, as the viewer.
func (c *Console) suspend(suspend bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v := viewerOf(r).v
		id := strings.TrimSpace(r.PostFormValue("spiffe_id"))
		reason := strings.Join(strings.Fields(r.PostFormValue("reason")), " ")
		if reason == "" {
			c.renderPosture(w, r, http.StatusBadRequest, "", "give a reason to suspend or resume "+id+": it goes into the audit trail under your identity")
			return
		}
		resp, err := c.cfg.Source.Suspend(r.Context(), v, id, reason, suspend)
		if err != nil {
			if st, msg, ok := refusalOf(err); ok {
				c.renderPosture(w, r, st, "", msg)
				return
			}
			c.sourceFail(w, r, err)
			return
		}
		c.log.Info("console: kill switch", "viewer", v.ID, "identity", resp.SPIFFEID, "suspended", resp.Suspended)
		notice := fmt.Sprintf("Resumed %s: it may connect again with the identity file it holds.", resp.SPIFFEID)
		if suspend {
			notice = fmt.Sprintf("Suspended %s: %d live connections cut, %d sessions closed.", resp.SPIFFEID, resp.CircuitsClosed, resp.SessionsClosed)
		}
		c.renderPosture(w, r, http.StatusOK, notice, "")
	}
}
