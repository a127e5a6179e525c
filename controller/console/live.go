package console

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/internal/audit"
)

// liveEvent is one line of the live view, as the page renders it and as the event stream sends it.
type liveEvent struct {
	Seq      uint64 `json:"seq"`
	Time     string `json:"time"`
	Kind     string `json:"kind"`
	Actor    string `json:"actor"`
	Session  string `json:"session,omitempty"`
	Summary  string `json:"summary"`
	Reason   string `json:"reason,omitempty"`
	Refused  bool   `json:"refused"`
	Decision string `json:"decision,omitempty"`
}

// live reports whether a record belongs in the live view: sessions opening and closing, envelopes flowing and
// being refused.
func live(r audit.Record) bool {
	return strings.HasPrefix(r.Kind, "session.") || strings.HasPrefix(r.Kind, "envelope.")
}

func toLive(r audit.Record) liveEvent {
	e := liveEvent{Seq: r.Seq, Time: r.Time.UTC().Format("15:04:05.000"), Kind: r.Kind, Actor: r.Actor, Session: r.Session,
		Reason: r.Reason, Refused: r.Decision == audit.DecisionDeny, Decision: r.Decision}
	var d struct {
		From  string `json:"from"`
		To    string `json:"to"`
		Type  string `json:"type"`
		Size  uint64 `json:"size"`
		Close string `json:"close_reason"`
	}
	_ = json.Unmarshal(r.Data, &d)
	switch {
	case r.Kind == "session.transition":
		e.Summary = d.From + " → " + d.To
		if d.Close != "" {
			e.Summary += " (" + d.Close + ")"
		}
	case strings.HasPrefix(r.Kind, "envelope.") && d.Type != "":
		e.Summary = fmt.Sprintf("%s %s → %s, %d B", d.Type, d.From, d.To, d.Size)
	default:
		e.Summary = r.Kind
	}
	return e
}

// maxLiveBacklog bounds the records one poll of the live view sends.
const maxLiveBacklog = 500

func (c *Console) livePage(w http.ResponseWriter, r *http.Request) {
	v := viewerOf(r).v
	page, err := c.cfg.Source.Audit(r.Context(), v, Query{Since: time.Now().Add(-24 * time.Hour), Limit: maxLiveBacklog})
	if err != nil {
		c.sourceFail(w, r, err)
		return
	}
	var events []liveEvent
	for i := len(page.Records) - 1; i >= 0 && len(events) < 50; i-- {
		if live(page.Records[i]) {
			events = append(events, toLive(page.Records[i]))
		}
	}
	c.render(w, r, http.StatusOK, "live", "Live", "live", struct {
		Cursor uint64
		Events []liveEvent
	}{page.Last, events})
}

// liveEvents streams new live records as server-sent events, from the cursor in Last-Event-ID or ?after.
func (c *Console) liveEvents(w http.ResponseWriter, r *http.Request) {
	v := viewerOf(r).v
	raw := r.Header.Get("Last-Event-ID")
	if raw == "" {
		raw = r.URL.Query().Get("after")
	}
	cursor, err := strconv.ParseUint(raw, 10, 64)
	if err != nil {
		c.fail(w, r, v, http.StatusBadRequest, "after must be the cursor the live page gave (a whole number)")
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		c.fail(w, r, v, http.StatusInternalServerError, "this server cannot stream")
		return
	}
	if !c.openLive(v.ID) {
		w.Header().Set("Retry-After", "5")
		c.fail(w, r, v, http.StatusTooManyRequests, fmt.Sprintf("%s has %d live views open already, the most one viewer may: close one", v.ID, c.cfg.MaxLivePerViewer))
		return
	}
	defer c.closeLive(v.ID)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n")
	flusher.Flush()
	tick := time.NewTicker(c.cfg.LivePoll)
	defer tick.Stop()
	idle := 0
	for {
		page, err := c.cfg.Source.Audit(r.Context(), v, Query{After: cursor, Limit: maxLiveBacklog})
		if err != nil {
			if r.Context().Err() == nil {
				c.log.Warn("console live view: reading the audit failed", "viewer", v.ID, "err", err)
			}
			return
		}
		sent := false
		for _, rec := range page.Records {
			if !live(rec) {
				continue
			}
			b, _ := json.Marshal(toLive(rec))
			fmt.Fprintf(w, "id: %d\nevent: audit\ndata: %s\n\n", rec.Seq, b)
			sent = true
		}
		if page.Last > cursor {
			cursor = page.Last
		}
		if !sent {
			// A comment now and then keeps idle proxies from closing the stream.
			if idle++; idle*int(c.cfg.LivePoll/time.Millisecond) >= 15000 {
				fmt.Fprint(w, ": idle\n\n")
				idle = 0
				sent = true
			}
		}
		if sent {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}

func (c *Console) openLive(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live[id] >= c.cfg.MaxLivePerViewer {
		return false
	}
	c.live[id]++
	return true
}

func (c *Console) closeLive(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live[id]--; c.live[id] <= 0 {
		delete(c.live, id)
	}
}
