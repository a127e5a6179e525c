package workgroups

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// ident returns spiffe://<org>.example/<org>/<kind>/<name>.
func ident(org, kind, name string) spiffeid.ID {
	return spiffeid.RequireFromString("spiffe://" + org + ".example/" + org + "/" + kind + "/" + name)
}

var (
	acmeAdmin  = ident("acme", "user", "alice")
	acmeAgent  = ident("acme", "agent", "buyer")
	acmeOther  = ident("acme", "agent", "other")
	globexAdm  = ident("globex", "user", "gina")
	globexProv = ident("globex", "agent", "quoter")
	initechAdm = ident("initech", "user", "ivan")
	controller = ident("umbra", "controller", "main")
)

// seeded returns a deterministic random source for IDs.
func seeded(seed uint64) *rand.ChaCha8 {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

func mustSessionID(t testing.TB, seed uint64) SessionID {
	t.Helper()
	id, err := NewSessionID(seeded(seed))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func mustAdID(t testing.TB, seed uint64) AdvertisementID {
	t.Helper()
	id, err := NewAdvertisementID(seeded(seed))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func mustEnvID(t testing.TB, seed uint64) EnvelopeID {
	t.Helper()
	id, err := NewEnvelopeID(seeded(seed))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func wgID(s string) WorkgroupID {
	id, err := ParseWorkgroupID(s)
	if err != nil {
		panic(err)
	}
	return id
}

func sampleTerms() Terms {
	return Terms{
		MaxDuration:         Duration(time.Hour),
		MaxMessages:         100,
		AllowedMessageTypes: []string{"quote.*", "order.place"},
		MaxEnvelopeBytes:    64 << 10,
	}
}

func sampleAd(t testing.TB) Advertisement {
	t.Helper()
	return Advertisement{
		ID:         mustAdID(t, 7),
		Provider:   globexProv,
		Workgroups: []WorkgroupID{wgID("acme/trade")},
		Card: AgentCard{
			Name:         "Globex Quoter",
			Description:  "Quotes prices.\nFast.",
			URL:          "https://quoter.globex.example/a2a",
			Version:      "1.2.0",
			Skills:       []Skill{{ID: "quote", Name: "Quote", Tags: []string{"pricing"}, Examples: []string{"quote 10 widgets"}}},
			MessageTypes: []string{"quote.*", "order.*"},
		},
		Terms: sampleTerms(),
	}
}

// acceptedSession returns a session between acmeAgent (consumer) and
// globexProv (provider) in acme/trade, accepted at t0 under sampleTerms.
func acceptedSession(t testing.TB) Session {
	t.Helper()
	s, adm, err := Propose(mustSessionID(t, 1), sampleAd(t), acmeAgent, wgID("acme/trade"), Proposal{}, controller, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !adm.Accepted() || s.State != StateAccepted {
		t.Fatalf("setup: %v %s", adm.Verdict, s.State)
	}
	return s
}

func sampleHeader(t testing.TB, s Session, payload []byte) Header {
	t.Helper()
	return Header{
		ID:            mustEnvID(t, 3),
		Session:       s.ID,
		From:          s.Consumer,
		To:            s.Provider,
		Type:          "quote.request",
		Time:          t0.Add(time.Minute),
		ContentType:   "application/json",
		CorrelationID: "c-1",
	}.WithPayload(payload)
}

func wantErr(t testing.TB, err, target error) {
	t.Helper()
	if target == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if !errors.Is(err, target) {
		t.Fatalf("error = %v, want %v", err, target)
	}
}
