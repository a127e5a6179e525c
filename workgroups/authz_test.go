package workgroups

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cedar-policy/cedar-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func principal(id spiffeid.ID, wgs ...string) Principal {
	p := Principal{ID: id}
	for _, w := range wgs {
		p.Workgroups = append(p.Workgroups, wgID(w))
	}
	return p
}

func mustAuthorizer(t *testing.T, ps ...OrgPolicy) *Authorizer {
	t.Helper()
	a, err := NewAuthorizer(ps...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAuthorizerBuiltins(t *testing.T) {
	a := mustAuthorizer(t)
	ad := sampleAd(t) // provider globexProv, scoped to acme/trade
	adRes := AdvertisementResource(ad)
	s := acceptedSession(t) // acmeAgent -> globexProv in acme/trade
	sesRes := SessionResource(s)

	for _, tc := range []struct {
		name     string
		req      Request
		allow    bool
		policies []string
	}{
		{"discover in shared workgroup", Request{Principal: principal(acmeAgent, "acme/trade"), Action: ActionDiscover, Resource: adRes},
			true, []string{"umbra/discover-in-workgroup"}},
		{"propose in shared workgroup", Request{Principal: principal(acmeAgent, "acme/other", "acme/trade"), Action: ActionPropose, Resource: adRes},
			true, []string{"umbra/discover-in-workgroup"}},
		{"discover without shared workgroup", Request{Principal: principal(acmeAgent, "acme/other"), Action: ActionDiscover, Resource: adRes}, false, nil},
		{"discover with no workgroups", Request{Principal: principal(acmeAgent), Action: ActionDiscover, Resource: adRes}, false, nil},
		{"propose without shared workgroup", Request{Principal: principal(acmeAgent, "globex/x"), Action: ActionPropose, Resource: adRes}, false, nil},
		{"provider discovers own ad", Request{Principal: principal(globexProv, "acme/trade"), Action: ActionDiscover, Resource: adRes},
			true, []string{"umbra/discover-in-workgroup"}},
		{"provider proposes to itself", Request{Principal: principal(globexProv, "acme/trade"), Action: ActionPropose, Resource: adRes},
			false, []string{"umbra/no-self-proposal"}},
		{"provider accepts", Request{Principal: principal(globexProv, "acme/trade"), Action: ActionAccept, Resource: sesRes},
			true, []string{"umbra/accept-as-provider"}},
		{"consumer accepts", Request{Principal: principal(acmeAgent, "acme/trade"), Action: ActionAccept, Resource: sesRes}, false, nil},
		{"provider outside workgroup accepts", Request{Principal: principal(globexProv), Action: ActionAccept, Resource: sesRes}, false, nil},
		{"consumer sends", Request{Principal: principal(acmeAgent, "acme/trade"), Action: ActionSend, Resource: sesRes},
			true, []string{"umbra/send-as-party"}},
		{"provider sends", Request{Principal: principal(globexProv, "acme/trade"), Action: ActionSend, Resource: sesRes},
			true, []string{"umbra/send-as-party"}},
		{"outsider sends", Request{Principal: principal(acmeOther, "acme/trade"), Action: ActionSend, Resource: sesRes}, false, nil},
		{"removed party sends", Request{Principal: principal(acmeAgent, "acme/other"), Action: ActionSend, Resource: sesRes}, false, nil},
		{"send on an advertisement", Request{Principal: principal(acmeAgent, "acme/trade"), Action: ActionSend, Resource: adRes}, false, nil},
		{"discover a session", Request{Principal: principal(acmeAgent, "acme/trade"), Action: ActionDiscover, Resource: sesRes}, false, nil},
		{"accept an advertisement", Request{Principal: principal(globexProv, "acme/trade"), Action: ActionAccept, Resource: adRes}, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := a.Decide(tc.req)
			if d.Allow != tc.allow {
				t.Fatalf("allow = %v, want %v: %+v", d.Allow, tc.allow, d.Diagnostic)
			}
			if !slices.Equal(d.Diagnostic.Policies, tc.policies) {
				t.Fatalf("policies %v, want %v", d.Diagnostic.Policies, tc.policies)
			}
			if len(d.Diagnostic.Reasons) == 0 || len(d.Diagnostic.Errors) != 0 {
				t.Fatalf("diagnostic %+v", d.Diagnostic)
			}
			if (d.Err() == nil) != tc.allow || !tc.allow && !errors.Is(d.Err(), ErrNotAuthorized) {
				t.Fatalf("Err() = %v", d.Err())
			}
		})
	}
}

func TestAuthorizerOrgPolicies(t *testing.T) {
	a := mustAuthorizer(t,
		OrgPolicy{Org: "acme", Name: "no-orders", Text: `
			@id("no-orders")
			forbid (principal in Umbra::Org::"acme", action == Umbra::Action::"send", resource)
			when { context.message_type like "order.*" };`},
		OrgPolicy{Org: "acme", Name: "office-hours", Text: `
			forbid (principal, action == Umbra::Action::"propose", resource)
			when { principal.org == "acme" && context has now && context.now.toTime() > duration("18h") };`},
		// An unrelated organisation cannot touch acme's or globex's requests.
		OrgPolicy{Org: "umbrella", Name: "deny-all", Text: `forbid (principal, action, resource);`},
	)
	s := acceptedSession(t)
	send := func(from spiffeid.ID, typ string) Decision {
		h := sampleHeader(t, s, []byte("x"))
		h.Type = typ
		return a.Decide(Request{Principal: principal(from, "acme/trade"), Action: ActionSend, Resource: SessionResource(s), Context: EnvelopeContext(h, 0)})
	}
	if d := send(acmeAgent, "quote.request"); !d.Allow {
		t.Fatalf("quote denied: %+v", d.Diagnostic)
	}
	d := send(acmeAgent, "order.place")
	if d.Allow || !slices.Equal(d.Diagnostic.Policies, []string{"org/acme/no-orders/no-orders"}) {
		t.Fatalf("order allowed or wrong policy: %+v", d)
	}
	if !strings.Contains(d.Diagnostic.Reasons[0], "forbade send") {
		t.Fatalf("reason %q", d.Diagnostic.Reasons[0])
	}
	// acme's policy is scoped to acme principals; the globex provider may send orders.
	if d := send(globexProv, "order.place"); !d.Allow {
		t.Fatalf("globex order denied: %+v", d.Diagnostic)
	}

	ad := AdvertisementResource(sampleAd(t))
	propose := func(at time.Time) Decision {
		return a.Decide(Request{Principal: principal(acmeAgent, "acme/trade"), Action: ActionPropose, Resource: ad, At: at})
	}
	if d := propose(t0); !d.Allow { // 12:00
		t.Fatalf("daytime proposal denied: %+v", d.Diagnostic)
	}
	if d := propose(t0.Add(7 * time.Hour)); d.Allow || d.Diagnostic.Policies[0] != "org/acme/office-hours/0" {
		t.Fatalf("evening proposal: %+v", d)
	}
}

func TestAuthorizerConditions(t *testing.T) {
	a := mustAuthorizer(t)
	s := acceptedSession(t)
	conds, err := ParseConditions(`
		forbid (principal, action == Umbra::Action::"send", resource) when { context.size > 100 };
		@id("provider-quiet")
		forbid (principal, action == Umbra::Action::"send", resource) when { principal == resource.provider && context.accepted >= 2 };`)
	if err != nil {
		t.Fatal(err)
	}
	if conds.Len() != 2 {
		t.Fatalf("Len = %d", conds.Len())
	}
	send := func(from spiffeid.ID, size int, accepted uint64) Decision {
		h := sampleHeader(t, s, make([]byte, size))
		return a.Decide(Request{Principal: principal(from, "acme/trade"), Action: ActionSend, Resource: SessionResource(s),
			Context: EnvelopeContext(h, accepted), Conditions: conds})
	}
	if d := send(acmeAgent, 100, 0); !d.Allow {
		t.Fatalf("small envelope denied: %+v", d.Diagnostic)
	}
	if d := send(acmeAgent, 101, 0); d.Allow || !slices.Equal(d.Diagnostic.Policies, []string{"contract/0"}) {
		t.Fatalf("large envelope: %+v", d)
	}
	if d := send(globexProv, 1, 2); d.Allow || !slices.Equal(d.Diagnostic.Policies, []string{"contract/provider-quiet"}) {
		t.Fatalf("quiet provider: %+v", d)
	}
	if d := send(acmeAgent, 1, 5); !d.Allow {
		t.Fatalf("consumer affected by provider condition: %+v", d.Diagnostic)
	}
}

func TestPolicyParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy OrgPolicy
		want   string
	}{
		{"permit refused", OrgPolicy{Org: "acme", Name: "p", Text: `permit (principal, action, resource);`}, "only forbid"},
		{"permit after forbid", OrgPolicy{Org: "acme", Name: "p", Text: "forbid (principal, action, resource) when { false };\n\npermit (principal, action, resource);"}, "acme/p:3: only forbid"},
		{"syntax", OrgPolicy{Org: "acme", Name: "p", Text: `forbid (principal, action, resource`}, "acme/p:1:"},
		{"bad org", OrgPolicy{Org: "Acme", Name: "p", Text: ``}, "name"},
		{"bad name", OrgPolicy{Org: "acme", Name: "P!", Text: ``}, "name"},
		{"duplicate @id", OrgPolicy{Org: "acme", Name: "p", Text: `@id("x") forbid (principal, action, resource); @id("x") forbid (principal, action, resource);`}, "used twice"},
		{"bad @id", OrgPolicy{Org: "acme", Name: "p", Text: `@id("a b") forbid (principal, action, resource);`}, "@id"},
		{"too long", OrgPolicy{Org: "acme", Name: "p", Text: strings.Repeat(" ", 4*MaxConditionsBytes+1)}, "longer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewAuthorizer(tc.policy)
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %v, want ErrInvalid containing %q, on one line", err, tc.want)
			}
		})
	}
	if _, err := NewAuthorizer(OrgPolicy{Org: "acme", Name: "p"}, OrgPolicy{Org: "acme", Name: "p"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("duplicate policy name: %v", err)
	}
	if _, err := NewAuthorizer(OrgPolicy{Org: "acme", Name: "p"}, OrgPolicy{Org: "globex", Name: "p"}); err != nil {
		t.Fatalf("same name in two orgs: %v", err)
	}
	if _, err := ParseConditions(`permit (principal, action, resource);`); !errors.Is(err, ErrInvalid) {
		t.Fatalf("permit condition: %v", err)
	}
	if c, err := ParseConditions("  \n "); err != nil || c.Len() != 0 {
		t.Fatalf("blank conditions: %v", err)
	}
	if _, err := ParseConditions(strings.Repeat(" ", 2*MaxConditionsBytes) + "x"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("oversized conditions: %v", err)
	}
}

func TestAuthorizerFailsClosed(t *testing.T) {
	a := mustAuthorizer(t, OrgPolicy{Org: "acme", Name: "sloppy", Text: `forbid (principal, action, resource) when { context.missing == 1 };`})
	ad := AdvertisementResource(sampleAd(t))
	good := Request{Principal: principal(acmeAgent, "acme/trade"), Action: ActionDiscover, Resource: ad}

	d := a.Decide(good)
	if d.Allow || len(d.Diagnostic.Errors) == 0 || !strings.Contains(d.Diagnostic.Errors[0], "org/acme/sloppy/0") {
		t.Fatalf("evaluation error must deny: %+v", d)
	}
	// The same request from another organisation is untouched by acme's policy.
	other := good
	other.Principal = principal(ident("initech", "agent", "x"), "acme/trade")
	if d := a.Decide(other); !d.Allow {
		t.Fatalf("initech denied by acme's policy: %+v", d.Diagnostic)
	}

	plain := mustAuthorizer(t)
	s := acceptedSession(t)
	ses := SessionResource(s)
	for _, tc := range []struct {
		name string
		mut  func(r *Request)
	}{
		{"zero principal", func(r *Request) { r.Principal.ID = spiffeid.ID{} }},
		{"principal not an identity", func(r *Request) { r.Principal.ID = spiffeid.RequireFromString("spiffe://acme.example/x") }},
		{"unknown action", func(r *Request) { r.Action = "delete" }},
		{"empty action", func(r *Request) { r.Action = "" }},
		{"no resource", func(r *Request) { r.Resource = Resource{} }},
		{"both ids", func(r *Request) { r.Resource.Session = s.ID }},
		{"ad with consumer", func(r *Request) { r.Resource.Consumer = acmeAgent }},
		{"no workgroups", func(r *Request) { r.Resource.Workgroups = nil }},
		{"bad workgroup", func(r *Request) { r.Resource.Workgroups = []WorkgroupID{{Org: "acme"}} }},
		{"bad principal workgroup", func(r *Request) { r.Principal.Workgroups = append(r.Principal.Workgroups, WorkgroupID{Org: "X"}) }},
		{"bad provider", func(r *Request) { r.Resource.Provider = spiffeid.ID{} }},
		{"session without consumer", func(r *Request) { r.Resource = ses; r.Resource.Consumer = spiffeid.ID{} }},
		{"session with two workgroups", func(r *Request) {
			r.Resource = ses
			r.Resource.Workgroups = []WorkgroupID{wgID("acme/trade"), wgID("acme/other")}
		}},
		{"nil context value", func(r *Request) { r.Context = cedar.RecordMap{"x": nil} }},
		{"reserved context key", func(r *Request) { r.Context = cedar.RecordMap{"now": cedar.Long(1)}; r.At = t0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := good
			r.Principal.Workgroups = slices.Clone(good.Principal.Workgroups)
			tc.mut(&r)
			d := plain.Decide(r)
			if d.Allow || len(d.Diagnostic.Errors) == 0 || !errors.Is(d.Err(), ErrNotAuthorized) {
				t.Fatalf("malformed request: %+v", d)
			}
		})
	}

	var nilAuth *Authorizer
	if nilAuth.Decide(good).Allow || (&Authorizer{}).Decide(good).Allow {
		t.Fatal("a nil or zero Authorizer allowed")
	}
	var zero Decision
	if zero.Allow || !errors.Is(zero.Err(), ErrNotAuthorized) {
		t.Fatal("zero Decision must deny")
	}
}

func TestPrincipalFor(t *testing.T) {
	ms := []Membership{
		{Workgroup: wgID("acme/b"), Role: RoleMember, Active: true},
		{Workgroup: wgID("acme/a"), Role: RoleAdmin, Active: true},
		{Workgroup: wgID("acme/pending"), Role: RoleMember, Active: false},
		{Workgroup: wgID("acme/a"), Role: RoleMember, Active: true},
		{Role: RoleMember, Active: true},
	}
	p := PrincipalFor(acmeAgent, ms)
	if p.ID != acmeAgent || !slices.Equal(p.Workgroups, []WorkgroupID{wgID("acme/a"), wgID("acme/b")}) {
		t.Fatalf("%+v", p)
	}
}
