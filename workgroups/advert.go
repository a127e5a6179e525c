package workgroups

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/umbra-mesh/umbra/workgroups/authz"
)

// Bounds on advertisements.
const (
	MaxAdvertisementBytes = 64 << 10 // the whole JSON document
	MaxAdWorkgroups       = 32
	MaxSkills             = 64
	maxCardNameLen        = 128
	maxDescriptionLen     = 2048
	maxURLLen             = 2048
	maxVersionLen         = 64
	maxSkillIDLen         = 64
	maxTagLen             = 64
	maxTags               = 16
	maxExamples           = 16
	maxExampleLen         = 512
)

// Advertisement is an agent card plus the contract terms its provider
// offers, visible only within the workgroups it is scoped to.
type Advertisement struct {
	ID         AdvertisementID `json:"id,omitzero"`
	Provider   spiffeid.ID     `json:"provider,omitzero"`
	Workgroups []WorkgroupID   `json:"workgroups"`
	Card       AgentCard       `json:"card"`
	Terms      Terms           `json:"terms"`
}

// AgentCard describes an agent in the manner of an A2A agent card.
type AgentCard struct {
	Name        string  `json:"name"`
	Description string  `json:"description,omitempty"`
	URL         string  `json:"url,omitempty"` // optional: on the overlay the agent is reached by identity
	Version     string  `json:"version"`
	Skills      []Skill `json:"skills,omitempty"`
	// MessageTypes the agent accepts: concrete types and "prefix.*" patterns.
	MessageTypes []string `json:"message_types"`
}

// Skill is one capability listed on an agent card.
type Skill struct {
	ID          string   `json:"id"`
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Tags        []string `json:"tags,omitempty"`
	Examples    []string `json:"examples,omitempty"`
}

// ParseAdvertisement decodes an advertisement (strict JSON) and validates
// its content. ID and Provider may be absent, as in a submission: the
// controller assigns the ID and sets Provider to the verified caller, then
// calls [Advertisement.Validate]. When present they must be valid.
func ParseAdvertisement(data []byte) (Advertisement, error) {
	var ad Advertisement
	if err := decodeStrict("advertisement", data, MaxAdvertisementBytes, &ad); err != nil {
		return Advertisement{}, err
	}
	if !ad.Provider.IsZero() {
		if _, err := ParseIdentity(ad.Provider); err != nil {
			return Advertisement{}, fmt.Errorf("advertisement provider: %w", err)
		}
	}
	if err := ad.validateContent(); err != nil {
		return Advertisement{}, err
	}
	return ad, nil
}

// Validate checks a complete advertisement: ID and provider set, and the
// content valid.
func (ad Advertisement) Validate() error {
	if ad.ID.IsZero() {
		return fmt.Errorf("%w: advertisement: no id", ErrInvalid)
	}
	if _, err := ParseIdentity(ad.Provider); err != nil {
		return fmt.Errorf("advertisement %s provider: %w", ad.ID, err)
	}
	return ad.validateContent()
}

func (ad Advertisement) validateContent() error {
	if len(ad.Workgroups) == 0 || len(ad.Workgroups) > MaxAdWorkgroups {
		return fmt.Errorf("%w: advertisement: want 1-%d workgroups", ErrInvalid, MaxAdWorkgroups)
	}
	for i, wg := range ad.Workgroups {
		if err := wg.Validate(); err != nil {
			return fmt.Errorf("advertisement workgroups: %w", err)
		}
		if slices.Contains(ad.Workgroups[:i], wg) {
			return fmt.Errorf("%w: advertisement: workgroup %s listed twice", ErrInvalid, wg)
		}
	}
	if err := ad.Card.Validate(); err != nil {
		return err
	}
	if err := ad.Terms.Validate(); err != nil {
		return fmt.Errorf("advertisement: %w", err)
	}
	for _, t := range ad.Terms.AllowedMessageTypes {
		if !patternCovered(ad.Card.MessageTypes, t) {
			return fmt.Errorf("%w: advertisement: terms allow %q, which the card does not accept", ErrInvalid, t)
		}
	}
	return nil
}

// InScope reports whether the advertisement is scoped to wg.
func (ad Advertisement) InScope(wg WorkgroupID) bool { return slices.Contains(ad.Workgroups, wg) }

// Validate checks the card's fields and their sizes.
func (c AgentCard) Validate() error {
	if err := checkText("card name", c.Name, maxCardNameLen, true, false); err != nil {
		return err
	}
	if err := checkText("card description", c.Description, maxDescriptionLen, false, true); err != nil {
		return err
	}
	if err := checkText("card version", c.Version, maxVersionLen, true, false); err != nil {
		return err
	}
	if c.URL != "" {
		if err := checkURL(c.URL); err != nil {
			return err
		}
	}
	if len(c.MessageTypes) == 0 || len(c.MessageTypes) > MaxAllowedTypes {
		return fmt.Errorf("%w: card: want 1-%d message_types", ErrInvalid, MaxAllowedTypes)
	}
	for i, t := range c.MessageTypes {
		if err := ValidateTypePattern(t); err != nil {
			return fmt.Errorf("card message_types: %w", err)
		}
		if slices.Contains(c.MessageTypes[:i], t) {
			return fmt.Errorf("%w: card: message type %q listed twice", ErrInvalid, t)
		}
	}
	if len(c.Skills) > MaxSkills {
		return fmt.Errorf("%w: card: more than %d skills", ErrInvalid, MaxSkills)
	}
	for i, s := range c.Skills {
		if err := s.Validate(); err != nil {
			return err
		}
		if slices.ContainsFunc(c.Skills[:i], func(o Skill) bool { return o.ID == s.ID }) {
			return fmt.Errorf("%w: card: skill id %q listed twice", ErrInvalid, s.ID)
		}
	}
	return nil
}

// Validate checks the skill's fields and their sizes.
func (s Skill) Validate() error {
	if s.ID == "" || len(s.ID) > maxSkillIDLen || !authz.ValidPolicyID(s.ID) {
		return fmt.Errorf("%w: skill id %q: want 1-%d of [A-Za-z0-9._-]", ErrInvalid, clip(s.ID), maxSkillIDLen)
	}
	if err := checkText("skill "+s.ID+" name", s.Name, maxCardNameLen, true, false); err != nil {
		return err
	}
	if err := checkText("skill "+s.ID+" description", s.Description, maxDescriptionLen, false, true); err != nil {
		return err
	}
	if len(s.Tags) > maxTags || len(s.Examples) > maxExamples {
		return fmt.Errorf("%w: skill %s: at most %d tags and %d examples", ErrInvalid, s.ID, maxTags, maxExamples)
	}
	for _, t := range s.Tags {
		if err := checkText("skill "+s.ID+" tag", t, maxTagLen, true, false); err != nil {
			return err
		}
	}
	for _, e := range s.Examples {
		if err := checkText("skill "+s.ID+" example", e, maxExampleLen, true, true); err != nil {
			return err
		}
	}
	return nil
}

// checkURL accepts an absolute URL without user information (credentials do
// not belong on a card others read).
func checkURL(s string) error {
	if len(s) > maxURLLen || !printableASCII(s) || strings.ContainsRune(s, ' ') {
		return fmt.Errorf("%w: card url: want at most %d printable ASCII bytes without spaces", ErrInvalid, maxURLLen)
	}
	u, err := url.Parse(s)
	if err != nil || !u.IsAbs() || u.Host == "" {
		return fmt.Errorf("%w: card url %q: want an absolute URL with a host", ErrInvalid, clip(s))
	}
	if u.User != nil {
		return fmt.Errorf("%w: card url: must not carry user information", ErrInvalid)
	}
	return nil
}
