package llmgw

// AuditWorkerRunning reports whether Run's audit worker takes records (for tests).
func AuditWorkerRunning(g *Gateway) bool {
	g.auditMu.RLock()
	defer g.auditMu.RUnlock()
	return g.auditOn
}

// AuditQueued is how many records wait for Run's audit worker (for tests).
func AuditQueued(g *Gateway) int { return len(g.audits) }

// AuditHeld is how many records are held until the controller can be reached (for tests).
func AuditHeld(g *Gateway) int { return g.held.Len() }

// HeldRetry is how often Run's audit worker tries the held records again (for tests).
const HeldRetry = heldRetry
