package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/console"
	"github.com/umbra-mesh/umbra/controller/posture"
	"github.com/umbra-mesh/umbra/internal/audit"
)

// The console is hosted here because the controller holds the state it shows. It is a dark service of its own
// (console.ServiceName), which only identities carrying console.DialAttr (administrators) may dial; every request
// is then authenticated exactly as the API's are (the SVID of the inner mutual TLS, a known, unrevoked identity)
// and must come from an administrator.

// consoleScanWindow bounds the audit records one console search looks at: the newest ones.
const consoleScanWindow = 20000

// consoleLastSeenWindow is how many of the newest audit records "last seen" is taken from.
const consoleLastSeenWindow = 5000

// startConsole hosts the console on the overlay and returns its listener.
func (s *Server) startConsole(ctx context.Context, self *agentsdk.Agent) (net.Listener, error) {
	if err := s.grantConsoleToAdmins(ctx); err != nil {
		return nil, fmt.Errorf("controller: console: %w", err)
	}
	c, err := console.New(console.Config{Source: consoleSource{s}, Viewer: consoleViewer, Logger: s.log.With("part", "console")})
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	ln, err := self.Listen(console.ServiceName)
	if err != nil {
		return nil, fmt.Errorf("controller: console: %w", err)
	}
	// No write timeout: the live view is one long response.
	srv := &http.Server{Handler: s.authenticate(c.Handler()), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	s.tasks.spawn(func() { s.serveHTTP(ctx, "console server", srv, ln) })
	return ln, nil
}

// grantConsoleToAdmins gives console.DialAttr to administrators registered before the console existed.
func (s *Server) grantConsoleToAdmins(ctx context.Context) error {
	all, err := s.ids.ids.all(ctx)
	if err != nil {
		return err
	}
	for _, r := range all {
		if !r.Admin || r.State == stateRevoked || slices.Contains(r.Attributes, console.DialAttr) {
			continue
		}
		id, err := spiffeid.FromString(r.SPIFFEID)
		if err != nil {
			continue
		}
		rec, err := s.ids.update(ctx, id, func(r *identityRecord) error {
			if !slices.Contains(r.Attributes, console.DialAttr) {
				r.Attributes = append(r.Attributes, console.DialAttr)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if err := s.zc.Mgmt().SetAttributes(rec.OverlayID, rec.Attributes); err != nil {
			return err
		}
	}
	return nil
}

// consoleViewer names the administrator behind a console request; s.authenticate has verified its SVID.
func consoleViewer(r *http.Request) (console.Viewer, error) {
	c, ok := r.Context().Value(callerKey{}).(caller)
	if !ok {
		return console.Viewer{}, errors.New("no verified identity")
	}
	if !c.rec.Admin {
		return console.Viewer{}, fmt.Errorf("%s is not an administrator: the console is for the platform's and organisations' administrators", c.id)
	}
	return console.Viewer{ID: c.id.String(), Org: c.rec.Org, Platform: isPlatformAdmin(c)}, nil
}

// consoleSource is the controller's state as the console reads it, each answer limited to what the viewer sees.
type consoleSource struct{ s *Server }

var _ console.Source = consoleSource{}

// caller looks the viewer up again: an administrator revoked while its page is open sees nothing more.
func (cs consoleSource) caller(ctx context.Context, v console.Viewer) (caller, error) {
	id, err := spiffeid.FromString(v.ID)
	if err != nil {
		return caller{}, fmt.Errorf("%w: %s is not a SPIFFE ID", console.ErrForbidden, v.ID)
	}
	rec, _, err := cs.s.ids.get(ctx, id)
	if err != nil {
		return caller{}, fmt.Errorf("%w: %s is not a registered identity", console.ErrForbidden, id)
	}
	if rec.State == stateRevoked || !rec.Admin {
		return caller{}, fmt.Errorf("%w: %s is revoked or no longer an administrator", console.ErrForbidden, id)
	}
	return caller{id: id, rec: rec}, nil
}

// consoleErr maps the controller's faults to the console's sentinels.
func consoleErr(err error) error {
	var f *fault
	if errors.As(err, &f) {
		switch f.status {
		case http.StatusNotFound, http.StatusGone:
			return fmt.Errorf("%w: %s", console.ErrNotFound, f.message)
		case http.StatusForbidden:
			return fmt.Errorf("%w: %s", console.ErrForbidden, f.message)
		case http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge:
			return fmt.Errorf("%w: %s", console.ErrInvalid, f.message)
		}
	}
	return err
}

func (cs consoleSource) Overview(ctx context.Context, v console.Viewer) (console.Overview, error) {
	var out console.Overview
	c, err := cs.caller(ctx, v)
	if err != nil {
		return out, err
	}
	orgs, err := cs.s.gov.orgs.all(ctx)
	if err != nil {
		return out, err
	}
	for _, o := range orgs {
		if v.Platform || o.Name == v.Org {
			out.Orgs = append(out.Orgs, console.Org{Name: o.Name, Admin: o.AdminID, CreatedAt: o.CreatedAt})
		}
	}
	if out.Workgroups, err = cs.s.listWorkgroups(ctx, c); err != nil {
		return out, consoleErr(err)
	}
	ids, err := cs.s.ids.ids.all(ctx)
	if err != nil {
		return out, err
	}
	seen, err := cs.lastSeen(ctx)
	if err != nil {
		return out, err
	}
	for _, r := range ids {
		if !v.Platform && r.Org != v.Org {
			continue
		}
		out.Identities = append(out.Identities, console.Identity{SPIFFEID: r.SPIFFEID, Org: r.Org, Kind: r.Kind, Name: r.Name,
			Admin: r.Admin, State: string(r.State), EnrolledAt: r.EnrolledAt, LastSeen: seen[r.SPIFFEID]})
	}
	return out, nil
}

// lastSeen is, per actor, the time of its newest record among the newest consoleLastSeenWindow.
func (cs consoleSource) lastSeen(ctx context.Context) (map[string]time.Time, error) {
	last, err := cs.s.gov.audit.Scan(ctx, math.MaxUint64, nil)
	if err != nil {
		return nil, err
	}
	seen := map[string]time.Time{}
	from := uint64(0)
	if last > consoleLastSeenWindow {
		from = last - consoleLastSeenWindow
	}
	_, err = cs.s.gov.audit.Scan(ctx, from, func(r audit.Record) error {
		if r.Time.After(seen[r.Actor]) {
			seen[r.Actor] = r.Time
		}
		return nil
	})
	return seen, err
}

func (cs consoleSource) Sessions(ctx context.Context, v console.Viewer) ([]api.SessionView, error) {
	c, err := cs.caller(ctx, v)
	if err != nil {
		return nil, err
	}
	out, err := cs.s.listSessions(ctx, c, "")
	return out, consoleErr(err)
}

func (cs consoleSource) SessionAudit(ctx context.Context, v console.Viewer, id string) (api.SessionAudit, error) {
	c, err := cs.caller(ctx, v)
	if err != nil {
		return api.SessionAudit{}, err
	}
	sess, err := cs.s.auditableSession(ctx, c, id)
	if err != nil {
		return api.SessionAudit{}, consoleErr(err)
	}
	return cs.s.sessionAudit(ctx, sess)
}

// Audit searches the newest records (at most consoleScanWindow of them after q.After).
func (cs consoleSource) Audit(ctx context.Context, v console.Viewer, q console.Query) (console.AuditPage, error) {
	c, err := cs.caller(ctx, v)
	if err != nil {
		return console.AuditPage{}, err
	}
	visible := func(audit.Record) bool { return true }
	if !v.Platform {
		// An organisation's administrator sees what its organisation's identities did, what happened in its
		// organisation's workgroups, and the records of the sessions it may see.
		mine, err := cs.s.listSessions(ctx, c, "")
		if err != nil {
			return console.AuditPage{}, consoleErr(err)
		}
		sessions := map[string]bool{}
		for _, sv := range mine {
			sessions[sv.ID.String()] = true
		}
		visible = func(r audit.Record) bool {
			if id, err := spiffeid.FromString(r.Actor); err == nil && orgOf(id) == v.Org {
				return true
			}
			return r.Session != "" && sessions[r.Session] || strings.HasPrefix(r.Workgroup, v.Org+"/")
		}
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 200
	}
	last, err := cs.s.gov.audit.Scan(ctx, math.MaxUint64, nil)
	if err != nil {
		return console.AuditPage{}, err
	}
	page := console.AuditPage{Last: last}
	from := q.After
	if last > consoleScanWindow && last-consoleScanWindow > from {
		from, page.Partial = last-consoleScanWindow, true
	}
	kind, prefix := strings.CutSuffix(q.Kind, "*")
	prefix = prefix || strings.HasSuffix(kind, ".")
	_, err = cs.s.gov.audit.Scan(ctx, from, func(r audit.Record) error {
		if r.Seq > last {
			return nil
		}
		page.Scanned++
		switch {
		case q.Actor != "" && r.Actor != q.Actor,
			q.Session != "" && r.Session != q.Session,
			kind != "" && !prefix && r.Kind != kind,
			kind != "" && prefix && !strings.HasPrefix(r.Kind, kind),
			!q.Since.IsZero() && r.Time.Before(q.Since),
			!q.Until.IsZero() && r.Time.After(q.Until),
			!visible(r):
			return nil
		}
		page.Records = append(page.Records, r)
		if len(page.Records) > limit {
			page.Records = slices.Delete(page.Records, 0, 1)
		}
		return nil
	})
	return page, err
}

func (cs consoleSource) Verify(ctx context.Context, v console.Viewer) (api.AuditReport, error) {
	if _, err := cs.caller(ctx, v); err != nil {
		return api.AuditReport{}, err
	}
	if !v.Platform {
		return api.AuditReport{}, fmt.Errorf("%w: only the platform administrator verifies the audit chain", console.ErrForbidden)
	}
	return cs.s.verifyAudit(ctx, "")
}

func (cs consoleSource) Export(ctx context.Context, v console.Viewer, w io.Writer) error {
	if _, err := cs.caller(ctx, v); err != nil {
		return err
	}
	if !v.Platform {
		return fmt.Errorf("%w: only the platform administrator exports the audit stream", console.ErrForbidden)
	}
	// Like the API's export: it ends in a signed checkpoint, so that it verifies offline.
	if err := cs.s.checkpoint(ctx); err != nil {
		return fmt.Errorf("checkpoint before export: %w", err)
	}
	_, err := cs.s.gov.audit.Export(ctx, w, nil)
	return err
}

// Posture answers as `umbra posture` (default policy) and `umbra inventory` do, for the viewer's scope.
func (cs consoleSource) Posture(ctx context.Context, v console.Viewer) (console.PostureView, error) {
	c, err := cs.caller(ctx, v)
	if err != nil {
		return console.PostureView{}, err
	}
	rep, err := cs.s.postureReport(ctx, scopeOf(c), posture.Policy{})
	if err != nil {
		return console.PostureView{}, err
	}
	st, err := cs.s.postureState(ctx, false)
	if err != nil {
		return console.PostureView{}, err
	}
	return console.PostureView{Report: rep, Inventory: posture.Inventory(st, scopeOf(c))}, nil
}

func (cs consoleSource) RecordBaseline(ctx context.Context, v console.Viewer) (api.BaselineResponse, error) {
	c, err := cs.caller(ctx, v)
	if err != nil {
		return api.BaselineResponse{}, err
	}
	out, err := cs.s.recordBaseline(ctx, c)
	return out, consoleErr(err)
}

// Suspend is the kill switch as `umbra identity suspend|resume`: the same checks (an organisation's
// administrator suspends its own organisation's identities, not gateways, not itself), the same audit record
// under the viewer.
func (cs consoleSource) Suspend(ctx context.Context, v console.Viewer, id, reason string, suspend bool) (api.SuspendResponse, error) {
	c, err := cs.caller(ctx, v)
	if err != nil {
		return api.SuspendResponse{}, err
	}
	verb := "resume"
	if suspend {
		verb = "suspend"
	}
	target, err := cs.s.suspendTarget(ctx, c, verb, api.SuspendRequest{SPIFFEID: id, Reason: reason})
	if err != nil {
		return api.SuspendResponse{}, consoleErr(err)
	}
	var out api.SuspendResponse
	if suspend {
		out, err = cs.s.suspend(ctx, c.id, target, reason)
	} else {
		out, err = cs.s.resume(ctx, c.id, target, reason)
	}
	return out, consoleErr(err)
}
