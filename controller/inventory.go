package controller

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/posture"
	"github.com/umbra-mesh/umbra/internal/audit"
)

// The posture API (inventory, findings, baseline) is a thin layer over package posture: the controller takes
// a snapshot of its state and the package does the rest. Administrators only; an organisation administrator is
// answered for its own organisation.

// postureBaseline is a recorded baseline: the inventory's item digests (posture.Items), per scope.
type postureBaseline struct {
	Scope      string            `json:"scope"`
	RecordedAt time.Time         `json:"recorded_at"`
	RecordedBy string            `json:"recorded_by"`
	Items      map[string]string `json:"items"`
}

func scopeOf(c caller) posture.Scope {
	if isPlatformAdmin(c) {
		return posture.Scope{}
	}
	return posture.Scope{Org: c.rec.Org}
}

func (s *Server) postureRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+api.PathInventory, s.admin(func(ctx context.Context, c caller, _ []byte) (any, error) {
		st, err := s.postureState(ctx, false)
		if err != nil {
			return nil, internal(err)
		}
		return posture.Inventory(st, scopeOf(c)), nil
	}))
	mux.HandleFunc("GET "+api.PathPosture, func(w http.ResponseWriter, r *http.Request) {
		c := r.Context().Value(callerKey{}).(caller)
		if !c.rec.Admin {
			s.fail(w, r, failf(http.StatusForbidden, api.CodeForbidden, "%s is not an administrator", c.id))
			return
		}
		p, err := policyFrom(r.URL.Query())
		if err != nil {
			s.fail(w, r, err)
			return
		}
		out, err := s.postureReport(r.Context(), scopeOf(c), p)
		if err != nil {
			s.fail(w, r, internal(err))
			return
		}
		reply(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST "+api.PathPostureBase, s.admin(func(ctx context.Context, c caller, _ []byte) (any, error) {
		return s.recordBaseline(ctx, c)
	}))
}

// recordBaseline records the inventory of c's scope as the baseline later drift is measured against.
func (s *Server) recordBaseline(ctx context.Context, c caller) (api.BaselineResponse, error) {
	st, err := s.postureState(ctx, false)
	if err != nil {
		return api.BaselineResponse{}, internal(err)
	}
	scope := scopeOf(c)
	b := postureBaseline{Scope: scope.String(), RecordedAt: st.Now.UTC(), RecordedBy: c.id.String(),
		Items: posture.Items(posture.Inventory(st, scope))}
	raw, err := json.Marshal(b)
	if err != nil {
		return api.BaselineResponse{}, internal(err)
	}
	if len(raw) > tableMaxValueSize {
		return api.BaselineResponse{}, failf(http.StatusRequestEntityTooLarge, api.CodeBadRequest,
			"the inventory has %d items, too many for one baseline record (%d bytes, limit %d)", len(b.Items), len(raw), tableMaxValueSize)
	}
	if _, err := s.gov.baselines.kv.Put(ctx, b.Scope, raw); err != nil {
		return api.BaselineResponse{}, internal(err)
	}
	s.record(ctx, audit.Record{Kind: "posture.baseline", Actor: c.id.String(), Decision: "allow",
		Data: jsonRaw(map[string]any{"scope": b.Scope, "items": len(b.Items)})})
	return api.BaselineResponse{Scope: b.Scope, RecordedAt: b.RecordedAt, Items: len(b.Items)}, nil
}

// postureReport computes the findings and, if a baseline of the scope was recorded, the drift since it.
func (s *Server) postureReport(ctx context.Context, scope posture.Scope, p posture.Policy) (api.PostureReport, error) {
	st, err := s.postureState(ctx, true)
	if err != nil {
		return api.PostureReport{}, err
	}
	out := api.PostureReport{GeneratedAt: st.Now.UTC(), Scope: scope.String()}
	b, _, err := s.gov.baselines.get(ctx, scope.String())
	switch {
	case errors.Is(err, errNotFound):
	case err != nil:
		return out, err
	default:
		d := posture.Diff(b.Items, b.RecordedAt, posture.Items(posture.Inventory(st, scope)))
		out.Drift = &d
		st.Baseline = b.Items // for the findings that compare with it
	}
	if out.Findings = posture.Findings(st, scope, p); out.Findings == nil {
		out.Findings = []api.Finding{}
	}
	return out, nil
}

// policyFrom reads policy overrides from a query: max_svid_lifetime, max_duration, stale_after and unused_after
// as durations, max_messages, max_admins and reach_min_peers as counts, reach_factor as a number. Absent ones
// keep their defaults.
func policyFrom(q url.Values) (posture.Policy, error) {
	var p posture.Policy
	for _, d := range []struct {
		name string
		into *time.Duration
	}{{"max_svid_lifetime", &p.MaxSVIDLifetime}, {"max_duration", &p.MaxAdvertisedDuration}, {"stale_after", &p.StaleAfter},
		{"unused_after", &p.UnusedAfter}} {
		if v := q.Get(d.name); v != "" {
			x, err := time.ParseDuration(v)
			if err != nil || x <= 0 {
				return p, failf(http.StatusBadRequest, api.CodeBadRequest, "%s must be a positive duration such as 720h, not %q", d.name, v)
			}
			*d.into = x
		}
	}
	if v := q.Get("max_messages"); v != "" {
		x, err := strconv.ParseUint(v, 10, 64)
		if err != nil || x == 0 {
			return p, failf(http.StatusBadRequest, api.CodeBadRequest, "max_messages must be a positive count, not %q", v)
		}
		p.MaxAdvertisedMessages = x
	}
	for _, c := range []struct {
		name string
		into *int
	}{{"max_admins", &p.MaxAdmins}, {"reach_min_peers", &p.ReachMinPeers}} {
		if v := q.Get(c.name); v != "" {
			x, err := strconv.Atoi(v)
			if err != nil || x <= 0 {
				return p, failf(http.StatusBadRequest, api.CodeBadRequest, "%s must be a positive count, not %q", c.name, v)
			}
			*c.into = x
		}
	}
	if v := q.Get("reach_factor"); v != "" {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil || !(x >= 1) || x > 1e6 {
			return p, failf(http.StatusBadRequest, api.CodeBadRequest, "reach_factor must be a number of at least 1 such as 3, not %q", v)
		}
		p.ReachFactor = x
	}
	return p, nil
}

// postureState takes a snapshot of the controller's state for package posture; withUsage adds the summary of
// the newest audit records, which only the findings need (it takes seconds: see postureUsageWindow).
func (s *Server) postureState(ctx context.Context, withUsage bool) (posture.State, error) {
	st := posture.State{Now: time.Now(), SVIDLifetime: s.cfg.SVIDTTL, PlatformOrg: api.PlatformAdminOrg}
	orgs, err := s.gov.orgs.all(ctx)
	if err != nil {
		return st, err
	}
	for _, o := range orgs {
		st.Orgs = append(st.Orgs, posture.Org{Name: o.Name, CreatedAt: o.CreatedAt})
	}
	ids, err := s.ids.ids.all(ctx)
	if err != nil {
		return st, err
	}
	for _, r := range ids {
		st.Identities = append(st.Identities, s.postureIdentity(r))
	}
	if st.Workgroups, err = s.gov.wgs.all(ctx); err != nil {
		return st, err
	}
	if st.Advertisements, err = s.gov.ads.all(ctx); err != nil {
		return st, err
	}
	reports, err := s.gov.reports.all(ctx)
	if err != nil {
		return st, err
	}
	st.Reports = map[string]posture.GatewayReport{}
	for _, r := range reports {
		st.Reports[r.Gateway] = posture.GatewayReport{Kind: r.Kind, At: r.At, GatewayReport: r.Report}
	}
	routers, err := s.zc.Mgmt().EdgeRouters()
	if err != nil {
		return st, err
	}
	for _, r := range routers {
		st.Routers = append(st.Routers, api.InventoryRouter{Name: r.Name, Online: r.Online, Enrolled: r.Verified,
			Disabled: r.Disabled, Version: r.Version, CreatedAt: r.CreatedAt.UTC()})
	}
	if st.GrantUse, err = s.grantUse.snapshot(ctx); err != nil {
		return st, err
	}
	if withUsage {
		if st.Usage, err = s.postureUsage(ctx); err != nil {
			return st, err
		}
	}
	return st, nil
}

// postureUsageWindow bounds the audit records the posture reads to judge grant use: the newest ones. When they
// do not reach back the policy's --unused-after, the findings say so instead of judging. Reading and summarising
// 100,000 records took 3.7 to 4.6 s on a busy 2-core machine (each record's hash is checked as it is read).
const postureUsageWindow = 100000

// postureUsage summarises the newest postureUsageWindow audit records for package posture.
func (s *Server) postureUsage(ctx context.Context) (posture.Usage, error) {
	var u posture.Usage
	stats, err := s.gov.audit.Stats(ctx)
	if err != nil {
		return u, err
	}
	from := uint64(0)
	if stats.LastSeq > postureUsageWindow {
		from = stats.LastSeq - postureUsageWindow
	}
	// Nothing older exists when the read starts at the trail's first record and none was archived away.
	u.FromStart = from == 0 && stats.FirstSeq <= 1
	_, err = s.gov.audit.Scan(ctx, from, func(r audit.Record) error {
		u.Add(r)
		return nil
	})
	return u, err
}

func (s *Server) postureIdentity(r identityRecord) posture.Identity {
	id := posture.Identity{Org: r.Org, Kind: r.Kind, Name: r.Name, Admin: r.Admin, CreatedAt: r.CreatedAt,
		EnrolledAt: r.EnrolledAt, LastSeen: r.EnrolledAt}
	if parsed, err := spiffeid.FromString(r.SPIFFEID); err == nil {
		id.ID = parsed
	}
	switch {
	case r.State == stateRevoked:
		id.State = posture.StateRevoked
	case r.Suspended:
		id.State, id.SuspendReason = posture.StateSuspended, r.SuspendReason
	case r.State == statePending:
		id.State = posture.StatePending
	default:
		id.State = posture.StateEnrolled
	}
	// A certificate is issued at its enrollment or renewal, SVIDTTL before it expires: the latest is when the
	// identity last proved itself to the controller.
	for _, c := range r.Certs {
		if c.NotAfter.After(id.SVIDExpiresAt) {
			id.SVIDExpiresAt = c.NotAfter
		}
	}
	if issued := id.SVIDExpiresAt.Add(-s.cfg.SVIDTTL); !id.SVIDExpiresAt.IsZero() && issued.After(id.LastSeen) {
		id.LastSeen = issued
	}
	for _, a := range r.Attributes {
		name, ok := strings.CutPrefix(a, api.ServiceAttrPrefix)
		if !ok {
			continue
		}
		key := ""
		if svc, ok := strings.CutSuffix(name, api.DialAttrSuffix); ok {
			id.Dial, key = append(id.Dial, svc), "dial:"+svc
		} else if svc, ok := strings.CutSuffix(name, api.BindAttrSuffix); ok {
			id.Bind, key = append(id.Bind, svc), "bind:"+svc
		}
		if at, ok := r.GrantedAt[a]; ok && key != "" {
			if id.Granted == nil {
				id.Granted = map[string]time.Time{}
			}
			id.Granted[key] = at
		}
	}
	return id
}
