package llmgw

// AuditWorkerRunning reports whether Run's audit worker takes records (for tests).
func AuditWorkerRunning(g *Gateway) bool {
	g.auditMu.RLock()
	defer g.auditMu.RUnlock()
	return g.auditOn
}

// AuditQueued is how many records wait for Run's audit worker (for tests).
func AuditQueued(g *Gateway) int { return len(g.audits) }
