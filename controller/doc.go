// Package controller is Umbra's control plane as one embeddable value.
//
// A Server runs, in-process: the OpenZiti controller of the dark overlay (bbolt state in the data directory),
// NATS with JetStream (governance state and records, no TCP listener unless asked), and the identity authority
// that issues short-lived SPIFFE X.509-SVIDs from one-time enrollment tokens. Its API is served on the overlay as
// a dark service behind mutual TLS with SVIDs; only enrollment listens on a port of its own.
//
//	srv, err := controller.New(controller.Config{DataDir: "umbra-data"})
//	go srv.Run(ctx)
//	<-srv.Ready()
package controller
