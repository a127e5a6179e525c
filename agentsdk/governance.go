package agentsdk

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/workgroups"
)

// ErrContractViolation: the relay refused an envelope under the session's contract (see *RelayError).
var ErrContractViolation = errors.New("contract violation")

// ErrRejected: a proposal was rejected (by the terms or by the provider).
var ErrRejected = errors.New("proposal rejected")

func (c *Controller) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+api.ServiceName+path, nil)
	if err != nil {
		return err
	}
	return doJSON(c.client, req, out)
}

// CreateOrg creates an organisation (platform administrator only) and returns the enrollment token of its
// administrator, spiffe://<td>/<org>/admin/admin.
func (c *Controller) CreateOrg(ctx context.Context, name string) (api.CreateOrgResponse, error) {
	var out api.CreateOrgResponse
	if err := c.post(ctx, api.PathOrgs, api.CreateOrgRequest{Name: name}, &out); err != nil {
		return out, fmt.Errorf("agentsdk: create org %s: %w", name, err)
	}
	return out, nil
}

// CreateWorkgroup creates a workgroup owned by the caller's organisation; invited organisations make it
// inter-org, active once every one of them accepts.
func (c *Controller) CreateWorkgroup(ctx context.Context, name string, invite ...string) (api.WorkgroupView, error) {
	var out api.WorkgroupView
	if err := c.post(ctx, api.PathWorkgroups, api.CreateWorkgroupRequest{Name: name, Invite: invite}, &out); err != nil {
		return out, fmt.Errorf("agentsdk: create workgroup %s: %w", name, err)
	}
	return out, nil
}

// AnswerInvitation accepts (or, with decline, declines for good) the invitation of the caller's organisation.
func (c *Controller) AnswerInvitation(ctx context.Context, workgroup workgroups.WorkgroupID, decline bool) (api.WorkgroupView, error) {
	var out api.WorkgroupView
	if err := c.post(ctx, api.PathWorkgroupAnswer, api.AnswerWorkgroupRequest{Workgroup: workgroup.String(), Decline: decline}, &out); err != nil {
		return out, fmt.Errorf("agentsdk: answer invitation to %s: %w", workgroup, err)
	}
	return out, nil
}

// AddMember adds an identity of the caller's organisation to a workgroup.
// An empty role means workgroups.RoleMember.
func (c *Controller) AddMember(ctx context.Context, workgroup workgroups.WorkgroupID, identity spiffeid.ID, role workgroups.Role) (api.WorkgroupView, error) {
	var out api.WorkgroupView
	req := api.MemberRequest{Workgroup: workgroup.String(), Identity: identity.String(), Role: role}
	if err := c.post(ctx, api.PathWorkgroupMembers, req, &out); err != nil {
		return out, fmt.Errorf("agentsdk: add %s to %s: %w", identity, workgroup, err)
	}
	return out, nil
}

// RemoveMember removes a member; its sessions that needed the workgroup close (membership_removed).
func (c *Controller) RemoveMember(ctx context.Context, workgroup workgroups.WorkgroupID, identity spiffeid.ID) (api.WorkgroupView, error) {
	var out api.WorkgroupView
	req := api.MemberRequest{Workgroup: workgroup.String(), Identity: identity.String(), Remove: true}
	if err := c.post(ctx, api.PathWorkgroupMembers, req, &out); err != nil {
		return out, fmt.Errorf("agentsdk: remove %s from %s: %w", identity, workgroup, err)
	}
	return out, nil
}

// DeleteWorkgroup deletes a workgroup; its sessions close (workgroup_deleted).
func (c *Controller) DeleteWorkgroup(ctx context.Context, workgroup workgroups.WorkgroupID) error {
	if err := c.post(ctx, api.PathWorkgroupDelete, api.DeleteWorkgroupRequest{Workgroup: workgroup.String()}, nil); err != nil {
		return fmt.Errorf("agentsdk: delete workgroup %s: %w", workgroup, err)
	}
	return nil
}

// Workgroups lists the workgroups the caller belongs to (and, for administrators, its organisation's and its
// invitations).
func (c *Controller) Workgroups(ctx context.Context) ([]api.WorkgroupView, error) {
	var out []api.WorkgroupView
	if err := c.get(ctx, api.PathWorkgroups, &out); err != nil {
		return nil, fmt.Errorf("agentsdk: workgroups: %w", err)
	}
	return out, nil
}

// AuditVerifyOption varies what AuditVerify requires of the chain.
type AuditVerifyOption func(q url.Values)

// AuditAfter makes AuditVerify fail unless the chain still holds the record seq with hash h: a checkpoint kept
// from an earlier verification (the report's LastCheckpoint). A chain truncated before it, rolled back to an
// older copy or rewritten then fails.
func AuditAfter(seq uint64, h string) AuditVerifyOption {
	return func(q url.Values) { q.Set(api.AuditAfterParam, strconv.FormatUint(seq, 10)+":"+h) }
}

// AuditVerify checks the hash chain of the whole audit stream and every signed checkpoint in it (platform
// administrator only). A chain that does not verify is a report with OK false, not an error.
func (c *Controller) AuditVerify(ctx context.Context, opts ...AuditVerifyOption) (api.AuditReport, error) {
	q := url.Values{}
	for _, o := range opts {
		o(q)
	}
	path := api.PathAuditVerify
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out api.AuditReport
	if err := c.get(ctx, path, &out); err != nil {
		return out, fmt.Errorf("agentsdk: audit verify: %w", err)
	}
	return out, nil
}

// AuditArchive trims the audit trail through the record at seq with hash hash (platform admin only): the
// controller checks that one of its checkpoints signs that record, records an audit.archived record naming it,
// and removes every record up to it. Export and verify the trail first, and keep that export: it is then the
// only copy of the records removed.
func (c *Controller) AuditArchive(ctx context.Context, seq uint64, hash string) (api.AuditArchived, error) {
	var out api.AuditArchived
	req := api.AuditArchiveRequest{Through: strconv.FormatUint(seq, 10) + ":" + hash}
	if err := c.post(ctx, api.PathAuditArchive, req, &out); err != nil {
		return out, fmt.Errorf("agentsdk: audit archive: %w", err)
	}
	return out, nil
}

// AuditKey returns the Ed25519 public key the controller signs audit checkpoints with. Fetched over the
// overlay it is only as trustworthy as the controller at that moment: compare it once, out of band, and keep it.
func (c *Controller) AuditKey(ctx context.Context) (ed25519.PublicKey, error) {
	var out api.AuditKey
	if err := c.get(ctx, api.PathAuditKey, &out); err != nil {
		return nil, fmt.Errorf("agentsdk: audit key: %w", err)
	}
	blk, _ := pem.Decode([]byte(out.PublicKey))
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("agentsdk: audit key: controller sent no PEM public key")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: audit key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("agentsdk: audit key: controller sent a %T, want Ed25519", k)
	}
	return pub, nil
}

// AuditSession reconstructs a session: parties, contract, transitions, every envelope header, every refusal.
func (c *Controller) AuditSession(ctx context.Context, id workgroups.SessionID) (api.SessionAudit, error) {
	var out api.SessionAudit
	if err := c.get(ctx, api.PathAuditSession+url.PathEscape(id.String()), &out); err != nil {
		return out, fmt.Errorf("agentsdk: audit session %s: %w", id, err)
	}
	return out, nil
}

// AuditExport streams the whole audit trail as JSON lines (platform administrator only).
func (c *Controller) AuditExport(ctx context.Context) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+api.ServiceName+api.PathAuditExport, nil)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: audit export: %w", err)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: audit export: %w", ctxError(ctx, err))
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("agentsdk: audit export: controller answered %s", resp.Status)
	}
	return resp, nil
}

// EnvelopesExport starts an export of the envelopes of sessions that have left the session table (platform
// admin only): JSON lines of api.ExportedEnvelope in stream order, ending with an api.EnvelopeExportEnd whose
// manifest names each session with its count and digest. An export without that last line is incomplete. The
// caller reads and closes the body.
func (c *Controller) EnvelopesExport(ctx context.Context, maxSessions int) (*http.Response, error) {
	u := "http://" + api.ServiceName + api.PathEnvelopesExport
	if maxSessions > 0 {
		u += "?" + api.EnvelopesMaxSessionsParam + "=" + strconv.Itoa(maxSessions)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: envelopes export: %w", err)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: envelopes export: %w", ctxError(ctx, err))
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e api.Error
		if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e) == nil && e.Code != "" {
			return nil, fmt.Errorf("agentsdk: envelopes export: %w", &APIError{Status: resp.StatusCode, Code: e.Code, Message: e.Message, ID: e.ID})
		}
		return nil, fmt.Errorf("agentsdk: envelopes export: controller answered %s", resp.Status)
	}
	return resp, nil
}

// EnvelopesArchive removes from the envelope stream the envelopes of the sessions req names, as an export's
// manifest gave them (platform admin only, at most api.MaxArchiveSessions at once): the controller checks each
// session's stored envelopes against its count and digest and records the archive before removing them.
func (c *Controller) EnvelopesArchive(ctx context.Context, req api.EnvelopeArchiveRequest) (api.EnvelopesArchived, error) {
	var out api.EnvelopesArchived
	if err := c.post(ctx, api.PathEnvelopesArchive, req, &out); err != nil {
		return out, fmt.Errorf("agentsdk: envelopes archive: %w", err)
	}
	return out, nil
}

// Advertise publishes this agent's card and the contract terms it offers, in workgroups it is a member of.
func (a *Agent) Advertise(ctx context.Context, card workgroups.AgentCard, terms workgroups.Terms, in ...workgroups.WorkgroupID) (workgroups.Advertisement, error) {
	var out workgroups.Advertisement
	req := api.AdvertiseRequest{Workgroups: make([]string, len(in)), Card: card, Terms: terms}
	for i, wg := range in {
		req.Workgroups[i] = wg.String()
	}
	if err := a.Controller().post(ctx, api.PathAdvertisements, req, &out); err != nil {
		return out, fmt.Errorf("agentsdk: advertise: %w", err)
	}
	return out, nil
}

// Discover lists the advertisements this agent may see: only those in workgroups it shares.
func (a *Agent) Discover(ctx context.Context, req api.DiscoverRequest) ([]workgroups.Advertisement, error) {
	var out []workgroups.Advertisement
	if err := a.Controller().post(ctx, api.PathDiscover, req, &out); err != nil {
		return nil, fmt.Errorf("agentsdk: discover: %w", err)
	}
	return out, nil
}

// Propose asks for a session on an advertisement. A proposal within the advertised terms is accepted by the
// controller at once; one outside them is rejected (ErrRejected, with the reason) or held for the provider.
func (a *Agent) Propose(ctx context.Context, advertisement workgroups.AdvertisementID, p workgroups.Proposal) (*Session, error) {
	var out api.ProposeResponse
	if err := a.Controller().post(ctx, api.PathSessions, api.ProposeRequest{Advertisement: advertisement.String(), Proposal: p}, &out); err != nil {
		return nil, fmt.Errorf("agentsdk: propose: %w", err)
	}
	if out.Session.State == workgroups.StateRejected {
		return nil, fmt.Errorf("agentsdk: propose: %w: %s", ErrRejected, out.Reason)
	}
	return a.newSession(out.Session), nil
}

// Sessions lists this agent's sessions, optionally only those in one state.
func (a *Agent) Sessions(ctx context.Context, state workgroups.State) ([]api.SessionView, error) {
	var out []api.SessionView
	path := api.PathSessions
	if state != "" {
		path += "?state=" + url.QueryEscape(string(state))
	}
	if err := a.Controller().get(ctx, path, &out); err != nil {
		return nil, fmt.Errorf("agentsdk: sessions: %w", err)
	}
	return out, nil
}

// Session returns a handle on an existing session this agent is a party of.
func (a *Agent) Session(ctx context.Context, id workgroups.SessionID) (*Session, error) {
	var out api.SessionView
	if err := a.Controller().get(ctx, api.PathSessions+"/"+url.PathEscape(id.String()), &out); err != nil {
		return nil, fmt.Errorf("agentsdk: session %s: %w", id, err)
	}
	return a.newSession(out.Session), nil
}

func (a *Agent) sessionAction(ctx context.Context, id workgroups.SessionID, action, reason string) (api.SessionView, error) {
	var out api.SessionView
	err := a.Controller().post(ctx, api.PathSessions+"/"+url.PathEscape(id.String())+"/"+action, api.SessionActionRequest{Reason: reason}, &out)
	return out, err
}

// Accept accepts a proposal held for this agent as provider.
func (a *Agent) Accept(ctx context.Context, id workgroups.SessionID, reason string) (*Session, error) {
	v, err := a.sessionAction(ctx, id, "accept", reason)
	if err != nil {
		return nil, fmt.Errorf("agentsdk: accept %s: %w", id, err)
	}
	return a.newSession(v.Session), nil
}

// Reject rejects a proposal held for this agent as provider.
func (a *Agent) Reject(ctx context.Context, id workgroups.SessionID, reason string) error {
	if _, err := a.sessionAction(ctx, id, "reject", reason); err != nil {
		return fmt.Errorf("agentsdk: reject %s: %w", id, err)
	}
	return nil
}

// Withdraw takes back a proposal of this agent's that still awaits its provider (held): it ends rejected, as
// withdrawn by the consumer, and no longer counts against this agent's pending proposals. Only the agent that
// proposed it may withdraw it; withdrawing one that was answered or withdrawn already fails with the reason.
func (a *Agent) Withdraw(ctx context.Context, id workgroups.SessionID, reason string) error {
	if _, err := a.sessionAction(ctx, id, "withdraw", reason); err != nil {
		return fmt.Errorf("agentsdk: withdraw %s: %w", id, err)
	}
	return nil
}

// OnProposal calls decide for every proposal held for this agent as provider, accepting it when decide returns
// true and rejecting it otherwise, until ctx ends. Proposals reach it as they are held: OnProposal follows the
// controller's session event feed (SessionEvents), and lists the held proposals every interval besides (default
// 30s) in case the feed missed one. Against a controller without the feed it lists them every interval (default
// 1s). An answer that fails is tried again at the next list.
func (a *Agent) OnProposal(ctx context.Context, interval time.Duration, decide func(workgroups.Session) (bool, string)) error {
	period, poll := listPeriods(interval)
	watch := a.watchSessions(ctx)
	defer watch.stop()
	// answered are the proposals answered lately: an event or a list older than the answer must not bring
	// them to decide again.
	answered := map[workgroups.SessionID]time.Time{}
	answer := func(s workgroups.Session) {
		if s.Provider != a.ID() || s.State != workgroups.StateHeld || !answered[s.ID].IsZero() {
			return
		}
		ok, reason := decide(s)
		var err error
		if ok {
			_, err = a.Accept(ctx, s.ID, reason)
		} else {
			err = a.Reject(ctx, s.ID, reason)
		}
		if err != nil {
			a.opts.log.Warn("answering a proposal failed", "session", s.ID.String(), "err", err)
			return
		}
		answered[s.ID] = time.Now()
	}
	list := func() {
		for id, at := range answered {
			if time.Since(at) > time.Minute {
				delete(answered, id)
			}
		}
		held, err := a.Sessions(ctx, workgroups.StateHeld)
		if err != nil {
			return
		}
		for _, v := range held {
			answer(v.Session)
		}
	}
	t := time.NewTimer(0)
	defer t.Stop()
	events, gone := watch.events, watch.gone
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-gone:
			events, gone, period = nil, nil, poll
			t.Reset(0)
		case e := <-events:
			if e.Resync {
				list()
			} else {
				answer(e.Session)
			}
		case <-t.C:
			list()
			t.Reset(period)
		}
	}
}

// Lookup returns what the controller knows of an identity (gateways and administrators only).
func (c *Controller) Lookup(ctx context.Context, id spiffeid.ID) (api.IdentityInfo, error) {
	var out api.IdentityInfo
	if err := c.post(ctx, api.PathIdentityLookup, api.LookupRequest{SPIFFEID: id.String()}, &out); err != nil {
		return out, fmt.Errorf("agentsdk: lookup %s: %w", id, err)
	}
	return out, nil
}

// Inventory lists what exists on the platform (administrators only; an organisation administrator sees its own
// organisation's).
func (c *Controller) Inventory(ctx context.Context) (api.Inventory, error) {
	var out api.Inventory
	if err := c.get(ctx, api.PathInventory, &out); err != nil {
		return out, fmt.Errorf("agentsdk: inventory: %w", err)
	}
	return out, nil
}

// Posture returns the posture findings and the drift since the recorded baseline (administrators only). query
// may override the policy the findings hold the state to (see docs/posture.md); nil keeps the defaults.
func (c *Controller) Posture(ctx context.Context, query url.Values) (api.PostureReport, error) {
	var out api.PostureReport
	path := api.PathPosture
	if len(query) > 0 {
		path += "?" + query.Encode()
	}
	if err := c.get(ctx, path, &out); err != nil {
		return out, fmt.Errorf("agentsdk: posture: %w", err)
	}
	return out, nil
}

// Alerts returns anomaly alerts, oldest first (administrators only; an organisation administrator gets its
// organisation's): with after 0 the latest ones, otherwise those after the cursor an earlier answer gave, waiting
// up to wait (the controller caps it at 20 s) for one to come.
func (c *Controller) Alerts(ctx context.Context, after uint64, wait time.Duration) (api.Alerts, error) {
	var out api.Alerts
	q := url.Values{"after": {strconv.FormatUint(after, 10)}}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	if err := c.get(ctx, api.PathAlerts+"?"+q.Encode(), &out); err != nil {
		return out, fmt.Errorf("agentsdk: alerts: %w", err)
	}
	return out, nil
}

// RecordBaseline records the current inventory as the baseline later posture reports compare with
// (administrators only; an organisation administrator records its organisation's).
func (c *Controller) RecordBaseline(ctx context.Context) (api.BaselineResponse, error) {
	var out api.BaselineResponse
	if err := c.post(ctx, api.PathPostureBase, struct{}{}, &out); err != nil {
		return out, fmt.Errorf("agentsdk: record posture baseline: %w", err)
	}
	return out, nil
}
