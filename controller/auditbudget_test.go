package controller

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/internal/audit"
	"github.com/umbra-mesh/umbra/internal/envstore"
	"github.com/umbra-mesh/umbra/workgroups"
)

// sendAs appends one envelope from from to to in sess as the relay does, and waits for its audit record.
func (w *govWorld) sendAs(ctx context.Context, sess workgroups.Session, from, to spiffeid.ID, seq uint64) {
	w.t.Helper()
	id, err := workgroups.NewEnvelopeID(rand.Reader)
	if err != nil {
		w.t.Fatal(err)
	}
	payload := make([]byte, 512)
	h := workgroups.Header{ID: id, Session: sess.ID, From: from, To: to, Type: "quote.request", Time: time.Now().UTC(),
		ContentType: "application/octet-stream"}.WithPayload(payload)
	stamp := func(seq uint64) ([]byte, error) {
		at := h
		at.Seq = seq
		return workgroups.AppendFrame(nil, at, payload)
	}
	frame, err := stamp(seq)
	if err != nil {
		w.t.Fatal(err)
	}
	app, err := w.s.gov.env.Append(ctx, envstore.Envelope{ID: id.String(), Session: sess.ID.String(), To: to.String(), Data: frame,
		Stamp: stamp, Meta: envelopeMeta(sess.Workgroup, audit.DecisionAllow, nil)}, 0)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := w.s.gov.rec.wait(ctx, app.StreamSeq); err != nil {
		w.t.Fatal(err)
	}
}

// trailBytes is the audit stream's size as JetStream counts it.
func (w *govWorld) trailBytes(ctx context.Context) uint64 {
	w.t.Helper()
	st, err := w.s.gov.audit.Stats(ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	return st.Bytes
}

// TestAuditBudgetStopsOnlyTheSpender has one member propose, send and close as fast as it can with no proposal
// rate: its proposals and envelopes are refused once its actions wrote its day's audit budget, the trail grew by
// at most the budget and one action, and another member still proposes and the provider still sends.
func TestAuditBudgetStopsOnlyTheSpender(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const budget = 64 << 10
	w := openGovWorld(t, t.TempDir(), Config{AuditBytesPerIdentityDay: budget, ProposalsPerMinute: -1})
	w.tasks.Add(1)
	bctx, bcancel := context.WithCancel(ctx)
	defer bcancel()
	go func() {
		defer w.tasks.Done()
		w.s.gov.budget.run(bctx)
	}()

	// A third member of the workgroup, and a session the provider will send on later, opened by it.
	other := caller{id: spiffeid.RequireFromSegments(worldTD, "acme", "agent", "other"),
		rec: identityRecord{SPIFFEID: "spiffe://umbra.local/acme/agent/other", Org: "acme", Kind: "agent", Name: "other"}}
	if _, err := w.s.gov.wgs.update(ctx, wgKey(w.ad.Workgroups[0]), func(wg *workgroups.Workgroup) error {
		return wg.AddMember(worldAdmin, other.id, workgroups.RoleMember, time.Now().UTC())
	}); err != nil {
		t.Fatal(err)
	}
	kept, err := w.s.propose(ctx, other, api.ProposeRequest{Advertisement: w.ad.ID.String()})
	if err != nil {
		t.Fatal(err)
	}

	before := w.trailBytes(ctx)
	var maxAction uint64
	admitted := 0
	start := time.Now()
	for {
		at := w.trailBytes(ctx)
		sess, err := w.propose(ctx, false)
		var f *fault
		if errors.As(err, &f) && f.code == api.CodeAuditBudgetExhausted {
			refusedWith(t, err, api.CodeAuditBudgetExhausted)
			if f.retryAfter <= 0 || f.retryAfter > budgetWindow {
				t.Fatalf("Retry-After %v, want until the end of the UTC day", f.retryAfter)
			}
			break
		}
		if err != nil {
			t.Fatalf("propose %d: %v", admitted+1, err)
		}
		if admitted++; admitted > 1000 {
			t.Fatal("1000 proposals admitted under a budget of 64 KiB")
		}
		w.sendAs(ctx, sess, worldConsumer, worldProvider, 1)
		if _, err := w.s.closeByCaller(ctx, w.consumer, sess.ID.String(), "done"); err != nil {
			t.Fatal(err)
		}
		maxAction = max(maxAction, w.trailBytes(ctx)-at)
	}
	spent := w.trailBytes(ctx) - before
	t.Logf("audit budget %d bytes: %d propose/send/close rounds admitted in %v, the trail grew %d bytes (largest round %d bytes)",
		budget, admitted, time.Since(start).Round(time.Millisecond), spent, maxAction)
	if admitted == 0 {
		t.Fatal("no proposal admitted")
	}
	// The refusal's own record is one more action's worth at most.
	if spent > budget+2*maxAction {
		t.Fatalf("the trail grew %d bytes, over the budget %d and one round (%d)", spent, budget, maxAction)
	}

	// The spender's envelopes are refused at the relay too, in any session, with the same code.
	code, msg, refused := relayBudget{w.s}.Admit(ctx, worldConsumer, kept.Session.ID.String(), "env_x")
	if !refused || code != api.CodeAuditBudgetExhausted || msg == "" {
		t.Fatalf("relay admitted the spender's envelope: %v %q %q", refused, code, msg)
	}
	// The others carry on.
	rb := relayBudget{w.s}
	if code, _, refused := rb.Admit(ctx, worldProvider, kept.Session.ID.String(), "env_y"); refused {
		t.Fatalf("relay refused the provider's envelope: %s", code)
	}
	w.sendAs(ctx, kept.Session, worldProvider, other.id, 1)
	if _, err := w.s.propose(ctx, other, api.ProposeRequest{Advertisement: w.ad.ID.String()}); err != nil {
		t.Fatalf("another member's proposal: %v", err)
	}

	// Through a gateway: the record that would begin the spender's tool or model call is refused, so the gateway
	// refuses the call; the gateway's records of the refusals that follow are limited like the relay's; another
	// member's calls and the outcome of a call under way are recorded.
	for _, id := range []caller{w.consumer, other} {
		if err := w.s.ids.create(ctx, identityRecord{SPIFFEID: id.id.String(), Org: "acme", Kind: "agent", Name: id.id.Path()}); err != nil {
			t.Fatal(err)
		}
	}
	gw := caller{id: spiffeid.RequireFromSegments(worldTD, "acme", "gateway", "mcp"),
		rec: identityRecord{SPIFFEID: "spiffe://umbra.local/acme/gateway/mcp", Org: "acme", Kind: api.GatewayKind, Name: "mcp"}}
	for _, kind := range []string{"mcp.call", "mcp.prompt", "mcp.read", "llm.call"} {
		_, err := w.s.appendGatewayRecord(ctx, gw, audit.Record{Kind: kind, Actor: worldConsumer.String(), Decision: audit.DecisionAllow}, "")
		refusedWith(t, err, api.CodeAuditBudgetExhausted)
	}
	if _, err := w.s.appendGatewayRecord(ctx, gw, audit.Record{Kind: "mcp.outcome", Actor: worldConsumer.String()}, ""); err != nil {
		t.Fatalf("the outcome of a call under way: %v", err)
	}
	if _, err := w.s.appendGatewayRecord(ctx, gw, audit.Record{Kind: "mcp.call", Actor: other.id.String(), Decision: audit.DecisionAllow}, ""); err != nil {
		t.Fatalf("another member's tool call: %v", err)
	}
	grown := w.trailBytes(ctx)
	for range 500 {
		out, err := w.s.appendGatewayRecord(ctx, gw, audit.Record{Kind: "mcp.denied", Actor: worldConsumer.String(),
			Decision: audit.DecisionDeny, Reason: "audit_budget_exhausted"}, "")
		if err != nil {
			t.Fatalf("a gateway's refusal record: %v", err)
		}
		if out["limited"] != true {
			t.Fatalf("a gateway's refusal record of the spender was appended as is: %v", out)
		}
	}
	if g := w.trailBytes(ctx) - grown; g > 100<<10 {
		t.Fatalf("500 gateway refusals of the spender grew the trail by %d bytes, want the limiter's few records", g)
	}

	// The count is in the table, where another controller would read it.
	if err := w.s.gov.budget.flush(ctx); err != nil {
		t.Fatal(err)
	}
	v, _, err := w.s.gov.budget.table.get(ctx, idKey(worldConsumer))
	if err != nil {
		t.Fatal(err)
	}
	if v.Bytes < budget || !v.Day.Equal(dayOf(time.Now())) {
		t.Fatalf("stored count %+v, want at least the budget %d today", v, budget)
	}
	// A second budget on the same table (another controller) refuses the spender too.
	second := &auditBudget{table: w.s.gov.budget.table, limit: budget, self: w.s.controllerID.String(), log: w.s.log,
		pending: map[string]int64{}, cached: map[string]cachedSpend{}, kick: make(chan struct{}, 1)}
	if f, err := second.refusal(ctx, worldConsumer, false); err != nil || f == nil {
		t.Fatalf("another controller admits the spender: %v, %v", f, err)
	}
	if f, err := second.refusal(ctx, other.id, false); err != nil || f != nil {
		t.Fatalf("another controller refuses another member: %v, %v", f, err)
	}
}
