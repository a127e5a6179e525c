package sdktest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/umbra-mesh/umbra/agentsdk"
	"github.com/umbra-mesh/umbra/agentsdk/api"
	"github.com/umbra-mesh/umbra/controller/relay"
	"github.com/umbra-mesh/umbra/internal/testlimit"
	"github.com/umbra-mesh/umbra/workgroups"
)

// TestTraceEnvelopeAcrossAgentRelayRecipient sends one envelope from a traced agent to a traced agent through a
// controller that traces its relay, each with its own exporter: the sender's, the relay's and the recipient's
// spans form one trace, parent to child, and carry the session and envelope. A refused envelope's relay span
// carries the refusal code.
func TestTraceEnvelopeAcrossAgentRelayRecipient(t *testing.T) {
	limit := testlimit.Start(t, 6*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	buyerSpans, quoterSpans := tracetest.NewInMemoryExporter(), tracetest.NewInMemoryExporter()
	provider := func(exp *tracetest.InMemoryExporter) *sdktrace.TracerProvider {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		return tp
	}
	// The shared controller traces its relay into relaySpans, recording only envelopes whose sender traces (a
	// second controller in this process would share OpenZiti's process-wide registries with the first).
	e := env
	relaySpans.Reset()

	limit.Step("two organisations, a workgroup and a session")
	orgAdmin := func(org string) *agentsdk.Agent {
		resp, err := e.Admin().Controller().CreateOrg(ctx, org)
		if err != nil {
			t.Fatal(err)
		}
		id, err := agentsdk.Enroll(ctx, resp.AdminToken)
		if err != nil {
			t.Fatal(err)
		}
		a, err := agentsdk.Connect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	tracedAgent := func(admin *agentsdk.Agent, org, name string, exp *tracetest.InMemoryExporter) *agentsdk.Agent {
		resp, err := admin.Controller().CreateIdentity(ctx, api.CreateIdentityRequest{Org: org, Kind: "agent", Name: name})
		if err != nil {
			t.Fatal(err)
		}
		id, err := agentsdk.Enroll(ctx, resp.Token)
		if err != nil {
			t.Fatal(err)
		}
		a, err := agentsdk.Connect(ctx, id, agentsdk.WithTracerProvider(provider(exp)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	n := worldSeq.Add(1)
	acmeOrg, globexOrg := fmt.Sprintf("tacme%d", n), fmt.Sprintf("tglobex%d", n)
	acme, globex := orgAdmin(acmeOrg), orgAdmin(globexOrg)
	quoter := tracedAgent(acme, acmeOrg, "quoter", quoterSpans)
	buyer := tracedAgent(globex, globexOrg, "buyer", buyerSpans)
	wg, err := acme.Controller().CreateWorkgroup(ctx, "pricing", globexOrg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := globex.Controller().AnswerInvitation(ctx, wg.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := acme.Controller().AddMember(ctx, wg.ID, quoter.ID(), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := globex.Controller().AddMember(ctx, wg.ID, buyer.ID(), ""); err != nil {
		t.Fatal(err)
	}
	card := workgroups.AgentCard{Name: "Quoter", Description: "prices widgets", Version: "1.0",
		Skills: []workgroups.Skill{{ID: "quote", Name: "Quote"}}, MessageTypes: []string{"quote.*"}}
	ad, err := quoter.Advertise(ctx, card, defaultTerms(), wg.ID)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := buyer.Propose(ctx, ad.ID, workgroups.Proposal{})
	if err != nil || sess.Info().State != workgroups.StateAccepted {
		t.Fatalf("propose: %v", err)
	}
	recv, err := quoter.Session(ctx, sess.ID())
	if err != nil {
		t.Fatal(err)
	}

	limit.Step("one envelope from buyer to quoter")
	seq, err := sess.Send(ctx, "quote.request", []byte(`{"sku":"w-1"}`))
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, time.Minute)
	env, err := recv.Receive(rctx)
	rcancel()
	if err != nil {
		t.Fatal(err)
	}
	if env.Header.TraceParent == "" {
		t.Fatal("the delivered header carries no traceparent")
	}

	send := onlySpan(t, buyerSpans, "umbra.envelope.send")
	rel := onlySpanOfTrace(t, relaySpans, relay.SpanEnvelope, send.SpanContext.TraceID())
	rcv := onlySpan(t, quoterSpans, "umbra.envelope.receive")
	trace := send.SpanContext.TraceID()
	for _, sp := range []tracetest.SpanStub{send, rel, rcv} {
		if sp.SpanContext.TraceID() != trace {
			t.Fatalf("span %s in trace %s, the send's is %s", sp.Name, sp.SpanContext.TraceID(), trace)
		}
		a := attrs(sp)
		if a["umbra.session.id"].AsString() != sess.ID().String() || a["umbra.envelope.id"].AsString() != env.Header.ID.String() {
			t.Fatalf("span %s attributes %v, want session %s envelope %s", sp.Name, sp.Attributes, sess.ID(), env.Header.ID)
		}
	}
	if send.Parent.IsValid() {
		t.Errorf("the send span has parent %v, want a root", send.Parent)
	}
	if rel.Parent.SpanID() != send.SpanContext.SpanID() || rcv.Parent.SpanID() != send.SpanContext.SpanID() {
		t.Errorf("relay span's parent %s, receive span's parent %s, want both the send span %s",
			rel.Parent.SpanID(), rcv.Parent.SpanID(), send.SpanContext.SpanID())
	}
	if a := attrs(rel); a["umbra.relay.outcome"].AsString() != "accepted" || a["umbra.envelope.seq"].AsInt64() != int64(seq) {
		t.Errorf("relay span attributes %v, want outcome accepted at seq %d", rel.Attributes, seq)
	}
	if a := attrs(send); a["umbra.message.type"].AsString() != "quote.request" || a["umbra.envelope.seq"].AsInt64() != int64(seq) {
		t.Errorf("send span attributes %v", send.Attributes)
	}

	limit.Step("a refused envelope")
	buyerSpans.Reset()
	relaySpans.Reset()
	_, err = sess.Send(ctx, "order.place", []byte(`{}`))
	var re *agentsdk.RelayError
	if !errors.As(err, &re) || re.Code != string(workgroups.ViolationTypeNotAllowed) {
		t.Fatalf("sending a type the contract does not allow: %v", err)
	}
	send = onlySpan(t, buyerSpans, "umbra.envelope.send")
	rel = onlySpanOfTrace(t, relaySpans, relay.SpanEnvelope, send.SpanContext.TraceID())
	if rel.SpanContext.TraceID() != send.SpanContext.TraceID() || rel.Parent.SpanID() != send.SpanContext.SpanID() {
		t.Errorf("the refused envelope's relay span is not the child of its send span")
	}
	if a := attrs(rel); a["umbra.relay.outcome"].AsString() != re.Code || rel.Status.Code != codes.Error {
		t.Errorf("refused envelope's relay span: attributes %v status %v, want outcome %s", rel.Attributes, rel.Status, re.Code)
	}
	if _, stored := attrs(rel)["umbra.envelope.seq"]; stored {
		t.Errorf("refused envelope's relay span has a sequence: %v", rel.Attributes)
	}
	if a := attrs(send); a["umbra.relay.code"].AsString() != re.Code || send.Status.Code != codes.Error {
		t.Errorf("refused send span: attributes %v status %v", send.Attributes, send.Status)
	}

	limit.Step("an HTTP request over the overlay carries the client span's traceparent")
	service := fmt.Sprintf("traced-http-%d", n)
	e.Grant(t, service, []spiffeid.ID{quoter.ID()}, []spiffeid.ID{buyer.ID()})
	ln, err := quoter.Listen(service)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.Header.Get("traceparent"):
		default:
		}
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	buyerSpans.Reset()
	hctx, hcancel := context.WithTimeout(ctx, time.Minute)
	req, _ := http.NewRequestWithContext(hctx, http.MethodGet, "http://"+service+"/price", nil)
	resp, err := buyer.HTTPClient().Do(req)
	hcancel()
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	client := onlySpan(t, buyerSpans, "umbra.http.client")
	want := "00-" + client.SpanContext.TraceID().String() + "-" + client.SpanContext.SpanID().String() + "-01"
	if tp := <-got; tp != want {
		t.Errorf("the service got traceparent %q, want the client span's %q", tp, want)
	}
	if a := attrs(client); a["server.address"].AsString() != service || a["http.response.status_code"].AsInt64() != http.StatusOK {
		t.Errorf("client span attributes %v", client.Attributes)
	}
}

// onlySpan returns the one span named name that exp holds, failing if there is not exactly one.
func onlySpan(t *testing.T, exp *tracetest.InMemoryExporter, name string) tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	for _, sp := range exp.GetSpans() {
		if sp.Name == name {
			found = append(found, sp)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d spans named %s, want 1 (all: %v)", len(found), name, spanNames(exp))
	}
	return found[0]
}

// onlySpanOfTrace returns the one span named name in trace that exp holds, failing if there is not exactly one.
func onlySpanOfTrace(t *testing.T, exp *tracetest.InMemoryExporter, name string, trace oteltrace.TraceID) tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	for _, sp := range exp.GetSpans() {
		if sp.Name == name && sp.SpanContext.TraceID() == trace {
			found = append(found, sp)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d spans named %s in trace %s, want 1 (all: %v)", len(found), name, trace, spanNames(exp))
	}
	return found[0]
}

func spanNames(exp *tracetest.InMemoryExporter) []string {
	var names []string
	for _, sp := range exp.GetSpans() {
		names = append(names, sp.Name)
	}
	return names
}

func attrs(sp tracetest.SpanStub) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range sp.Attributes {
		m[kv.Key] = kv.Value
	}
	return m
}
