package controller

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// Organisation policies are forbid-only Cedar policies an organisation's administrators add to every A2A
// decision whose principal, provider or consumer belongs to the organisation (workgroups.OrgPolicy): discovery,
// proposals, acceptance and every envelope. They live in a bucket like the other governance state (replicated in
// a cluster), one key per organisation and name. Every controller keeps a copy of the bucket by a watch and swaps
// in an authoriser rebuilt from it on each change, which the governance API and the relay ask for every decision:
// a change applies to the next decision on every controller, in sessions already open too. A text is checked as
// the authoriser will load it before it is stored, so a rejected one changes nothing.

// orgPolicyRecord is one organisation policy as stored.
type orgPolicyRecord struct {
	Org   string    `json:"org"`
	Name  string    `json:"name"`
	Text  string    `json:"text"`
	SetBy string    `json:"set_by"`
	SetAt time.Time `json:"set_at"`
}

func orgPolicyKey(org, name string) string { return org + "." + name }

func textSHA256(text string) string {
	sum := sha256.Sum256([]byte(text))
	return hex.EncodeToString(sum[:])
}

// orgPolicies is the live authoriser: the built-in policies with every stored organisation policy. It is the
// relay's and the governance API's decision point.
type orgPolicies struct {
	t       table[orgPolicyRecord]
	copy    *tableCopy[orgPolicyRecord] // its run is the caller's
	log     *slog.Logger
	current atomic.Pointer[workgroups.Authorizer]
}

// openOrgPolicies opens the bucket and loads what it holds, so that no decision is made without the stored
// policies, even before the watch has started.
func openOrgPolicies(ctx context.Context, js jetstream.JetStream, log *slog.Logger) (*orgPolicies, error) {
	t, err := openTable[orgPolicyRecord](ctx, js, "umbra_org_policies")
	if err != nil {
		return nil, err
	}
	p := &orgPolicies{t: t, log: log}
	recs, err := t.all(ctx)
	if err != nil {
		return nil, err
	}
	p.load(recs)
	p.copy = newTableCopy(t, "organisation policies", log)
	p.copy.changed = func(byKey map[string]orgPolicyRecord) {
		recs := make([]orgPolicyRecord, 0, len(byKey))
		for _, r := range byKey {
			recs = append(recs, r)
		}
		p.load(recs)
	}
	return p, nil
}

// Decide answers r with the policies as of the latest change this controller has seen.
func (p *orgPolicies) Decide(r workgroups.Request) workgroups.Decision {
	return p.current.Load().Decide(r)
}

// load swaps in an authoriser built from recs. Every stored text was checked when it was set; one that no longer
// parses (a newer Cedar) is left out, loudly, rather than leaving out every organisation's policies.
func (p *orgPolicies) load(recs []orgPolicyRecord) {
	slices.SortFunc(recs, func(a, b orgPolicyRecord) int { return cmp.Or(cmp.Compare(a.Org, b.Org), cmp.Compare(a.Name, b.Name)) })
	ops := make([]workgroups.OrgPolicy, 0, len(recs))
	for _, r := range recs {
		op := workgroups.OrgPolicy{Org: r.Org, Name: r.Name, Text: r.Text}
		if _, err := workgroups.NewAuthorizer(op); err != nil {
			p.log.Error("organisation policy left out: it no longer parses", "org", r.Org, "name", r.Name, "err", err)
			continue
		}
		ops = append(ops, op)
	}
	a, err := workgroups.NewAuthorizer(ops...)
	if err != nil {
		// Each parsed alone, and keys are unique: only the built-in policies can fail, which a test covers.
		p.log.Error("organisation policies not loaded", "err", err)
		return
	}
	p.current.Store(a)
}

// sync waits until this controller decides with every change stored before the call: the caller of a set or a
// removal then sees it apply at once. While the watch is down the bucket is read instead.
func (p *orgPolicies) sync(ctx context.Context) error {
	recs, err := p.copy.current(ctx)
	if err != nil {
		return err
	}
	if !p.copy.isLive() {
		p.load(recs)
	}
	return nil
}

// checkOrgPolicy checks a policy as the authoriser loads it: a 400 whose one line says what is wrong (a bad
// name, an empty or too long text, a permit, Cedar's syntax error with its position).
func checkOrgPolicy(org, name, text string) error {
	bad := func(format string, args ...any) error {
		return failf(http.StatusBadRequest, api.CodeBadRequest, format, args...)
	}
	if err := workgroups.ValidateName(org); err != nil {
		return bad("organisation: %s", oneLine(err.Error()))
	}
	if err := workgroups.ValidateName(name); err != nil {
		return bad("policy name: %s", oneLine(err.Error()))
	}
	if strings.TrimSpace(text) == "" {
		return bad("policy %s of %s has no text", name, org)
	}
	if _, err := workgroups.NewAuthorizer(workgroups.OrgPolicy{Org: org, Name: name, Text: text}); err != nil {
		return bad("%s", oneLine(err.Error()))
	}
	return nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// policyOrg checks that c may manage org's policies: the platform administrator any organisation's, an
// organisation administrator its own.
func policyOrg(c caller, org string) error {
	if !c.rec.Admin {
		return failf(http.StatusForbidden, api.CodeForbidden, "%s is not an administrator", c.id)
	}
	if !isPlatformAdmin(c) && org != c.rec.Org {
		return failf(http.StatusForbidden, api.CodeForbidden, "an organisation administrator manages the policies of its own organisation only")
	}
	return nil
}

func (s *Server) policyRoutes(mux *http.ServeMux) {
	serve := func(op func(w http.ResponseWriter, r *http.Request, c caller) (any, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			out, err := op(w, r, r.Context().Value(callerKey{}).(caller))
			if err != nil {
				s.fail(w, r, err)
				return
			}
			reply(w, http.StatusOK, out)
		}
	}
	mux.HandleFunc("GET "+api.PathPolicies, serve(func(w http.ResponseWriter, r *http.Request, c caller) (any, error) {
		org := r.URL.Query().Get("org") // "": the caller's organisation, every one for the platform administrator
		if org == "" && !isPlatformAdmin(c) {
			org = c.rec.Org
		}
		if err := policyOrg(c, cmp.Or(org, c.rec.Org)); err != nil {
			return nil, err
		}
		return s.listPolicies(r.Context(), org)
	}))
	mux.HandleFunc("PUT "+api.PathPolicies+"/{org}/{name}", serve(func(w http.ResponseWriter, r *http.Request, c caller) (any, error) {
		org, name := r.PathValue("org"), r.PathValue("name")
		if err := policyOrg(c, org); err != nil {
			return nil, err
		}
		// The body may hold a text as long as the authoriser takes, escaped: a longer one is refused by its check,
		// with the limit named, not as a body too large.
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPolicyBody))
		if err != nil {
			return nil, failf(http.StatusRequestEntityTooLarge, api.CodeBadRequest, "request body too large (limit %d bytes)", maxPolicyBody)
		}
		var req api.SetPolicyRequest
		if err := strict(body, &req); err != nil {
			return nil, err
		}
		return s.setPolicy(r.Context(), c, org, name, req.Text)
	}))
	mux.HandleFunc("DELETE "+api.PathPolicies+"/{org}/{name}", serve(func(w http.ResponseWriter, r *http.Request, c caller) (any, error) {
		org, name := r.PathValue("org"), r.PathValue("name")
		if err := policyOrg(c, org); err != nil {
			return nil, err
		}
		return s.removePolicy(r.Context(), c, org, name)
	}))
}

// maxPolicyBody bounds a PUT's body: twice the longest text the authoriser takes, for JSON's escapes.
const maxPolicyBody = 2*4*workgroups.MaxConditionsBytes + 1024

func policyView(r orgPolicyRecord) api.Policy {
	return api.Policy{Org: r.Org, Name: r.Name, Text: r.Text, SHA256: textSHA256(r.Text), SetBy: r.SetBy, SetAt: r.SetAt}
}

// listPolicies lists org's policies, or every organisation's for org "".
func (s *Server) listPolicies(ctx context.Context, org string) (api.Policies, error) {
	recs, err := s.gov.authz.copy.current(ctx)
	if err != nil {
		return api.Policies{}, internal(err)
	}
	out := api.Policies{Policies: []api.Policy{}}
	for _, r := range recs {
		if org == "" || r.Org == org {
			out.Policies = append(out.Policies, policyView(r))
		}
	}
	slices.SortFunc(out.Policies, func(a, b api.Policy) int { return cmp.Or(cmp.Compare(a.Org, b.Org), cmp.Compare(a.Name, b.Name)) })
	return out, nil
}

// setPolicy stores a checked policy, replacing one of the same name, and returns once this controller decides
// with it.
func (s *Server) setPolicy(ctx context.Context, c caller, org, name, text string) (api.Policy, error) {
	if err := checkOrgPolicy(org, name, text); err != nil {
		return api.Policy{}, err
	}
	if _, _, err := s.gov.orgs.get(ctx, org); errors.Is(err, errNotFound) {
		return api.Policy{}, failf(http.StatusNotFound, api.CodeNotFound, "no organisation %s", org)
	} else if err != nil {
		return api.Policy{}, internal(err)
	}
	rec := orgPolicyRecord{Org: org, Name: name, Text: text, SetBy: c.id.String(), SetAt: time.Now().UTC()}
	b, err := json.Marshal(rec)
	if err != nil {
		return api.Policy{}, internal(err)
	}
	if _, err := s.gov.authz.t.kv.Put(ctx, orgPolicyKey(org, name), b); err != nil {
		return api.Policy{}, internal(err)
	}
	view := policyView(rec)
	s.record(ctx, audit.Record{Kind: "policy.set", Actor: c.id.String(), Decision: "allow",
		Data: jsonRaw(map[string]any{"org": org, "name": name, "sha256": view.SHA256})})
	s.log.Info("organisation policy set", "org", org, "name", name, "sha256", view.SHA256, "by", c.id.String())
	if err := s.gov.authz.sync(ctx); err != nil {
		return api.Policy{}, internal(err)
	}
	return view, nil
}

// removePolicy removes one policy and returns once this controller decides without it.
func (s *Server) removePolicy(ctx context.Context, c caller, org, name string) (api.Policy, error) {
	if workgroups.ValidateName(org) != nil || workgroups.ValidateName(name) != nil {
		return api.Policy{}, failf(http.StatusNotFound, api.CodeNotFound, "no policy %s of organisation %s", name, org)
	}
	key := orgPolicyKey(org, name)
	rec, rev, err := s.gov.authz.t.get(ctx, key)
	if errors.Is(err, errNotFound) {
		return api.Policy{}, failf(http.StatusNotFound, api.CodeNotFound, "no policy %s of organisation %s", name, org)
	} else if err != nil {
		return api.Policy{}, internal(err)
	}
	if err := s.gov.authz.t.kv.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) || isWrongSequence(err) {
			return api.Policy{}, failf(http.StatusConflict, api.CodeConflict, "policy %s of %s changed meanwhile; list it and try again", name, org)
		}
		return api.Policy{}, internal(err)
	}
	view := policyView(rec)
	s.record(ctx, audit.Record{Kind: "policy.removed", Actor: c.id.String(), Decision: "allow",
		Data: jsonRaw(map[string]any{"org": org, "name": name, "sha256": view.SHA256})})
	s.log.Info("organisation policy removed", "org", org, "name", name, "by", c.id.String())
	if err := s.gov.authz.sync(ctx); err != nil {
		return api.Policy{}, internal(err)
	}
	return view, nil
}
