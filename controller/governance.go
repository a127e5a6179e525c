package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/internal/zitictrl"
	"github.com/umbra-mesh/umbra/workgroups"
)

// orgRecord is an organisation known to the controller.
type orgRecord struct {
	Name      string    `json:"name"`
	AdminID   string    `json:"admin_id"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by"`
}

// governance holds the A2A state: organisations, workgroups, advertisements and sessions in JetStream KV,
// envelopes and the audit chain in JetStream streams.
type governance struct {
	orgs     table[orgRecord]
	wgs      table[workgroups.Workgroup]
	ads      table[workgroups.Advertisement]
	sessions table[workgroups.Session]
	audit    *audit.Log
	env      *envstore.Store
	rec      *envelopeRecorder
	lead     *leadership // who records and raises alerts among controllers sharing a NATS cluster; nil: alone
	refusals *refusalLimiter
	authz    *orgPolicies // the live authoriser: built-in and organisation policies (orgpolicy.go)
	// wgCopy and adCopy are wgs and ads in memory, kept current by watches, for the reads of every record
	// (memberships, discovery, overlay attributes) that would otherwise list a whole bucket per request.
	wgCopy *tableCopy[workgroups.Workgroup]
	adCopy *tableCopy[workgroups.Advertisement]

	// sessionStream is the stream under the sessions bucket: the retention removes every revision of an
	// ended session from it at once (retention.go).
	sessionStream jetstream.Stream
	rates         table[proposalRate]    // proposals per identity and window (ratelimit.go)
	budget        *auditBudget           // audit bytes per identity and day (auditbudget.go); budget.run is the caller's
	baselines     table[postureBaseline] // recorded posture baselines by scope (inventory.go)
	reports       table[gatewayReport]   // each gateway's newest report, by idKey (gateways.go)
	keepEnded     int                    // ended sessions kept per consumer within the retention: endedPerConsumer

	mu        sync.Mutex
	deadlines map[string]time.Time // open sessions by id, for expiry
	locks     map[string]*sessionLock
}

type sessionLock struct {
	mu   sync.Mutex
	refs int
}

// envelopeStream is the JetStream stream of relayed envelopes.
const envelopeStream = "UMBRA_ENVELOPES"

// openGovernance opens the stores. The envelope recorder (rec.run), the refusal summariser (summariseRefusals)
// and the copies of the workgroups, advertisements and organisation policies (wgCopy.run, adCopy.run,
// authz.copy.run) are the caller's to run.
func openGovernance(ctx context.Context, js jetstream.JetStream, log *slog.Logger, controllerID string, cfg Config) (*governance, error) {
	g := &governance{deadlines: map[string]time.Time{}, locks: map[string]*sessionLock{}, keepEnded: endedPerConsumer,
		refusals: newRefusalLimiter(refusalWindow, cfg.RefusalRecordsPerMinute)}
	var err error
	if g.orgs, err = openTable[orgRecord](ctx, js, "umbra_orgs"); err != nil {
		return nil, err
	}
	if g.wgs, err = openTable[workgroups.Workgroup](ctx, js, "umbra_workgroups"); err != nil {
		return nil, err
	}
	if g.ads, err = openTable[workgroups.Advertisement](ctx, js, "umbra_advertisements"); err != nil {
		return nil, err
	}
	if g.sessions, err = openTable[workgroups.Session](ctx, js, "umbra_sessions"); err != nil {
		return nil, err
	}
	if g.sessionStream, err = streamOf(ctx, js, "KV_umbra_sessions"); err != nil {
		return nil, fmt.Errorf("sessions stream: %w", err)
	}
	if g.rates, err = openProposalRates(ctx, js); err != nil {
		return nil, err
	}
	if g.baselines, err = openTable[postureBaseline](ctx, js, "umbra_posture_baselines"); err != nil {
		return nil, err
	}
	if g.reports, err = openTable[gatewayReport](ctx, js, "umbra_gateway_reports"); err != nil {
		return nil, err
	}
	if g.budget, err = openAuditBudgets(ctx, js, cfg.AuditBytesPerIdentityDay, controllerID, log); err != nil {
		return nil, err
	}
	aopts := cfg.auditOptions()
	aopts.Stored = g.budget.stored
	if g.audit, err = audit.Open(ctx, js, aopts); err != nil {
		return nil, err
	}
	if g.env, err = envstore.Open(ctx, js, cfg.envelopeOptions(envelopeStream)); err != nil {
		return nil, err
	}
	hints, err := openTable[recorderHint](ctx, js, "umbra_recorder")
	if err != nil {
		return nil, err
	}
	stream, err := streamOf(ctx, js, envelopeStream)
	if err != nil {
		return nil, fmt.Errorf("envelope stream: %w", err)
	}
	g.rec = newEnvelopeRecorder(g.env, g.audit, hints, stream)
	g.rec.log, g.rec.actor = log, controllerID
	if cfg.NATSClusterListen != "" {
		// Other controllers may share the trail: one records at a time, all follow (recorder.go).
		g.lead = newLeadership(immediate(hints.kv), controllerID, cfg.RecorderLease, log)
		g.rec.shared, g.rec.lead = true, g.lead
	}
	if g.authz, err = openOrgPolicies(ctx, js, log); err != nil {
		return nil, err
	}
	sessions, err := g.sessions.all(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range sessions {
		if s.State == workgroups.StateAccepted || s.State == workgroups.StateActive {
			g.deadlines[s.ID.String()] = s.Deadline()
		}
	}
	g.wgCopy = newTableCopy(g.wgs, "workgroups", log)
	g.adCopy = newTableCopy(g.ads, "advertisements", log)
	g.adCopy.index = adWorkgroupNames
	g.wgCopy.index = wgMemberNames
	return g, nil
}

// lockSession serialises the relay's work on one session; unlock releases it.
func (g *governance) lockSession(id string) (unlock func()) {
	g.mu.Lock()
	l := g.locks[id]
	if l == nil {
		l = &sessionLock{}
		g.locks[id] = l
	}
	l.refs++
	g.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		g.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(g.locks, id)
		}
		g.mu.Unlock()
	}
}

func wgKey(id workgroups.WorkgroupID) string { return id.Org + "." + id.Name }

// record appends an audit record; a failure to audit is logged loudly, since the action already happened.
func (s *Server) record(ctx context.Context, r audit.Record) {
	if _, err := s.gov.audit.Append(ctx, r); err != nil {
		s.log.Error("audit append failed", "kind", r.Kind, "session", r.Session, "err", err)
	}
}

func jsonRaw(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	return b
}

func decisionRecord(d workgroups.Decision) (string, json.RawMessage) {
	if d.Allow {
		return "allow", jsonRaw(d.Diagnostic)
	}
	return "deny", jsonRaw(d.Diagnostic)
}

// wgFault maps the domain's sentinel errors to what a caller sees.
func wgFault(err error) error {
	var f *fault
	switch {
	case errors.As(err, &f):
		return f
	case errors.Is(err, workgroups.ErrNotAuthorized):
		return &fault{status: http.StatusForbidden, code: api.CodeForbidden, message: err.Error()}
	case errors.Is(err, workgroups.ErrNotFound), errors.Is(err, errNotFound):
		return &fault{status: http.StatusNotFound, code: api.CodeNotFound, message: err.Error()}
	case errors.Is(err, workgroups.ErrConflict), errors.Is(err, workgroups.ErrLastAdmin), errors.Is(err, workgroups.ErrIllegalTransition),
		errors.Is(err, workgroups.ErrSessionClosed), errors.Is(err, jetstream.ErrKeyExists):
		return &fault{status: http.StatusConflict, code: api.CodeConflict, message: err.Error()}
	case errors.Is(err, workgroups.ErrInvalid), errors.Is(err, workgroups.ErrMalformed), errors.Is(err, workgroups.ErrTooLarge):
		return &fault{status: http.StatusBadRequest, code: api.CodeBadRequest, message: err.Error()}
	}
	return internal(err)
}

func isPlatformAdmin(c caller) bool { return c.rec.Admin && c.rec.Org == api.PlatformAdminOrg }

// createOrg registers an organisation and its first administrator, returning that administrator's token.
func (s *Server) createOrg(ctx context.Context, c caller, req api.CreateOrgRequest) (api.CreateOrgResponse, error) {
	if !isPlatformAdmin(c) {
		return api.CreateOrgResponse{}, failf(http.StatusForbidden, api.CodeForbidden, "only the platform administrator creates organisations")
	}
	if err := workgroups.ValidateName(req.Name); err != nil || req.Name == api.PlatformAdminOrg {
		return api.CreateOrgResponse{}, failf(http.StatusBadRequest, api.CodeBadRequest, "organisation name %q is not valid: use 1-63 of [a-z0-9_-], starting with a letter", req.Name)
	}
	adminID := spiffeid.RequireFromSegments(s.td, req.Name, "admin", "admin")
	rec := orgRecord{Name: req.Name, AdminID: adminID.String(), CreatedAt: time.Now().UTC(), CreatedBy: c.id.String()}
	if err := s.gov.orgs.create(ctx, req.Name, rec); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return api.CreateOrgResponse{}, failf(http.StatusConflict, api.CodeConflict, "organisation %s already exists", req.Name)
		}
		return api.CreateOrgResponse{}, internal(err)
	}
	resp, err := s.createIdentity(ctx, c.id, api.CreateIdentityRequest{Org: req.Name, Kind: "admin", Name: "admin", Admin: true, TokenTTL: req.TokenTTL})
	if err != nil {
		return api.CreateOrgResponse{}, err
	}
	s.record(ctx, audit.Record{Kind: "org.created", Actor: c.id.String(), Decision: "allow", Data: jsonRaw(rec)})
	return api.CreateOrgResponse{Org: req.Name, AdminID: resp.SPIFFEID, AdminToken: resp.Token}, nil
}

// membershipsOf is id's memberships, as of this call or later, read from the workgroups id is a member of only.
func (s *Server) membershipsOf(ctx context.Context, id spiffeid.ID) ([]workgroups.Membership, error) {
	mine, err := s.gov.wgCopy.currentIn(ctx, []string{id.String()})
	if err != nil {
		return nil, err
	}
	return workgroups.MembershipsOf(id, mine), nil
}

// memberships is id's memberships and every workgroup, as of this call or later.
func (s *Server) memberships(ctx context.Context, id spiffeid.ID) ([]workgroups.Membership, []workgroups.Workgroup, error) {
	all, err := s.gov.wgCopy.current(ctx)
	if err != nil {
		return nil, nil, err
	}
	return workgroups.MembershipsOf(id, all), all, nil
}

func (s *Server) createWorkgroup(ctx context.Context, c caller, req api.CreateWorkgroupRequest) (api.WorkgroupView, error) {
	if !c.rec.Admin {
		return api.WorkgroupView{}, failf(http.StatusForbidden, api.CodeForbidden, "only an organisation administrator creates workgroups")
	}
	scope := workgroups.ScopeIntraOrg
	if len(req.Invite) > 0 {
		scope = workgroups.ScopeInterOrg
	}
	for _, org := range req.Invite {
		if _, _, err := s.gov.orgs.get(ctx, org); err != nil {
			return api.WorkgroupView{}, failf(http.StatusNotFound, api.CodeNotFound, "no organisation %q to invite", org)
		}
	}
	id := workgroups.WorkgroupID{Org: c.rec.Org, Name: req.Name}
	w, err := workgroups.NewWorkgroup(id, scope, c.id, req.Invite, time.Now().UTC())
	if err != nil {
		return api.WorkgroupView{}, wgFault(err)
	}
	if err := s.gov.wgs.create(ctx, wgKey(id), w); err != nil {
		return api.WorkgroupView{}, wgFault(err)
	}
	s.record(ctx, audit.Record{Kind: "workgroup.created", Actor: c.id.String(), Workgroup: id.String(), Decision: "allow", Data: jsonRaw(w)})
	if err := s.syncOverlay(ctx, c.id); err != nil {
		return api.WorkgroupView{}, internal(err)
	}
	return api.WorkgroupView{Workgroup: w, Status: w.Status()}, nil
}

// changeWorkgroup applies op to a workgroup the caller can see, records it, and resynchronises the overlay for
// the identities listed by op's result.
func (s *Server) changeWorkgroup(ctx context.Context, c caller, raw string, kind string, op func(w *workgroups.Workgroup) ([]spiffeid.ID, error)) (api.WorkgroupView, error) {
	id, err := workgroups.ParseWorkgroupID(raw)
	if err != nil {
		return api.WorkgroupView{}, wgFault(err)
	}
	var touched []spiffeid.ID
	w, err := s.gov.wgs.update(ctx, wgKey(id), func(w *workgroups.Workgroup) error {
		if !seesWorkgroup(c, *w) {
			return errNotFound
		}
		var err error
		touched, err = op(w)
		return err
	})
	if errors.Is(err, errNotFound) {
		return api.WorkgroupView{}, noWorkgroup(id)
	}
	if err != nil {
		s.record(ctx, audit.Record{Kind: kind, Actor: c.id.String(), Workgroup: id.String(), Decision: "deny", Reason: err.Error()})
		return api.WorkgroupView{}, wgFault(err)
	}
	s.record(ctx, audit.Record{Kind: kind, Actor: c.id.String(), Workgroup: id.String(), Decision: "allow", Data: jsonRaw(w)})
	if err := s.syncOverlay(ctx, touched...); err != nil {
		return api.WorkgroupView{}, internal(err)
	}
	return api.WorkgroupView{Workgroup: w, Status: w.Status()}, nil
}

// seesWorkgroup tells whether c may know that w exists: a member, an administrator of an organisation that
// owns it or is invited to it, or the platform administrator. Everyone else is answered as if it did not exist.
func seesWorkgroup(c caller, w workgroups.Workgroup) bool {
	if isPlatformAdmin(c) {
		return true
	}
	if _, ok := w.Member(c.id); ok {
		return true
	}
	if !c.rec.Admin {
		return false
	}
	if w.ID.Org == c.rec.Org || w.OrgAdmitted(c.rec.Org) {
		return true
	}
	for _, inv := range w.Invitations {
		if inv.Org == c.rec.Org {
			return true
		}
	}
	return false
}

// noWorkgroup is the one answer for a workgroup that does not exist or that the caller may not see.
func noWorkgroup(id workgroups.WorkgroupID) error {
	return failf(http.StatusNotFound, api.CodeNotFound, "no workgroup %s", id)
}

func memberIDs(w workgroups.Workgroup) []spiffeid.ID {
	out := make([]spiffeid.ID, 0, len(w.Members))
	for _, m := range w.Members {
		out = append(out, m.Identity)
	}
	return out
}

func (s *Server) answerWorkgroup(ctx context.Context, c caller, req api.AnswerWorkgroupRequest) (api.WorkgroupView, error) {
	if !c.rec.Admin {
		return api.WorkgroupView{}, failf(http.StatusForbidden, api.CodeForbidden, "only an organisation administrator answers invitations")
	}
	kind := "workgroup.accepted"
	if req.Decline {
		kind = "workgroup.declined"
	}
	return s.changeWorkgroup(ctx, c, req.Workgroup, kind, func(w *workgroups.Workgroup) ([]spiffeid.ID, error) {
		now := time.Now().UTC()
		if req.Decline {
			return nil, w.DeclineInvitation(c.id, now)
		}
		if err := w.AcceptInvitation(c.id, now); err != nil {
			return nil, err
		}
		return memberIDs(*w), nil
	})
}

func (s *Server) changeMember(ctx context.Context, c caller, req api.MemberRequest) (api.WorkgroupView, error) {
	member, err := spiffeid.FromString(req.Identity)
	if err != nil {
		return api.WorkgroupView{}, failf(http.StatusBadRequest, api.CodeBadRequest, "%q is not a SPIFFE ID", req.Identity)
	}
	if !req.Remove {
		// Only an administrator of the member's own organisation adds it: another organisation's identities are
		// answered as if they did not exist, whether they do or not.
		rec, _, err := s.ids.get(ctx, member)
		if err != nil || rec.State == stateRevoked || !isPlatformAdmin(c) && rec.Org != c.rec.Org {
			return api.WorkgroupView{}, failf(http.StatusNotFound, api.CodeNotFound, "no usable identity %s", member)
		}
	}
	kind := "workgroup.member_added"
	if req.Remove {
		kind = "workgroup.member_removed"
	}
	role := req.Role
	if role == "" {
		role = workgroups.RoleMember
	}
	view, err := s.changeWorkgroup(ctx, c, req.Workgroup, kind, func(w *workgroups.Workgroup) ([]spiffeid.ID, error) {
		if req.Remove {
			return []spiffeid.ID{member}, w.RemoveMember(c.id, member)
		}
		return []spiffeid.ID{member}, w.AddMember(c.id, member, role, time.Now().UTC())
	})
	if err != nil {
		return view, err
	}
	if req.Remove {
		s.closeSessionsWhere(ctx, workgroups.CloseMembershipRemoved, "removed from "+view.ID.String(), func(ss workgroups.Session) bool {
			return (ss.Consumer == member || ss.Provider == member) && (ss.Workgroup == view.ID || ss.Contract.Requires(view.ID))
		})
		s.retractAds(ctx, func(ad workgroups.Advertisement) bool { return ad.Provider == member }, view.ID)
		// The retraction narrows who may reach the member's advertisements: the workgroup's remaining members
		// lose dial, and the member loses bind of those withdrawn.
		if err := s.syncOverlay(ctx, append(memberIDs(view.Workgroup), member)...); err != nil {
			return view, internal(err)
		}
	}
	return view, nil
}

func (s *Server) deleteWorkgroup(ctx context.Context, c caller, req api.DeleteWorkgroupRequest) error {
	id, err := workgroups.ParseWorkgroupID(req.Workgroup)
	if err != nil {
		return wgFault(err)
	}
	w, _, err := s.gov.wgs.get(ctx, wgKey(id))
	if errors.Is(err, errNotFound) || err == nil && !seesWorkgroup(c, w) {
		return noWorkgroup(id)
	}
	if err != nil {
		return wgFault(err)
	}
	if !c.rec.Admin || c.rec.Org != id.Org {
		return failf(http.StatusForbidden, api.CodeForbidden, "only an administrator of %s deletes %s", id.Org, id)
	}
	if err := s.gov.wgs.kv.Delete(ctx, wgKey(id)); err != nil {
		return internal(err)
	}
	s.record(ctx, audit.Record{Kind: "workgroup.deleted", Actor: c.id.String(), Workgroup: id.String(), Decision: "allow"})
	s.closeSessionsWhere(ctx, workgroups.CloseWorkgroupDeleted, "workgroup "+id.String()+" deleted", func(ss workgroups.Session) bool {
		return ss.Workgroup == id || ss.Contract.Requires(id)
	})
	s.retractAds(ctx, func(workgroups.Advertisement) bool { return true }, id)
	return s.syncOverlay(ctx, memberIDs(w)...)
}

// listWorkgroups returns the workgroups the caller is a member of, or whose invitation its organisation holds.
func (s *Server) listWorkgroups(ctx context.Context, c caller) ([]api.WorkgroupView, error) {
	all, err := s.gov.wgCopy.current(ctx)
	if err != nil {
		return nil, internal(err)
	}
	out := []api.WorkgroupView{}
	for _, w := range all {
		_, member := w.Member(c.id)
		invited := c.rec.Admin && slices.ContainsFunc(w.Invitations, func(i workgroups.Invitation) bool { return i.Org == c.rec.Org })
		if member || invited || c.rec.Admin && c.rec.Org == w.ID.Org || isPlatformAdmin(c) {
			out = append(out, api.WorkgroupView{Workgroup: w, Status: w.Status()})
		}
	}
	return out, nil
}

// wgMemberNames files a workgroup in the copy under its members' identities.
func wgMemberNames(w workgroups.Workgroup) []string {
	names := make([]string, len(w.Members))
	for i, m := range w.Members {
		names[i] = m.Identity.String()
	}
	return names
}

// adWorkgroupNames files an advertisement in the copy under the workgroups it is published in.
func adWorkgroupNames(ad workgroups.Advertisement) []string {
	names := make([]string, len(ad.Workgroups))
	for i, w := range ad.Workgroups {
		names[i] = w.String()
	}
	return names
}

// retractAds removes workgroup wg from the scope of matching advertisements, deleting those left with none.
func (s *Server) retractAds(ctx context.Context, match func(workgroups.Advertisement) bool, wg workgroups.WorkgroupID) {
	ads, err := s.gov.adCopy.currentIn(ctx, []string{wg.String()})
	if err != nil {
		s.log.Error("listing advertisements failed", "err", err)
		return
	}
	for _, ad := range ads {
		if !match(ad) || !ad.InScope(wg) {
			continue
		}
		rest := slices.DeleteFunc(slices.Clone(ad.Workgroups), func(w workgroups.WorkgroupID) bool { return w == wg })
		if len(rest) == 0 {
			err = s.gov.ads.kv.Delete(ctx, ad.ID.String())
		} else {
			var now workgroups.Advertisement
			now, err = s.gov.ads.update(ctx, ad.ID.String(), func(a *workgroups.Advertisement) error {
				a.Workgroups = slices.DeleteFunc(a.Workgroups, func(w workgroups.WorkgroupID) bool { return w == wg })
				return nil
			})
			switch {
			case errors.Is(err, errNotFound): // deleted meanwhile
				err = nil
			case err == nil && len(now.Workgroups) == 0: // another retraction took the rest meanwhile
				err = s.gov.ads.kv.Delete(ctx, ad.ID.String())
			}
		}
		if err == nil {
			// Only the members of the workgroups left may dial it; nobody, once none is left.
			err = s.settleAdService(ctx, ad.ID)
		}
		if err != nil {
			s.log.Error("retracting advertisement failed", "advertisement", ad.ID.String(), "err", err)
			continue
		}
		s.record(ctx, audit.Record{Kind: "advertisement.retracted", Actor: s.controllerID.String(), Workgroup: wg.String(),
			Decision: "allow", Reason: "no longer in scope", Data: jsonRaw(map[string]string{"advertisement": ad.ID.String()})})
	}
}

// syncOverlay recomputes the overlay role attributes of ids from their workgroups: an identity carries
// wg.<org>.<name> for each active workgroup it is in. Advertisements change no identity's attributes: the
// shared policy of each workgroup names its members' role, and that of each provider its overlay identity
// (adOverlay). Attributes of an earlier shape (ad.<id>.dial and ad.<id>.bind, one per advertisement) are
// dropped here.
func (s *Server) syncOverlay(ctx context.Context, ids ...spiffeid.ID) error {
	for _, id := range ids {
		ms, err := s.membershipsOf(ctx, id)
		if err != nil {
			return err
		}
		active := workgroups.ActiveWorkgroups(ms)
		var derived []string
		for _, wg := range active {
			derived = append(derived, wgAttr(wg))
		}
		rec, err := s.ids.update(ctx, id, func(r *identityRecord) error {
			r.Attributes = slices.DeleteFunc(r.Attributes, func(a string) bool {
				return strings.HasPrefix(a, "wg.") || strings.HasPrefix(a, "ad.")
			})
			r.Attributes = append(r.Attributes, derived...)
			return nil
		})
		if errors.Is(err, errNoIdentity) {
			continue
		}
		if err != nil {
			return err
		}
		if rec.State == stateRevoked {
			continue // its overlay identity is disabled for good, or deleted in a cluster
		}
		if err := s.zc.Mgmt().SetAttributes(rec.OverlayID, rec.Attributes); err != nil {
			return err
		}
	}
	return nil
}

// wgAttr is the overlay role attribute of the active members of wg.
func wgAttr(wg workgroups.WorkgroupID) string { return "wg." + wg.Org + "." + wg.Name }

// AdvertisementService is the overlay service through which an advertised agent can be dialled directly; only
// identities sharing one of the advertisement's active workgroups see it.
func AdvertisementService(id workgroups.AdvertisementID) string { return adServicePrefix + id.String() }

const adServicePrefix = "a2a."

// The overlay shape of advertisements. An advertisement is one service carrying a role attribute per workgroup
// it is scoped to (adwg.<org>.<name>) and one naming its provider's overlay identity (adp.<overlay id>). One dial
// policy per workgroup lets the workgroup's active members (wg.<org>.<name>) dial every advertisement scoped to
// it, and one bind policy per provider lets the provider bind its advertisements. Publishing an advertisement is
// thus one service, and a policy the first time its workgroup or its provider is seen. OpenZiti evaluates every
// service policy for each service it creates or changes, and every service and identity for each policy it
// creates: with a dial and a bind policy per advertisement, as networks had before, each advertisement cost
// more than the one before it.
const (
	adPolicyPrefix = "umbra-a2a-"
	// legacyAdPolicyPrefix names the per-advertisement policies of before (umbra-a2a.<id>-bind and -dial).
	legacyAdPolicyPrefix = "umbra-" + adServicePrefix
)

func adWorkgroupAttr(wg workgroups.WorkgroupID) string { return "adwg." + wg.Org + "." + wg.Name }

func adProviderAttr(overlayID string) string { return "adp." + overlayID }

// adPolicy is one of the shared policies of advertisements.
type adPolicy struct {
	name, kind           string
	identities, services []string
}

// adOverlay is what ad needs on the overlay when its provider's overlay identity is overlayID ("" when the
// provider may bind nothing): the role attributes of its service, and the shared policies those attributes are
// named by. A retracted advertisement (no workgroups left) carries none: nobody binds or dials it.
func adOverlay(ad workgroups.Advertisement, overlayID string) ([]string, []adPolicy) {
	attrs := []string{}
	if len(ad.Workgroups) == 0 {
		return attrs, nil
	}
	var policies []adPolicy
	for _, wg := range ad.Workgroups {
		attrs = append(attrs, adWorkgroupAttr(wg))
		policies = append(policies, adPolicy{name: adPolicyPrefix + "dial-" + wg.Org + "." + wg.Name, kind: "Dial",
			identities: []string{"#" + wgAttr(wg)}, services: []string{"#" + adWorkgroupAttr(wg)}})
	}
	if overlayID != "" {
		attrs = append(attrs, adProviderAttr(overlayID))
		policies = append(policies, adPolicy{name: adPolicyPrefix + "bind-" + overlayID, kind: "Bind",
			identities: []string{"@" + overlayID}, services: []string{"#" + adProviderAttr(overlayID)}})
	}
	return attrs, policies
}

// ensureAdService creates ad's overlay service, or brings its attributes up to date, after the shared policies
// it needs (adOverlay).
//
// isNew says that ad's id was just drawn, so no one else creates its service: it is then created directly
// (Mgmt.CreateNewService), and looked up by name only when OpenZiti refuses the first try because the name is
// taken (a partial create before). A look-up by name reads every service of the overlay.
func (s *Server) ensureAdService(ctx context.Context, ad workgroups.Advertisement, isNew bool) error {
	var overlayID string
	if len(ad.Workgroups) > 0 { // a retracted advertisement carries no attributes, whoever its provider
		var err error
		if overlayID, err = s.adProviderOverlay(ctx, ad.Provider); err != nil {
			return err
		}
	}
	attrs, policies := adOverlay(ad, overlayID)
	for _, p := range policies {
		if err := s.ensureAdPolicy(p); err != nil {
			return err
		}
	}
	m := s.zc.Mgmt()
	var err error
	if isNew {
		err = m.CreateNewService(AdvertisementService(ad.ID), attrs)
	} else {
		_, err = m.EnsureService(AdvertisementService(ad.ID), attrs)
	}
	return err
}

// settleAdAttempts bounds how often settleAdService writes a service whose advertisement keeps changing.
const settleAdAttempts = 5

// settleAdService gives the service of advertisement id the attributes of the advertisement as stored (none once
// it is deleted), and reads the advertisement again after writing them. A writer that read the advertisement
// before a change made meanwhile (a retraction on another controller, start-up reconciliation working from its
// copy) would otherwise leave the attributes of the version before: a retracted advertisement dialable again.
// Every change of an advertisement is followed by its writer's settleAdService, so the write that lands last is
// followed by a read of the last version, and the service ends with its attributes.
func (s *Server) settleAdService(ctx context.Context, id workgroups.AdvertisementID) error {
	key := id.String()
	ad, rev, err := s.gov.ads.get(ctx, key)
	for attempt := 1; ; attempt++ {
		switch {
		case errors.Is(err, errNotFound):
			ad, rev = workgroups.Advertisement{ID: id}, 0
		case err != nil:
			return err
		}
		if s.raceStep != nil {
			s.raceStep("ad read", id)
		}
		if err := s.ensureAdService(ctx, ad, false); err != nil {
			return err
		}
		var again uint64
		ad, again, err = s.gov.ads.get(ctx, key)
		if errors.Is(err, errNotFound) && rev == 0 || err == nil && again == rev {
			return nil
		}
		if attempt == settleAdAttempts {
			return fmt.Errorf("advertisement %s changed %d times while its service was written", id, attempt)
		}
		rev = again
	}
}

// ensureAdPolicy creates the shared policy p or gives it p's roles, unless this process has done so already:
// the roles follow from the name alone, so once is enough.
func (s *Server) ensureAdPolicy(p adPolicy) error {
	if _, done := s.adPolicies.Load(p.name); done {
		return nil
	}
	if err := s.zc.Mgmt().CreateOrUpdateServicePolicy(p.name, p.kind, p.identities, p.services); err != nil {
		return fmt.Errorf("advertisement policy %s: %w", p.name, err)
	}
	s.adPolicies.Store(p.name, true)
	return nil
}

// adProviderOverlay is the overlay identity of provider while it may bind advertisements: "" once it is revoked
// or when it has none.
func (s *Server) adProviderOverlay(ctx context.Context, provider spiffeid.ID) (string, error) {
	rec, _, err := s.ids.get(ctx, provider)
	switch {
	case errors.Is(err, errNoIdentity):
		return "", nil
	case err != nil:
		return "", err
	case rec.State == stateRevoked:
		return "", nil
	}
	return rec.OverlayID, nil
}

// adServiceGrace is how long reconcileAdPolicies leaves as it is a service of an advertisement the copy does not
// hold: its advertisement may be being published (its service is created first).
const adServiceGrace = time.Minute

// reconcileAdPolicies brings the overlay in line with the advertisements, at start: each advertisement's service
// carries the attributes adOverlay gives it, the shared policies exist with their roles, the services of
// advertisements that are gone carry none (once older than grace), and the per-advertisement policies of the
// earlier shape are deleted. One where all agree costs a listing of the services and one of the policies, and
// one read of each provider's record.
func (s *Server) reconcileAdPolicies(ctx context.Context, grace time.Duration) error {
	m := s.zc.Mgmt()
	services, err := m.Services(adServicePrefix)
	if err != nil {
		return err
	}
	policies, err := m.ServicePolicies("umbra-a2a")
	if err != nil {
		return err
	}
	ads, err := s.gov.adCopy.current(ctx)
	if err != nil {
		return err
	}
	overlays := map[spiffeid.ID]string{}
	wantPolicies := map[string]adPolicy{}
	var fixes []workgroups.AdvertisementID
	live := map[string]bool{}
	for _, ad := range ads {
		overlayID, ok := overlays[ad.Provider]
		if !ok {
			if overlayID, err = s.adProviderOverlay(ctx, ad.Provider); err != nil {
				return err
			}
			overlays[ad.Provider] = overlayID
		}
		attrs, ps := adOverlay(ad, overlayID)
		for _, p := range ps {
			wantPolicies[p.name] = p
		}
		name := AdvertisementService(ad.ID)
		live[name] = true
		if svc, ok := services[name]; !ok || !zitictrl.SameRoles(svc.Attributes, attrs) {
			fixes = append(fixes, ad.ID)
		}
	}
	changed := 0
	for name, p := range wantPolicies {
		if have, ok := policies[name]; ok && have.Kind == p.kind && zitictrl.SameRoles(have.IdentityRoles, p.identities) &&
			zitictrl.SameRoles(have.ServiceRoles, p.services) {
			s.adPolicies.Store(name, true)
			continue
		}
		s.adPolicies.Delete(name)
		if err := s.ensureAdPolicy(p); err != nil {
			return err
		}
		changed++
	}
	for _, id := range fixes {
		// From the advertisement as stored now, not as the copy held it: it may have changed meanwhile.
		if err := s.settleAdService(ctx, id); err != nil {
			return fmt.Errorf("service %s: %w", AdvertisementService(id), err)
		}
		changed++
	}
	for name, svc := range services {
		if live[name] || len(svc.Attributes) == 0 || time.Since(svc.CreatedAt) < grace {
			continue
		}
		if id, err := workgroups.ParseAdvertisementID(strings.TrimPrefix(name, adServicePrefix)); err == nil {
			err = s.settleAdService(ctx, id) // published since the copy was read, if the store still holds it
		} else {
			err = m.SetServiceAttributes(svc.ID, name, nil)
		}
		if err != nil {
			return fmt.Errorf("service %s of a removed advertisement: %w", name, err)
		}
		changed++
	}
	for name, p := range policies {
		if !strings.HasPrefix(name, legacyAdPolicyPrefix) {
			continue
		}
		if err := m.DeleteServicePolicy(p.ID); err != nil {
			return fmt.Errorf("per-advertisement policy %s: %w", name, err)
		}
		changed++
	}
	if changed > 0 {
		s.log.Info("advertisement services and policies brought in line with their providers and workgroups",
			"changed", changed, "advertisements", len(ads))
	}
	return nil
}

// reconcileAdPoliciesOnce runs reconcileAdPolicies, then reconcileMembers, each until it succeeds once, or ctx
// ends.
func (s *Server) reconcileAdPoliciesOnce(ctx context.Context) {
	defer close(s.adsSettled)
	for _, step := range []struct {
		what string
		run  func(context.Context) error
	}{
		{"bringing advertisement dial policies in line", func(ctx context.Context) error { return s.reconcileAdPolicies(ctx, adServiceGrace) }},
		{"bringing advertisements and overlay attributes in line with the workgroups", s.reconcileMembers},
	} {
		for {
			err := step.run(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			s.log.Warn(step.what+" failed; trying again in 5 s", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
		}
	}
}
