package audit

import "time"

// BudgetError refuses a record because its actor has already caused its day's worth of audit records (the
// controller's per-identity audit budget). An Auditor returns it so that a gateway refuses the call the record
// would have begun and tells the caller why, rather than reporting the trail unavailable.
type BudgetError struct {
	Message    string        // the controller's one line: what was spent, the budget, when it resets
	RetryAfter time.Duration // until the budget resets
}

func (e *BudgetError) Error() string { return "audit budget exhausted: " + e.Message }
