package workgroups

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDurationJSON(t *testing.T) {
	var v struct {
		D Duration `json:"d"`
	}
	if err := json.Unmarshal([]byte(`{"d":"1h30m"}`), &v); err != nil || time.Duration(v.D) != 90*time.Minute {
		t.Fatalf("got %v, %v", v.D, err)
	}
	for _, in := range []string{`{"d":90}`, `{"d":"ninety"}`, `{"d":"` + strings.Repeat("1", 40) + `s"}`} {
		if err := json.Unmarshal([]byte(in), &v); err == nil {
			t.Errorf("%s accepted", in)
		}
	}
	b, _ := json.Marshal(struct {
		D Duration `json:"d"`
	}{Duration(90 * time.Second)})
	if string(b) != `{"d":"1m30s"}` {
		t.Fatalf("marshal: %s", b)
	}
}

func TestParseTerms(t *testing.T) {
	good := `{"max_duration":"1h","max_messages":100,"allowed_message_types":["quote.*","order.place"],` +
		`"max_envelope_bytes":65536,"required_workgroups":["acme/trade"],` +
		`"conditions":"forbid (principal, action, resource) when { context has size && context.size > 100 };",` +
		`"hold_for_provider":true}`
	tm, err := ParseTerms([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if !tm.HoldForProvider || tm.MaxMessages != 100 || len(tm.RequiredWorkgroups) != 1 {
		t.Fatalf("got %+v", tm)
	}
	set := func(k, v string) string { // replace one field's value in good
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(good), &m); err != nil {
			t.Fatal(err)
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = json.RawMessage(v)
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	for _, tc := range []struct {
		name, in string
		want     error
	}{
		{"no duration", set("max_duration", ""), ErrInvalid},
		{"zero duration", set("max_duration", `"0s"`), ErrInvalid},
		{"negative duration", set("max_duration", `"-1h"`), ErrInvalid},
		{"duration over a year", set("max_duration", `"9000h"`), ErrInvalid},
		{"numeric duration", set("max_duration", `3600`), ErrMalformed},
		{"no messages", set("max_messages", `0`), ErrInvalid},
		{"negative messages", set("max_messages", `-1`), ErrMalformed},
		{"no types", set("allowed_message_types", `[]`), ErrInvalid},
		{"bad type", set("allowed_message_types", `["Quote"]`), ErrInvalid},
		{"star type", set("allowed_message_types", `["*"]`), ErrInvalid},
		{"repeated type", set("allowed_message_types", `["a.b","a.b"]`), ErrInvalid},
		{"no bytes", set("max_envelope_bytes", `0`), ErrInvalid},
		{"too many bytes", set("max_envelope_bytes", `99999999999`), ErrInvalid},
		{"bad workgroup", set("required_workgroups", `["acme"]`), ErrMalformed},
		{"repeated workgroup", set("required_workgroups", `["acme/a","acme/a"]`), ErrInvalid},
		{"bad cedar", set("conditions", `"forbid (principal"`), ErrInvalid},
		{"permit condition", set("conditions", `"permit (principal, action, resource);"`), ErrInvalid},
		{"unknown field", set("max_tokens", `5`), ErrMalformed},
		{"duplicate field", strings.Replace(good, `"max_messages":100`, `"max_messages":1,"max_messages":100`, 1), ErrMalformed},
		{"camel case", strings.Replace(good, `"max_messages"`, `"Max_Messages"`, 1), ErrMalformed},
		{"trailing", good + "{}", ErrMalformed},
		{"too large", `{"conditions":"` + strings.Repeat(" ", maxContractJSONBytes) + `"}`, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTerms([]byte(tc.in))
			wantErr(t, err, tc.want)
		})
	}
}

func TestParseContractAndProposal(t *testing.T) {
	c, err := ParseContract([]byte(`{"max_duration":"10m","max_messages":5,"allowed_message_types":["a.b"],"max_envelope_bytes":10}`))
	if err != nil || c.MaxMessages != 5 || !c.Allows("a.b") || c.Allows("a.c") {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := ParseContract([]byte(`{"max_duration":"10m","max_messages":5,"allowed_message_types":["a.b"],"max_envelope_bytes":10,"hold_for_provider":true}`)); err == nil {
		t.Fatal("a contract has no hold_for_provider")
	}
	if _, err := ParseContract([]byte(`{"max_messages":5}`)); err == nil {
		t.Fatal("incomplete contract accepted")
	}
	// A proposal may leave everything out.
	p, err := ParseProposal([]byte(`{}`))
	if err != nil || !reflect.DeepEqual(p, Proposal{}) {
		t.Fatalf("%+v %v", p, err)
	}
	p, err = ParseProposal([]byte(`{"max_messages":3,"allowed_message_types":["quote.request"]}`))
	if err != nil || p.MaxMessages != 3 {
		t.Fatalf("%+v %v", p, err)
	}
	for _, in := range []string{`{"max_duration":"-1s"}`, `{"max_envelope_bytes":-1}`, `{"allowed_message_types":["x..y"]}`, `{"terms":{}}`} {
		if _, err := ParseProposal([]byte(in)); err == nil {
			t.Errorf("ParseProposal(%s) succeeded", in)
		}
	}
}

func TestAdmit(t *testing.T) {
	terms := sampleTerms()
	terms.RequiredWorkgroups = []WorkgroupID{wgID("acme/trade")}
	terms.Conditions = `forbid (principal, action, resource) when { context has size && context.size > 50000 };`
	held := terms
	held.HoldForProvider = true

	for _, tc := range []struct {
		name       string
		terms      Terms
		p          Proposal
		verdict    Verdict
		deviations []string // the Term of each deviation
	}{
		{"empty proposal takes the offer", terms, Proposal{}, VerdictAccept, nil},
		{"lower maxima", terms, Proposal{MaxDuration: Duration(time.Minute), MaxMessages: 10, MaxEnvelopeBytes: 100}, VerdictAccept, nil},
		{"equal maxima", terms, Proposal{MaxDuration: terms.MaxDuration, MaxMessages: 100, MaxEnvelopeBytes: terms.MaxEnvelopeBytes}, VerdictAccept, nil},
		{"subset of types", terms, Proposal{AllowedMessageTypes: []string{"quote.request", "quote.v2.*", "order.place"}}, VerdictAccept, nil},
		{"extra workgroups and conditions", terms, Proposal{RequiredWorkgroups: []WorkgroupID{wgID("globex/x")}, Conditions: `forbid (principal, action, resource) when { false };`}, VerdictAccept, nil},
		{"too long", terms, Proposal{MaxDuration: Duration(2 * time.Hour)}, VerdictReject, []string{"max_duration"}},
		{"too many messages", terms, Proposal{MaxMessages: 101}, VerdictReject, []string{"max_messages"}},
		{"too large", terms, Proposal{MaxEnvelopeBytes: 64<<10 + 1}, VerdictReject, []string{"max_envelope_bytes"}},
		{"type not offered", terms, Proposal{AllowedMessageTypes: []string{"quote.request", "order.cancel"}}, VerdictReject, []string{"allowed_message_types"}},
		{"pattern broader than offer", terms, Proposal{AllowedMessageTypes: []string{"order.*"}}, VerdictReject, []string{"allowed_message_types"}},
		{"everything wrong", terms, Proposal{MaxDuration: Duration(2 * time.Hour), MaxMessages: 1000, MaxEnvelopeBytes: 1 << 20, AllowedMessageTypes: []string{"x.y"}},
			VerdictReject, []string{"max_duration", "max_messages", "max_envelope_bytes", "allowed_message_types"}},
		{"held instead of rejected", held, Proposal{MaxMessages: 500}, VerdictHold, []string{"max_messages"}},
		{"held accepts within terms", held, Proposal{MaxMessages: 5}, VerdictAccept, nil},
		{"invalid proposal is rejected, not held", held, Proposal{AllowedMessageTypes: []string{"BAD"}}, VerdictReject, []string{"proposal"}},
		{"invalid proposal conditions", held, Proposal{Conditions: "permit (principal, action, resource);"}, VerdictReject, []string{"proposal"}},
		{"invalid terms", Terms{}, Proposal{}, VerdictReject, []string{"terms"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			adm := tc.terms.Admit(tc.p)
			if adm.Verdict != tc.verdict {
				t.Fatalf("verdict %s, want %s (%s)", adm.Verdict, tc.verdict, adm.Reason())
			}
			var got []string
			for _, d := range adm.Deviations {
				got = append(got, d.Term)
			}
			if !reflect.DeepEqual(got, tc.deviations) {
				t.Fatalf("deviations %v, want %v", got, tc.deviations)
			}
			if adm.Accepted() != (tc.verdict == VerdictAccept) {
				t.Fatal("Accepted()")
			}
			if adm.Verdict == VerdictAccept {
				if err := adm.Contract.Validate(); err != nil {
					t.Fatalf("frozen contract invalid: %v", err)
				}
				if adm.Reason() != "within the advertised terms" {
					t.Fatalf("reason %q", adm.Reason())
				}
			}
		})
	}

	// Terms and proposal each valid, their union not: rejected, even when
	// the terms would hold.
	wide, many := held, Proposal{}
	wide.RequiredWorkgroups = nil
	for i := range MaxRequiredGroups {
		wide.RequiredWorkgroups = append(wide.RequiredWorkgroups, WorkgroupID{Org: "acme", Name: fmt.Sprintf("t%d", i)})
		many.RequiredWorkgroups = append(many.RequiredWorkgroups, WorkgroupID{Org: "acme", Name: fmt.Sprintf("p%d", i)})
	}
	if adm := wide.Admit(many); adm.Verdict != VerdictReject || len(adm.Deviations) != 1 || adm.Deviations[0].Term != "contract" {
		t.Fatalf("oversized union: %+v", adm)
	}

	// The frozen contract: zero fields take the offer, workgroups are
	// merged, conditions are joined, types are what was asked.
	adm := terms.Admit(Proposal{
		MaxMessages:         7,
		AllowedMessageTypes: []string{"quote.request"},
		RequiredWorkgroups:  []WorkgroupID{wgID("globex/x"), wgID("acme/trade")},
		Conditions:          `forbid (principal, action, resource) when { false };`,
	})
	c := adm.Contract
	if c.MaxMessages != 7 || c.MaxDuration != terms.MaxDuration || c.MaxEnvelopeBytes != terms.MaxEnvelopeBytes {
		t.Fatalf("maxima: %+v", c)
	}
	if !reflect.DeepEqual(c.AllowedMessageTypes, []string{"quote.request"}) {
		t.Fatalf("types: %v", c.AllowedMessageTypes)
	}
	if !reflect.DeepEqual(c.RequiredWorkgroups, []WorkgroupID{wgID("acme/trade"), wgID("globex/x")}) {
		t.Fatalf("workgroups: %v", c.RequiredWorkgroups)
	}
	conds, err := ParseConditions(c.Conditions)
	if err != nil || conds.Len() != 2 {
		t.Fatalf("conditions %q: %d, %v", c.Conditions, conds.Len(), err)
	}

	// Reasons name the term, what was asked and what is offered.
	rej := terms.Admit(Proposal{MaxMessages: 500, AllowedMessageTypes: []string{"order.cancel"}})
	for _, want := range []string{"max_messages: asked 500, offered at most 100", `allowed_message_types: asked "order.cancel", offered quote.*,order.place`} {
		if !strings.Contains(rej.Reason(), want) {
			t.Errorf("reason %q lacks %q", rej.Reason(), want)
		}
	}
	if (Admission{}).Accepted() || (Admission{}).Reason() != "no decision" {
		t.Fatal("zero Admission must admit nothing")
	}
}

func TestContractJSONRoundTrip(t *testing.T) {
	c := sampleTerms().Admit(Proposal{RequiredWorkgroups: []WorkgroupID{wgID("acme/trade")}}).Contract
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseContract(b)
	if err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if !reflect.DeepEqual(back, c) {
		t.Fatalf("round trip: %+v != %+v", back, c)
	}
}
