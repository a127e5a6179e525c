package workgroups

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestAdvertisementJSONRoundTrip(t *testing.T) {
	ad := sampleAd(t)
	if err := ad.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(ad)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseAdvertisement(b)
	if err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if !reflect.DeepEqual(back, ad) {
		t.Fatalf("round trip:\n%+v\n%+v", back, ad)
	}
	if !ad.InScope(wgID("acme/trade")) || ad.InScope(wgID("acme/other")) {
		t.Fatal("InScope")
	}
}

func TestParseAdvertisementSubmission(t *testing.T) {
	// A submission carries neither ID nor provider; Validate then wants both.
	in := `{"workgroups":["acme/trade"],"card":{"name":"Q","version":"1","message_types":["quote.*"]},` +
		`"terms":{"max_duration":"1h","max_messages":1,"allowed_message_types":["quote.request"],"max_envelope_bytes":1}}`
	ad, err := ParseAdvertisement([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	wantErr(t, ad.Validate(), ErrInvalid)
	ad.ID = mustAdID(t, 1)
	wantErr(t, ad.Validate(), ErrInvalid)
	ad.Provider = globexProv
	wantErr(t, ad.Validate(), nil)
}

func TestAdvertisementValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(ad *Advertisement)
		want   error
	}{
		{"valid", func(ad *Advertisement) {}, nil},
		{"no url", func(ad *Advertisement) { ad.Card.URL = "" }, nil},
		{"no workgroups", func(ad *Advertisement) { ad.Workgroups = nil }, ErrInvalid},
		{"repeated workgroup", func(ad *Advertisement) { ad.Workgroups = append(ad.Workgroups, ad.Workgroups[0]) }, ErrInvalid},
		{"too many workgroups", func(ad *Advertisement) {
			for i := range MaxAdWorkgroups {
				ad.Workgroups = append(ad.Workgroups, WorkgroupID{"acme", "w" + strings.Repeat("x", i+1)})
			}
		}, ErrInvalid},
		{"no name", func(ad *Advertisement) { ad.Card.Name = "" }, ErrInvalid},
		{"name with newline", func(ad *Advertisement) { ad.Card.Name = "a\nb" }, ErrInvalid},
		{"long name", func(ad *Advertisement) { ad.Card.Name = strings.Repeat("n", maxCardNameLen+1) }, ErrInvalid},
		{"long description", func(ad *Advertisement) { ad.Card.Description = strings.Repeat("d", maxDescriptionLen+1) }, ErrInvalid},
		{"description with escape", func(ad *Advertisement) { ad.Card.Description = "a\x1b[31m" }, ErrInvalid},
		{"no version", func(ad *Advertisement) { ad.Card.Version = "" }, ErrInvalid},
		{"relative url", func(ad *Advertisement) { ad.Card.URL = "/a2a" }, ErrInvalid},
		{"url with credentials", func(ad *Advertisement) { ad.Card.URL = "https://u:p@x.example/" }, ErrInvalid},
		{"url with space", func(ad *Advertisement) { ad.Card.URL = "https://x.example/a b" }, ErrInvalid},
		{"no message types", func(ad *Advertisement) { ad.Card.MessageTypes = nil }, ErrInvalid},
		{"bad message type", func(ad *Advertisement) { ad.Card.MessageTypes = []string{"quote.*", "x y"} }, ErrInvalid},
		{"repeated message type", func(ad *Advertisement) { ad.Card.MessageTypes = []string{"quote.*", "order.*", "quote.*"} }, ErrInvalid},
		{"terms beyond card", func(ad *Advertisement) { ad.Card.MessageTypes = []string{"quote.*"} }, ErrInvalid},
		{"bad skill id", func(ad *Advertisement) { ad.Card.Skills[0].ID = "a b" }, ErrInvalid},
		{"repeated skill", func(ad *Advertisement) { ad.Card.Skills = append(ad.Card.Skills, ad.Card.Skills[0]) }, ErrInvalid},
		{"skill without name", func(ad *Advertisement) { ad.Card.Skills[0].Name = "" }, ErrInvalid},
		{"empty tag", func(ad *Advertisement) { ad.Card.Skills[0].Tags = []string{""} }, ErrInvalid},
		{"too many tags", func(ad *Advertisement) { ad.Card.Skills[0].Tags = make([]string, maxTags+1) }, ErrInvalid},
		{"long example", func(ad *Advertisement) { ad.Card.Skills[0].Examples = []string{strings.Repeat("e", maxExampleLen+1)} }, ErrInvalid},
		{"too many skills", func(ad *Advertisement) {
			ad.Card.Skills = nil
			for i := range MaxSkills + 1 {
				ad.Card.Skills = append(ad.Card.Skills, Skill{ID: "s" + strings.Repeat("x", i%60) + string(rune('a'+i/60)), Name: "S"})
			}
		}, ErrInvalid},
		{"invalid terms", func(ad *Advertisement) { ad.Terms.MaxMessages = 0 }, ErrInvalid},
		{"bad provider", func(ad *Advertisement) { ad.Provider = spiffeid.RequireFromString("spiffe://globex.example/quoter") }, ErrInvalid},
		{"no id", func(ad *Advertisement) { ad.ID = AdvertisementID{} }, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ad := sampleAd(t)
			tc.mutate(&ad)
			wantErr(t, ad.Validate(), tc.want)
		})
	}
}

func TestParseAdvertisementStrict(t *testing.T) {
	ad := sampleAd(t)
	b, _ := json.Marshal(ad)
	good := string(b)
	for _, tc := range []struct {
		name, in string
		want     error
	}{
		{"unknown top-level field", strings.Replace(good, `"card":`, `"extra":1,"card":`, 1), ErrMalformed},
		{"unknown card field", strings.Replace(good, `"name":"Globex Quoter"`, `"name":"Globex Quoter","icon":"x"`, 1), ErrMalformed},
		{"unknown skill field", strings.Replace(good, `"id":"quote"`, `"id":"quote","weight":2`, 1), ErrMalformed},
		{"duplicate card name", strings.Replace(good, `"name":"Globex Quoter"`, `"name":"Globex Quoter","name":"Other"`, 1), ErrMalformed},
		{"bad id", strings.Replace(good, ad.ID.String(), "ad_nope", 1), ErrMalformed},
		{"bad provider", strings.Replace(good, globexProv.String(), "spiffe://globex.example/quoter", 1), ErrInvalid},
		{"bad workgroup", strings.Replace(good, `"acme/trade"`, `"acme"`, 1), ErrMalformed},
		{"too large", strings.Replace(good, `"Quotes prices.`, `"`+strings.Repeat("x", MaxAdvertisementBytes), 1), ErrTooLarge},
		{"not an object", `[` + good + `]`, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAdvertisement([]byte(tc.in))
			wantErr(t, err, tc.want)
		})
	}
}
