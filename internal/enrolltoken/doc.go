// Package enrolltoken issues and checks enrollment tokens: short-lived, signed
// statements that one SPIFFE ID may enroll at a given endpoint, carrying the pin
// of the CA behind that endpoint so a new workload can reach it safely.
//
// A token is "uet1." + base64url(JSON claims) + "." + base64url(Ed25519
// signature over everything before the second dot), without padding.
package enrolltoken
