package anomaly

import (
	"fmt"
	"time"
)

// The defaults of Config.
const (
	DefaultWindow            = time.Minute
	DefaultLearn             = 10 * time.Minute
	DefaultLearnRecords      = 100
	DefaultRateFactor        = 10
	DefaultMinRate           = 60
	DefaultMinRefusals       = 10
	DefaultAutoSuspendWindow = time.Minute
	DefaultMaxIdentities     = 100_000
	// maxItems bounds each set of an identity's peers, types, tools and models: past it, what is new is neither
	// learned nor alerted on.
	maxItems = 256
)

// Config sets the thresholds. The zero value of each field selects its default; a negative number turns a rule
// off where the field says so.
type Config struct {
	// Window is the period rates and refusals are counted over. Default 1 minute.
	Window time.Duration
	// Learn is how long after its first record an identity's behaviour is only learned: no rate or novelty alert
	// before (nor before LearnRecords). Default 10 minutes.
	Learn time.Duration
	// LearnRecords is how many of an identity's records are learned, at the least, before rate and novelty
	// alerts: a baseline of a handful of records says little. Default 100.
	LearnRecords int
	// RateFactor: an identity whose records in one window reach RateFactor times its usual number per window (and
	// at least MinRate) raises a "rate" alert; refusals likewise against its usual refusals (and at least
	// MinRefusals) a "refusals" alert. Default 10.
	RateFactor float64
	// MinRate is the fewest records in one window that raise a rate alert, however low the usual rate. Default
	// 60; negative turns rate alerts off.
	MinRate int
	// MinRefusals is the fewest refusals in one window that raise a refusals alert. Default 10; negative turns
	// refusal alerts off.
	MinRefusals int
	// IgnoreNew turns off the alerts on a new peer, message type, tool or model. Default false.
	IgnoreNew bool
	// AutoSuspendRefusals, if positive, is the policy of automatic suspension: an identity refused this many
	// times within AutoSuspendWindow is suspended. Default 0: never.
	AutoSuspendRefusals int
	// AutoSuspendWindow is the period AutoSuspendRefusals are counted over (a sliding window). Default 1 minute.
	AutoSuspendWindow time.Duration
	// MaxIdentities bounds the identities whose baselines are kept; past it, the one not seen for longest is
	// forgotten (it learns again when it comes back). Default 100000.
	MaxIdentities int
}

// WithDefaults returns c with every zero field set to its default, or an error naming a value out of range.
func (c Config) WithDefaults() (Config, error) {
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.Learn == 0 {
		c.Learn = DefaultLearn
	}
	if c.LearnRecords == 0 {
		c.LearnRecords = DefaultLearnRecords
	}
	if c.RateFactor == 0 {
		c.RateFactor = DefaultRateFactor
	}
	if c.MinRate == 0 {
		c.MinRate = DefaultMinRate
	}
	if c.MinRefusals == 0 {
		c.MinRefusals = DefaultMinRefusals
	}
	if c.AutoSuspendWindow == 0 {
		c.AutoSuspendWindow = DefaultAutoSuspendWindow
	}
	if c.MaxIdentities == 0 {
		c.MaxIdentities = DefaultMaxIdentities
	}
	switch {
	case c.Window < time.Second:
		return c, fmt.Errorf("anomaly: window %s is shorter than a second; give a duration such as 1m", c.Window)
	case c.Learn < 0:
		return c, fmt.Errorf("anomaly: learning period %s is negative; give a duration such as 10m", c.Learn)
	case c.LearnRecords < 0:
		return c, fmt.Errorf("anomaly: %d records to learn from is negative; give a number such as 100", c.LearnRecords)
	case c.RateFactor < 1:
		return c, fmt.Errorf("anomaly: rate factor %g is below 1; give a factor such as 10", c.RateFactor)
	case c.AutoSuspendRefusals < 0:
		return c, fmt.Errorf("anomaly: automatic suspension after %d refusals: give a positive number, or 0 for never", c.AutoSuspendRefusals)
	case c.AutoSuspendWindow < 0:
		return c, fmt.Errorf("anomaly: automatic suspension window %s is negative; give a duration such as 1m", c.AutoSuspendWindow)
	case c.MaxIdentities < 0:
		return c, fmt.Errorf("anomaly: MaxIdentities %d is negative", c.MaxIdentities)
	}
	return c, nil
}
