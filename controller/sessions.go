package controller

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// advertise publishes the caller's agent card and terms in workgroups the caller is an active member of.
func (s *Server) advertise(ctx context.Context, c caller, req api.AdvertiseRequest) (workgroups.Advertisement, error) {
	ms, err := s.membershipsOf(ctx, c.id)
	if err != nil {
		return workgroups.Advertisement{}, internal(err)
	}
	active := workgroups.ActiveWorkgroups(ms)
	ad := workgroups.Advertisement{Provider: c.id, Card: req.Card, Terms: req.Terms}
	for _, raw := range req.Workgroups {
		wg, err := workgroups.ParseWorkgroupID(raw)
		if err != nil {
			return ad, wgFault(err)
		}
		if !slices.Contains(active, wg) {
			return ad, failf(http.StatusNotFound, api.CodeNotFound, "you are not an active member of workgroup %s", wg)
		}
		ad.Workgroups = append(ad.Workgroups, wg)
	}
	if ad.ID, err = workgroups.NewAdvertisementID(rand.Reader); err != nil {
		return ad, internal(err)
	}
	if err := ad.Validate(); err != nil {
		return ad, wgFault(err)
	}
	if err := s.ensureAdService(ctx, ad, true); err != nil {
		return ad, internal(err)
	}
	if s.raceStep != nil {
		s.raceStep("ad checked", ad.ID)
	}
	if err := s.gov.ads.create(ctx, ad.ID.String(), ad); err != nil {
		return ad, internal(err)
	}
	s.record(ctx, audit.Record{Kind: "advertisement.published", Actor: c.id.String(), Decision: "allow", Data: jsonRaw(ad)})
	// Its policies name its provider and its workgroups' roles (ensureAdService): no identity changes.
	return s.recheckAdScope(ctx, ad)
}

// recheckAdScope retracts the just published ad from the workgroups its provider has left since advertise checked
// them. A removal from a workgroup (or its deletion) retracts the advertisements the store holds once the
// workgroup has changed; one published between advertise's check and that retraction's read would otherwise stay
// in scope of a workgroup its provider is no longer in. Read after the create, the workgroups show any such
// removal. The answer is the advertisement as it stands, or not found when no workgroup is left.
func (s *Server) recheckAdScope(ctx context.Context, ad workgroups.Advertisement) (workgroups.Advertisement, error) {
	ms, err := s.membershipsOf(ctx, ad.Provider)
	if err != nil {
		return ad, internal(err)
	}
	active := workgroups.ActiveWorkgroups(ms)
	var left []workgroups.WorkgroupID
	for _, wg := range ad.Workgroups {
		if !slices.Contains(active, wg) {
			left = append(left, wg)
			s.retractAds(ctx, func(a workgroups.Advertisement) bool { return a.ID == ad.ID }, wg)
		}
	}
	if len(left) == 0 {
		return ad, nil
	}
	now, _, err := s.gov.ads.get(ctx, ad.ID.String())
	if errors.Is(err, errNotFound) {
		return ad, failf(http.StatusNotFound, api.CodeNotFound, "you are not an active member of workgroup %s", left[0])
	}
	if err != nil {
		return ad, internal(err)
	}
	return now, nil
}

// visibleAds is discovery: the advertisements the caller shares an active workgroup with and that policy lets
// it see. Anything else is as if it did not exist.
func (s *Server) visibleAds(ctx context.Context, id spiffeid.ID) ([]workgroups.Advertisement, []workgroups.Membership, error) {
	ms, err := s.membershipsOf(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	// Only the advertisements of the caller's active workgroups are read; Visible still decides.
	var names []string
	for _, w := range workgroups.ActiveWorkgroups(ms) {
		names = append(names, w.String())
	}
	ads, err := s.gov.adCopy.currentIn(ctx, names)
	if err != nil {
		return nil, nil, err
	}
	p := workgroups.PrincipalFor(id, ms)
	var out []workgroups.Advertisement
	for _, ad := range workgroups.Visible(ms, ads) {
		if s.gov.authz.Decide(workgroups.Request{Principal: p, Action: workgroups.ActionDiscover, Resource: workgroups.AdvertisementResource(ad), At: time.Now()}).Allow {
			out = append(out, ad)
		}
	}
	// The same answer in the same order every time (the copy keeps no order).
	slices.SortFunc(out, func(a, b workgroups.Advertisement) int { return strings.Compare(a.ID.String(), b.ID.String()) })
	return out, ms, nil
}

func (s *Server) discover(ctx context.Context, c caller, req api.DiscoverRequest) ([]workgroups.Advertisement, error) {
	ads, ms, err := s.visibleAds(ctx, c.id)
	if err != nil {
		return nil, internal(err)
	}
	out := []workgroups.Advertisement{}
	for _, ad := range ads {
		if req.Skill != "" && !slices.ContainsFunc(ad.Card.Skills, func(sk workgroups.Skill) bool {
			return sk.ID == req.Skill || slices.Contains(sk.Tags, req.Skill)
		}) {
			continue
		}
		if req.Text != "" && !strings.Contains(strings.ToLower(ad.Card.Name+" "+ad.Card.Description), strings.ToLower(req.Text)) {
			continue
		}
		out = append(out, ad.SeenBy(ms))
	}
	s.record(ctx, audit.Record{Kind: "discover", Actor: c.id.String(), Decision: "allow",
		Data: jsonRaw(map[string]any{"skill": req.Skill, "text": req.Text, "results": len(out)})})
	return out, nil
}

// notFound is the answer for anything the caller may not see: the same as for something that does not exist.
func notFoundAd(id string) error {
	return failf(http.StatusNotFound, api.CodeNotFound, "no advertisement %s", id)
}

func (s *Server) propose(ctx context.Context, c caller, req api.ProposeRequest) (api.ProposeResponse, error) {
	// Every proposal counts against the identity's rate (ratelimit.go), before it costs a read or a record.
	if err := s.admitProposal(ctx, c.id, req.Advertisement); err != nil {
		return api.ProposeResponse{}, err
	}
	// And against its audit budget (auditbudget.go); what the controller records for it is charged to it.
	if err := s.admitAuditBytes(ctx, c.id, "session.propose", "", map[string]any{"advertisement": req.Advertisement}, false); err != nil {
		return api.ProposeResponse{}, err
	}
	ctx = withPayer(ctx, c.id)
	adID, err := workgroups.ParseAdvertisementID(req.Advertisement)
	if err != nil {
		return api.ProposeResponse{}, notFoundAd(req.Advertisement)
	}
	ad, _, err := s.gov.ads.get(ctx, adID.String())
	if errors.Is(err, errNotFound) {
		return api.ProposeResponse{}, notFoundAd(req.Advertisement)
	} else if err != nil {
		return api.ProposeResponse{}, internal(err)
	}
	ms, all, err := s.memberships(ctx, c.id)
	if err != nil {
		return api.ProposeResponse{}, internal(err)
	}
	p := workgroups.PrincipalFor(c.id, ms)
	d := s.gov.authz.Decide(workgroups.Request{Principal: p, Action: workgroups.ActionPropose, Resource: workgroups.AdvertisementResource(ad),
		Context: workgroups.ProposalContext(req.Proposal), At: time.Now()})
	decision, diag := decisionRecord(d)
	if !d.Allow {
		forbids := orgForbids(d)
		reason := "not visible to the caller"
		if len(forbids) > 0 {
			reason = "forbidden by organisation policy " + strings.Join(forbids, ", ")
		}
		rec := audit.Record{Kind: "session.propose", Actor: c.id.String(), Decision: decision, Diagnostic: diag,
			Reason: reason, Data: jsonRaw(map[string]any{"advertisement": adID.String()})}
		if in := req.Proposal.Intent; in != nil {
			rec.Data = jsonRaw(map[string]any{"advertisement": adID.String(), "intent": in})
		}
		s.record(ctx, rec)
		// A caller that may see the advertisement learns which policy refused its proposal; to any other the
		// advertisement does not exist.
		if len(forbids) > 0 && s.gov.authz.Decide(workgroups.Request{Principal: p, Action: workgroups.ActionDiscover,
			Resource: workgroups.AdvertisementResource(ad), At: time.Now()}).Allow {
			return api.ProposeResponse{}, failf(http.StatusForbidden, api.CodeForbidden, "proposal on %s %s", adID, reason)
		}
		return api.ProposeResponse{}, notFoundAd(req.Advertisement)
	}
	// The session runs in a workgroup both parties are active members of.
	providerWGs := workgroups.ActiveWorkgroups(workgroups.MembershipsOf(ad.Provider, all))
	var wg workgroups.WorkgroupID
	for _, w := range ad.Workgroups {
		if slices.Contains(p.Workgroups, w) && slices.Contains(providerWGs, w) && (req.Workgroup == "" || req.Workgroup == w.String()) {
			wg = w
			break
		}
	}
	if wg.IsZero() {
		return api.ProposeResponse{}, failf(http.StatusConflict, api.CodeConflict, "no workgroup shared with the provider of %s", adID)
	}
	id, err := workgroups.NewSessionID(rand.Reader)
	if err != nil {
		return api.ProposeResponse{}, internal(err)
	}
	now := time.Now().UTC()
	sess, adm, err := workgroups.Propose(id, ad, c.id, wg, req.Proposal, s.controllerID, now)
	if err != nil {
		return api.ProposeResponse{}, wgFault(err)
	}
	// A proposal rejected on the spot is not stored (retention.go): the reply and the audit trail have it.
	if sess.State.Terminal() {
		s.recordTransitions(ctx, sess, 0, decision, diag)
		return api.ProposeResponse{Session: sess, Reason: adm.Reason()}, nil
	}
	// An open session counts against its consumer's caps (quota.go) from before it is stored.
	if err := s.reserveSession(ctx, sess, adID.String()); err != nil {
		return api.ProposeResponse{}, err
	}
	if err := s.gov.sessions.create(ctx, id.String(), sess); err != nil {
		sess.State = workgroups.StateRejected // not stored: give its place back
		s.releaseSession(ctx, sess)
		return api.ProposeResponse{}, internal(err)
	}
	s.recordTransitions(ctx, sess, 0, decision, diag)
	if sess.State == workgroups.StateAccepted {
		s.trackDeadline(sess)
	}
	return api.ProposeResponse{Session: sess, Reason: adm.Reason()}, nil
}

// recordTransitions writes the session's transitions from index from on as audit records.
func (s *Server) recordTransitions(ctx context.Context, sess workgroups.Session, from int, decision string, diag []byte) {
	for _, t := range sess.History[from:] {
		data := map[string]any{
			"from": t.From, "to": t.To, "at": t.At, "consumer": sess.Consumer.String(), "provider": sess.Provider.String(),
			"advertisement": sess.Advertisement.String(), "contract": sess.Contract, "close_reason": sess.CloseReason,
		}
		if sess.Intent != nil {
			data["intent"] = sess.Intent
		}
		r := audit.Record{Kind: "session.transition", Actor: t.Actor.String(), Session: sess.ID.String(), Workgroup: sess.Workgroup.String(),
			Decision: decision, Diagnostic: diag, Reason: t.Reason, Data: jsonRaw(data)}
		if r.Decision == "" {
			r.Decision = "allow"
		}
		s.record(ctx, r)
	}
}

func (s *Server) trackDeadline(sess workgroups.Session) {
	s.gov.mu.Lock()
	s.gov.deadlines[sess.ID.String()] = sess.Deadline()
	s.gov.mu.Unlock()
}

// sessionFor loads a session the caller may see: a party, or an administrator of a party's organisation.
func (s *Server) sessionFor(ctx context.Context, c caller, raw string) (workgroups.Session, error) {
	id, err := workgroups.ParseSessionID(raw)
	if err != nil {
		return workgroups.Session{}, failf(http.StatusNotFound, api.CodeNotFound, "no session %s", raw)
	}
	sess, _, err := s.gov.sessions.get(ctx, id.String())
	if errors.Is(err, errNotFound) {
		return s.endedSession(ctx, c, id) // removed after the retention, or rejected on proposal
	}
	if err != nil {
		return sess, failf(http.StatusNotFound, api.CodeNotFound, "no session %s", raw)
	}
	if maySee(c, sess) {
		return sess, nil
	}
	return workgroups.Session{}, failf(http.StatusNotFound, api.CodeNotFound, "no session %s", raw)
}

func orgOf(id spiffeid.ID) string {
	ident, err := workgroups.ParseIdentity(id)
	if err != nil {
		return ""
	}
	return ident.Org
}

// answerSession lets the provider accept or reject a held proposal.
func (s *Server) answerSession(ctx context.Context, c caller, raw string, accept bool, reason string) (workgroups.Session, error) {
	sess, err := s.sessionFor(ctx, c, raw)
	if err != nil {
		return sess, err
	}
	if sess.Provider != c.id {
		return sess, failf(http.StatusForbidden, api.CodeForbidden, "only the provider answers a proposal")
	}
	ms, err := s.membershipsOf(ctx, c.id)
	if err != nil {
		return sess, internal(err)
	}
	var decision string
	var diag []byte
	if accept {
		d := s.gov.authz.Decide(workgroups.Request{Principal: workgroups.PrincipalFor(c.id, ms), Action: workgroups.ActionAccept,
			Resource: workgroups.SessionResource(sess), At: time.Now()})
		decision, diag = decisionRecord(d)
		if !d.Allow {
			s.record(ctx, audit.Record{Kind: "session.accept", Actor: c.id.String(), Session: sess.ID.String(), Decision: decision, Diagnostic: diag})
			return sess, failf(http.StatusForbidden, api.CodeForbidden, "policy refuses: %v", d.Diagnostic.Reasons)
		}
	}
	n := len(sess.History)
	updated, err := s.gov.sessions.update(ctx, sess.ID.String(), func(ss *workgroups.Session) error {
		n = len(ss.History)
		if accept {
			return ss.Accept(c.id, time.Now().UTC(), reason)
		}
		return ss.Reject(c.id, time.Now().UTC(), reason)
	})
	if err != nil {
		return sess, wgFault(err)
	}
	s.recordTransitions(ctx, updated, n, decision, diag)
	s.releaseSession(ctx, updated)
	if accept {
		s.trackDeadline(updated)
	}
	return updated, nil
}

// withdrawnReason begins the reason of the transition that records a consumer withdrawing its proposal.
const withdrawnReason = "withdrawn by the consumer"

// withdrawSession lets the consumer take back its proposal while it awaits the provider: the session is
// rejected by the consumer, recorded, and its place among the consumer's pending proposals is free again.
func (s *Server) withdrawSession(ctx context.Context, c caller, raw, reason string) (workgroups.Session, error) {
	sess, err := s.sessionFor(ctx, c, raw)
	if err != nil {
		return sess, err
	}
	if sess.Consumer != c.id {
		return sess, failf(http.StatusForbidden, api.CodeForbidden, "only the consumer that proposed session %s withdraws it", sess.ID)
	}
	text := withdrawnReason
	if reason != "" {
		text += ": " + reason
	}
	n := 0
	updated, err := s.gov.sessions.update(ctx, sess.ID.String(), func(ss *workgroups.Session) error {
		n = len(ss.History)
		if !pendingState(ss.State) {
			return notWithdrawable(*ss)
		}
		return ss.Reject(c.id, time.Now().UTC(), text)
	})
	if err != nil {
		return sess, wgFault(err)
	}
	s.recordTransitions(ctx, updated, n, "", nil)
	s.releaseSession(ctx, updated)
	s.log.Info("proposal withdrawn", "session", updated.ID.String())
	return updated, nil
}

// notWithdrawable is the answer to withdrawing a session that no longer awaits its provider.
func notWithdrawable(ss workgroups.Session) error {
	last := ss.History[len(ss.History)-1]
	if ss.State == workgroups.StateRejected && last.Actor == ss.Consumer {
		return failf(http.StatusConflict, api.CodeConflict, "session %s was already withdrawn at %s", ss.ID, last.At.UTC().Format(time.RFC3339))
	}
	return failf(http.StatusConflict, api.CodeConflict,
		"session %s is %s, not a proposal awaiting its provider: only those can be withdrawn (close an accepted session instead: umbra session close)",
		ss.ID, ss.State)
}

// closeByCaller closes a session for a party (by_consumer / by_provider) or an administrator (admin).
func (s *Server) closeByCaller(ctx context.Context, c caller, raw, detail string) (workgroups.Session, error) {
	sess, err := s.sessionFor(ctx, c, raw)
	if err != nil {
		return sess, err
	}
	reason := workgroups.CloseAdmin
	switch c.id {
	case sess.Consumer:
		reason = workgroups.CloseByConsumer
	case sess.Provider:
		reason = workgroups.CloseByProvider
	}
	return s.closeSession(ctx, sess.ID.String(), c.id, reason, detail)
}

// closeSession closes a session and records it. Closing a session that is already over is a conflict.
func (s *Server) closeSession(ctx context.Context, id string, actor spiffeid.ID, reason workgroups.CloseReason, detail string) (workgroups.Session, error) {
	n := 0
	updated, err := s.gov.sessions.update(ctx, id, func(ss *workgroups.Session) error {
		n = len(ss.History)
		return ss.Close(actor, reason, time.Now().UTC(), detail)
	})
	if err != nil {
		return updated, wgFault(err)
	}
	s.gov.mu.Lock()
	delete(s.gov.deadlines, id)
	s.gov.mu.Unlock()
	s.recordTransitions(ctx, updated, n, "", nil)
	s.releaseSession(ctx, updated)
	s.log.Info("session closed", "session", id, "reason", string(reason))
	return updated, nil
}

// closeSessionsWhere closes every open session matching match, as the controller, with reason.
func (s *Server) closeSessionsWhere(ctx context.Context, reason workgroups.CloseReason, detail string, match func(workgroups.Session) bool) int {
	all, err := s.gov.sessions.all(ctx)
	if err != nil {
		s.log.Error("listing sessions failed", "err", err)
		return 0
	}
	n := 0
	for _, sess := range all {
		if sess.State.Terminal() || !match(sess) {
			continue
		}
		if _, err := s.closeSession(ctx, sess.ID.String(), s.controllerID, reason, detail); err == nil {
			n++
		}
	}
	return n
}

// listSessions returns the caller's sessions (all of its organisation's for an administrator).
func (s *Server) listSessions(ctx context.Context, c caller, state string) ([]api.SessionView, error) {
	all, err := s.gov.sessions.all(ctx)
	if err != nil {
		return nil, internal(err)
	}
	out := []api.SessionView{}
	for _, sess := range all {
		mine := sess.Consumer == c.id || sess.Provider == c.id || isPlatformAdmin(c) ||
			c.rec.Admin && (orgOf(sess.Consumer) == c.rec.Org || orgOf(sess.Provider) == c.rec.Org)
		if !mine || state != "" && string(sess.State) != state {
			continue
		}
		out = append(out, s.sessionView(ctx, sess))
	}
	slices.SortFunc(out, func(a, b api.SessionView) int { return a.History[0].At.Compare(b.History[0].At) })
	return out, nil
}

func (s *Server) sessionView(ctx context.Context, sess workgroups.Session) api.SessionView {
	n, err := s.gov.env.Count(ctx, sess.ID.String())
	if err != nil {
		s.log.Warn("counting envelopes failed", "session", sess.ID.String(), "err", err)
	}
	return api.SessionView{Session: sess, Envelopes: n}
}

// expireSessions closes sessions past their deadline; it runs until ctx ends, checking every 100 ms so a session
// closes well within a second of its deadline.
func (s *Server) expireSessions(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			var due []string
			s.gov.mu.Lock()
			for id, dl := range s.gov.deadlines {
				if !now.Before(dl) {
					due = append(due, id)
				}
			}
			s.gov.mu.Unlock()
			for _, id := range due {
				unlock := s.gov.lockSession(id)
				_, err := s.closeSession(ctx, id, s.controllerID, workgroups.CloseExpired, "max duration reached")
				unlock()
				if err != nil {
					s.gov.mu.Lock()
					delete(s.gov.deadlines, id)
					s.gov.mu.Unlock()
				}
			}
		}
	}
}

// revokeSessions closes every open session of a revoked identity.
func (s *Server) revokeSessions(ctx context.Context, id spiffeid.ID) {
	s.closeSessionsWhere(ctx, workgroups.CloseIdentityRevoked, "identity "+id.String()+" revoked", func(ss workgroups.Session) bool {
		return ss.Consumer == id || ss.Provider == id
	})
}

// orgForbids are the organisation policies (IDs "org/<org>/<name>/...") that forbade what d denies.
func orgForbids(d workgroups.Decision) []string {
	var out []string
	for _, id := range d.Diagnostic.Policies {
		if !d.Allow && strings.HasPrefix(id, "org/") {
			out = append(out, id)
		}
	}
	return out
}
