// Package pki creates and loads Umbra's certificate authorities and issues the
// certificates Umbra runs on: X.509-SVIDs from workload CSRs, TLS server
// certificates, and the proof-of-possession certificate OpenZiti asks for.
package pki
