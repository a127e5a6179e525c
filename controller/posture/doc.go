// Package posture computes, from a snapshot of the controller's state, what exists on the platform (the
// inventory), what in it is riskier than policy allows (findings, each with its evidence and its fix) and what
// changed since a recorded baseline (drift). It does no I/O: the controller takes the snapshot, the CLI and
// tests call the same functions, and a test builds a scenario as a State value.
package posture
