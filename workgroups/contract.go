package workgroups

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// Intent is the purpose a caller declares ([authz.Intent]): on a proposal,
// which the session then keeps, and on each envelope.
type Intent = authz.Intent

// Bounds on contracts, terms and proposals.
const (
	MaxContractDuration  = 366 * 24 * time.Hour
	MaxEnvelopePayload   = 16 << 20 // ceiling for max_envelope_bytes and for frame payloads
	MaxAllowedTypes      = 64
	MaxRequiredGroups    = 32
	MaxConditionsBytes   = 16 << 10 // Cedar text in terms or in a proposal
	MaxIntentCategories  = 32
	maxContractJSONBytes = 64 << 10
)

// Duration is a time.Duration written in JSON as a Go duration string
// ("90s", "1h30m"), never as a bare number.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	if len(b) > 32 {
		return fmt.Errorf("%w: duration longer than 32 bytes", ErrInvalid)
	}
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%w: duration %q", ErrInvalid, clip(string(b)))
	}
	*d = Duration(v)
	return nil
}

// String formats like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// Contract is the frozen agreement a session runs under. The relay enforces
// it on every envelope (see [CheckSend]).
type Contract struct {
	// MaxDuration bounds the session from its acceptance.
	MaxDuration Duration `json:"max_duration"`
	// MaxMessages bounds the envelopes of the session, both directions together.
	MaxMessages uint64 `json:"max_messages"`
	// AllowedMessageTypes lists concrete types and "prefix.*" patterns.
	AllowedMessageTypes []string `json:"allowed_message_types"`
	// MaxEnvelopeBytes bounds each envelope's payload.
	MaxEnvelopeBytes int64 `json:"max_envelope_bytes"`
	// RequiredWorkgroups must each still contain both parties; losing one
	// closes the session (reason membership_removed).
	RequiredWorkgroups []WorkgroupID `json:"required_workgroups,omitempty"`
	// Conditions is Cedar text of forbid policies evaluated on every request
	// about the session (see [ParseConditions]).
	Conditions string `json:"conditions,omitempty"`
	// RequireIntent: every envelope must declare an intent.
	RequireIntent bool `json:"require_intent,omitempty"`
	// IntentCategories, when set, lists the only categories a declared
	// intent may name (one without a category is refused too).
	IntentCategories []string `json:"intent_categories,omitempty"`
}

// Terms is what a provider offers in an advertisement: the maxima it accepts,
// the message types it takes, and what happens to proposals that ask for more.
type Terms struct {
	MaxDuration         Duration      `json:"max_duration"`
	MaxMessages         uint64        `json:"max_messages"`
	AllowedMessageTypes []string      `json:"allowed_message_types"`
	MaxEnvelopeBytes    int64         `json:"max_envelope_bytes"`
	RequiredWorkgroups  []WorkgroupID `json:"required_workgroups,omitempty"`
	Conditions          string        `json:"conditions,omitempty"`
	// HoldForProvider: a proposal outside the terms is held for the provider
	// to decide instead of being rejected.
	HoldForProvider bool `json:"hold_for_provider,omitempty"`
	// RequireIntent: the proposal and every envelope of the session must
	// declare an intent (see [Intent]).
	RequireIntent bool `json:"require_intent,omitempty"`
	// IntentCategories, when set, lists the only categories a declared
	// intent may name, on the proposal and on every envelope.
	IntentCategories []string `json:"intent_categories,omitempty"`
}

// Proposal is what a consumer asks for. A field left zero takes the offered
// value. Required workgroups and conditions are added to the provider's:
// both can only narrow the session, so they never put a proposal outside the
// terms.
type Proposal struct {
	MaxDuration         Duration      `json:"max_duration,omitempty"`
	MaxMessages         uint64        `json:"max_messages,omitempty"`
	AllowedMessageTypes []string      `json:"allowed_message_types,omitempty"`
	MaxEnvelopeBytes    int64         `json:"max_envelope_bytes,omitempty"`
	RequiredWorkgroups  []WorkgroupID `json:"required_workgroups,omitempty"`
	Conditions          string        `json:"conditions,omitempty"`
	// Intent is the purpose the consumer declares for the session. The
	// session keeps it, and the SDK stamps it on the envelopes it sends.
	Intent *Intent `json:"intent,omitempty"`
}

// ParseContract decodes and validates a contract (strict JSON).
func ParseContract(data []byte) (Contract, error) {
	var c Contract
	if err := decodeStrict("contract", data, maxContractJSONBytes, &c); err != nil {
		return Contract{}, err
	}
	if err := c.Validate(); err != nil {
		return Contract{}, err
	}
	return c, nil
}

// ParseTerms decodes and validates terms (strict JSON).
func ParseTerms(data []byte) (Terms, error) {
	var t Terms
	if err := decodeStrict("terms", data, maxContractJSONBytes, &t); err != nil {
		return Terms{}, err
	}
	if err := t.Validate(); err != nil {
		return Terms{}, err
	}
	return t, nil
}

// ParseProposal decodes and validates a proposal (strict JSON).
func ParseProposal(data []byte) (Proposal, error) {
	var p Proposal
	if err := decodeStrict("proposal", data, maxContractJSONBytes, &p); err != nil {
		return Proposal{}, err
	}
	if err := p.Validate(); err != nil {
		return Proposal{}, err
	}
	return p, nil
}

// limits holds the fields Contract, Terms and Proposal share, so one set of
// checks serves all three.
type limits struct {
	what        string
	duration    Duration
	messages    uint64
	types       []string
	bytes       int64
	groups      []WorkgroupID
	conditions  string
	condMax     int
	allRequired bool // false for proposals, whose zero fields mean "as offered"
}

func (l limits) validate() error {
	if l.duration < 0 || time.Duration(l.duration) > MaxContractDuration || l.allRequired && l.duration == 0 {
		return fmt.Errorf("%w: %s: max_duration %s: want more than 0 and at most %s", ErrInvalid, l.what, l.duration, MaxContractDuration)
	}
	if l.allRequired && l.messages == 0 {
		return fmt.Errorf("%w: %s: max_messages must be more than 0", ErrInvalid, l.what)
	}
	if l.bytes < 0 || l.bytes > MaxEnvelopePayload || l.allRequired && l.bytes == 0 {
		return fmt.Errorf("%w: %s: max_envelope_bytes %d: want more than 0 and at most %d", ErrInvalid, l.what, l.bytes, MaxEnvelopePayload)
	}
	if l.allRequired && len(l.types) == 0 {
		return fmt.Errorf("%w: %s: allowed_message_types is empty", ErrInvalid, l.what)
	}
	if len(l.types) > MaxAllowedTypes {
		return fmt.Errorf("%w: %s: more than %d allowed_message_types", ErrInvalid, l.what, MaxAllowedTypes)
	}
	for i, t := range l.types {
		if err := ValidateTypePattern(t); err != nil {
			return fmt.Errorf("%s: allowed_message_types: %w", l.what, err)
		}
		if slices.Contains(l.types[:i], t) {
			return fmt.Errorf("%w: %s: allowed_message_types lists %q twice", ErrInvalid, l.what, t)
		}
	}
	if len(l.groups) > MaxRequiredGroups {
		return fmt.Errorf("%w: %s: more than %d required_workgroups", ErrInvalid, l.what, MaxRequiredGroups)
	}
	for i, g := range l.groups {
		if err := g.Validate(); err != nil {
			return fmt.Errorf("%s: required_workgroups: %w", l.what, err)
		}
		if slices.Contains(l.groups[:i], g) {
			return fmt.Errorf("%w: %s: required_workgroups lists %s twice", ErrInvalid, l.what, g)
		}
	}
	if len(l.conditions) > l.condMax {
		return fmt.Errorf("%w: %s: conditions longer than %d bytes", ErrInvalid, l.what, l.condMax)
	}
	if _, err := ParseConditions(l.conditions); err != nil {
		return fmt.Errorf("%s: %w", l.what, err)
	}
	return nil
}

// Validate checks every field is set and within bounds, type patterns are
// valid and unique, and conditions parse.
func (c Contract) Validate() error {
	if err := (limits{"contract", c.MaxDuration, c.MaxMessages, c.AllowedMessageTypes, c.MaxEnvelopeBytes,
		c.RequiredWorkgroups, c.Conditions, 2 * MaxConditionsBytes, true}).validate(); err != nil {
		return err
	}
	return validateIntentCategories("contract", c.IntentCategories)
}

// Validate checks every field is set and within bounds, type patterns are
// valid and unique, and conditions parse.
func (t Terms) Validate() error {
	if err := (limits{"terms", t.MaxDuration, t.MaxMessages, t.AllowedMessageTypes, t.MaxEnvelopeBytes,
		t.RequiredWorkgroups, t.Conditions, MaxConditionsBytes, true}).validate(); err != nil {
		return err
	}
	return validateIntentCategories("terms", t.IntentCategories)
}

// Validate checks the fields that are set.
func (p Proposal) Validate() error {
	if err := (limits{"proposal", p.MaxDuration, p.MaxMessages, p.AllowedMessageTypes, p.MaxEnvelopeBytes,
		p.RequiredWorkgroups, p.Conditions, MaxConditionsBytes, false}).validate(); err != nil {
		return err
	}
	if p.Intent != nil {
		if err := p.Intent.Validate(); err != nil {
			return fmt.Errorf("%w: proposal: intent: %w", ErrInvalid, err)
		}
	}
	return nil
}

func validateIntentCategories(what string, cats []string) error {
	if len(cats) > MaxIntentCategories {
		return fmt.Errorf("%w: %s: more than %d intent_categories", ErrInvalid, what, MaxIntentCategories)
	}
	for i, c := range cats {
		if err := authz.ValidateIntentCategory(c); err != nil {
			return fmt.Errorf("%w: %s: intent_categories: %w", ErrInvalid, what, err)
		}
		if slices.Contains(cats[:i], c) {
			return fmt.Errorf("%w: %s: intent_categories lists %q twice", ErrInvalid, what, c)
		}
	}
	return nil
}

// CheckIntent reports whether declared intent i (nil: none) satisfies the
// contract's intent terms: present when RequireIntent, and naming one of
// IntentCategories when they are set. It returns nil or a [*Violation].
func (c Contract) CheckIntent(i *Intent) error {
	return checkIntent(c.RequireIntent, c.IntentCategories, i)
}

func checkIntent(required bool, cats []string, i *Intent) error {
	if i == nil {
		if !required {
			return nil
		}
		if len(cats) == 0 {
			return violation(ViolationIntentRequired, "the contract requires a declared intent; declare a purpose")
		}
		return violation(ViolationIntentRequired, "the contract requires a declared intent; declare a purpose and one of the categories %s", strings.Join(cats, ", "))
	}
	if len(cats) > 0 && !slices.Contains(cats, i.Category) {
		return violation(ViolationIntentCategory, "intent category %q is not one the contract allows; use one of %s", i.Category, strings.Join(cats, ", "))
	}
	return nil
}

// Allows reports whether the contract allows the concrete message type t.
func (c Contract) Allows(t string) bool { return TypeAllowed(c.AllowedMessageTypes, t) }

// Requires reports whether wg is one of the contract's required workgroups.
func (c Contract) Requires(wg WorkgroupID) bool { return slices.Contains(c.RequiredWorkgroups, wg) }

// Verdict is the outcome of [Terms.Admit].
type Verdict string

const (
	VerdictAccept Verdict = "accept" // within the terms: the contract speaks for the provider
	VerdictHold   Verdict = "hold"   // outside the terms, held for the provider to decide
	VerdictReject Verdict = "reject" // outside the terms (or invalid)
)

// Deviation is one way a proposal exceeds the terms.
type Deviation struct {
	Term    string `json:"term"`    // JSON name of the term, or "proposal"/"terms" when invalid
	Asked   string `json:"asked"`   // what the proposal asked for
	Offered string `json:"offered"` // what the terms offer
}

func (d Deviation) String() string {
	return fmt.Sprintf("%s: asked %s, offered %s", d.Term, d.Asked, d.Offered)
}

// Admission is the answer to a proposal. Its zero value admits nothing.
type Admission struct {
	Verdict Verdict `json:"verdict"`
	// Contract is the proposal completed with the offered values: the frozen
	// contract when accepted, what the provider is asked to approve when held,
	// and a record of what was asked when rejected (zero if the proposal was
	// invalid).
	Contract   Contract    `json:"contract,omitzero"`
	Deviations []Deviation `json:"deviations,omitempty"`
}

// Accepted reports whether the proposal was accepted.
func (a Admission) Accepted() bool { return a.Verdict == VerdictAccept }

// Reason summarises the deviations, or says the proposal is within the terms.
func (a Admission) Reason() string {
	if len(a.Deviations) == 0 {
		if a.Verdict == VerdictAccept {
			return "within the advertised terms"
		}
		return "no decision"
	}
	parts := make([]string, len(a.Deviations))
	for i, d := range a.Deviations {
		parts[i] = d.String()
	}
	return strings.Join(parts, "; ")
}

// Admit decides a proposal against the terms. Within the terms it accepts and
// returns the frozen contract: the provider need not be online. Outside, it
// lists every deviation and rejects, or holds when HoldForProvider is set. An
// invalid proposal, invalid terms, or a combination that makes no valid
// contract is always rejected, never held.
func (t Terms) Admit(p Proposal) Admission {
	if err := t.Validate(); err != nil {
		return Admission{Verdict: VerdictReject, Deviations: []Deviation{{Term: "terms", Asked: "-", Offered: err.Error()}}}
	}
	if err := p.Validate(); err != nil {
		return Admission{Verdict: VerdictReject, Deviations: []Deviation{{Term: "proposal", Asked: err.Error(), Offered: "-"}}}
	}
	c := Contract{
		MaxDuration:         cmpOr(p.MaxDuration, t.MaxDuration),
		MaxMessages:         cmpOr(p.MaxMessages, t.MaxMessages),
		AllowedMessageTypes: slices.Clone(t.AllowedMessageTypes),
		MaxEnvelopeBytes:    cmpOr(p.MaxEnvelopeBytes, t.MaxEnvelopeBytes),
		RequiredWorkgroups:  unionWorkgroups(t.RequiredWorkgroups, p.RequiredWorkgroups),
		Conditions:          joinConditions(t.Conditions, p.Conditions),
		RequireIntent:       t.RequireIntent,
		IntentCategories:    slices.Clone(t.IntentCategories),
	}
	if len(p.AllowedMessageTypes) > 0 {
		c.AllowedMessageTypes = slices.Clone(p.AllowedMessageTypes)
	}
	slices.Sort(c.AllowedMessageTypes)

	// The proposal and the terms are each valid, but their union may not
	// be (too many required workgroups, conditions too long together).
	if err := c.Validate(); err != nil {
		return Admission{Verdict: VerdictReject, Deviations: []Deviation{{Term: "contract", Asked: err.Error(), Offered: "-"}}}
	}

	var devs []Deviation
	if c.MaxDuration > t.MaxDuration {
		devs = append(devs, Deviation{"max_duration", c.MaxDuration.String(), "at most " + t.MaxDuration.String()})
	}
	if c.MaxMessages > t.MaxMessages {
		devs = append(devs, Deviation{"max_messages", strconv.FormatUint(c.MaxMessages, 10), "at most " + strconv.FormatUint(t.MaxMessages, 10)})
	}
	if c.MaxEnvelopeBytes > t.MaxEnvelopeBytes {
		devs = append(devs, Deviation{"max_envelope_bytes", strconv.FormatInt(c.MaxEnvelopeBytes, 10), "at most " + strconv.FormatInt(t.MaxEnvelopeBytes, 10)})
	}
	offered := strings.Join(t.AllowedMessageTypes, ",")
	for _, req := range p.AllowedMessageTypes {
		if !patternCovered(t.AllowedMessageTypes, req) {
			devs = append(devs, Deviation{"allowed_message_types", strconv.Quote(req), offered})
		}
	}
	if err := c.CheckIntent(p.Intent); err != nil {
		d := Deviation{"require_intent", "no intent", "a declared intent"}
		if p.Intent != nil {
			d = Deviation{"intent_categories", strconv.Quote(p.Intent.Category), strings.Join(t.IntentCategories, ",")}
		}
		devs = append(devs, d)
	}
	if len(devs) == 0 {
		return Admission{Verdict: VerdictAccept, Contract: c}
	}
	if t.HoldForProvider {
		return Admission{Verdict: VerdictHold, Contract: c, Deviations: devs}
	}
	return Admission{Verdict: VerdictReject, Contract: c, Deviations: devs}
}

func cmpOr[T comparable](asked, offered T) T {
	var zero T
	if asked == zero {
		return offered
	}
	return asked
}

func unionWorkgroups(a, b []WorkgroupID) []WorkgroupID {
	if len(a)+len(b) == 0 {
		return nil
	}
	out := slices.Concat(a, b)
	slices.SortFunc(out, compareWorkgroupIDs)
	return slices.Compact(out)
}

func joinConditions(a, b string) string {
	a, b = strings.TrimSpace(a), strings.TrimSpace(b)
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "\n\n" + b
}
